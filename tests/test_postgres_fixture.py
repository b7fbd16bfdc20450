"""The shared Postgres fixture: a real server other tests (metastore, Airflow) can rely on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.postgres import Postgres, find_postgres_bin


def test_postgres_fixture_serves_databases_over_tcp(postgres) -> None:
    name = postgres.create_database("fixture_check")
    assert postgres.create_database("fixture_check") == name  # a second call is a no-op, not an error
    postgres.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)", db=name)
    assert postgres.sql("SELECT sum(x) FROM t", db=name).strip() == "3"
    with socket.create_connection((postgres.host, postgres.port), timeout=5):
        pass  # listening on loopback TCP, where JDBC and SQLAlchemy clients connect
    assert postgres.jdbc_url(name).startswith(f"jdbc:postgresql://127.0.0.1:{postgres.port}/{name}?user=")
    assert postgres.sqlalchemy_url(name) == f"postgresql+psycopg2://altlake:altlake@127.0.0.1:{postgres.port}/{name}"


def test_a_killed_runs_cluster_is_stopped_by_the_next_start() -> None:
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip("Postgres binaries not found")
    code = "import time; from tests.postgres import Postgres, find_postgres_bin; print(Postgres(find_postgres_bin()).start().root, flush=True); time.sleep(600)"
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    root = Path(run.stdout.readline().strip())
    postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
    run.kill()  # as a SIGKILLed pytest: no finalizer stops its server
    run.wait()
    os.kill(postmaster, 0)  # still running, orphaned

    Postgres(bin_dir).start().stop()
    assert not root.exists()
    deadline = time.monotonic() + 10  # pg_ctl returns once the pid file is gone, a moment before the exit
    while _running(postmaster) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(postmaster)


def _running(pid: int) -> bool:
    try:
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]
    except FileNotFoundError:
        return False
