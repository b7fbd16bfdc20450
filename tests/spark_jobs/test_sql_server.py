"""`altlake sql-server` on a Postgres metastore: JDBC clients and jobs share the catalog at once.

Real servers on 127.0.0.1: Postgres (tests/postgres.py) holds the Hive metastore, the extraction
job writes the lake through production code in its own JVM, the Thrift server (another JVM) serves
it, and beeline (pyspark's HiveServer2 client) runs the README's queries while a second extraction
commits. Embedded Derby would refuse the second JVM. Answers are checked against a direct read of
the Delta tables by path (delta-rs), which does not go through the metastore.
"""

from __future__ import annotations

import csv
import io
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from altlake.config import Settings
from altlake_cli.main import main as altlake_main
from spark_jobs.session import spark_conf
from spark_jobs.sql_server import THRIFT_SERVER_CLASS, jdbc_url, spark_bin, thrift_server_command
from spark_jobs.watgen import generate_wat

PG_URL = "jdbc:postgresql://db.internal:5432/metastore?user=hive&password=secret"
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _altlake(env: dict[str, str], *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "altlake_cli.main", *args], env=env, cwd=REPO, text=True, **popen)


def _extract(env: dict[str, str], crawl: str, wat: Path, log: Path) -> subprocess.Popen:
    return _altlake(env, "extract", "--crawl", crawl, "--wat", str(wat), stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for_port(port: int, server: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the Thrift server exited ({server.returncode}): {log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the Thrift server did not listen on {port} within {timeout}s: {log.read_text()[-3000:]}")


def _beeline(port: int, query: str) -> list[dict[str, str]]:
    """One query over JDBC with pyspark's beeline; rows as dicts keyed by the result's header."""
    done = subprocess.run(
        [str(spark_bin("beeline")), "-u", jdbc_url("127.0.0.1", port), "-n", "tester", "--silent=true", "--outputformat=csv2", "-e", query],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"beeline failed on {query!r}: {done.stdout[-1500:]} {done.stderr[-3000:]}"
    text = re.sub(r"^\d+: jdbc:hive2://\S+> ", "", done.stdout.strip())  # beeline echoes its prompt before the header
    return list(csv.DictReader(io.StringIO(text + "\n")))


def _table(lake: Path, name: str) -> DeltaTable:
    return DeltaTable(str(lake / "tables" / name))


def test_a_postgres_metastore_url_configures_the_hive_client_not_derby(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALTLAKE_METASTORE_URL", PG_URL)
    conf = spark_conf(Settings.from_env(lake_dir=str(tmp_path / "lake")), "t")
    assert conf["spark.hadoop.javax.jdo.option.ConnectionURL"] == PG_URL
    assert conf["spark.hadoop.javax.jdo.option.ConnectionDriverName"] == "org.postgresql.Driver"
    assert conf["spark.hadoop.datanucleus.schema.autoCreateTables"] == "true"
    assert conf["spark.hadoop.datanucleus.schema.autoCreateConstraints"] == "false"
    assert "derby" not in conf.get("spark.driver.extraJavaOptions", "")
    assert any("postgresql-42.7" in p for p in conf["spark.driver.extraClassPath"].split(os.pathsep)), "run scripts/setup.sh: no JDBC driver jar"

    monkeypatch.delenv("ALTLAKE_METASTORE_URL")
    derby = spark_conf(Settings.from_env(lake_dir=str(tmp_path / "lake")), "t")
    assert derby["spark.hadoop.javax.jdo.option.ConnectionURL"].startswith("jdbc:derby:")
    assert "-Dderby.system.home=" in derby["spark.driver.extraJavaOptions"]


def test_thrift_server_command_carries_the_session_conf(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALTLAKE_METASTORE_URL", PG_URL)
    cmd = thrift_server_command(Settings.from_env(lake_dir=str(tmp_path / "lake")), "127.0.0.1", 10123)
    assert Path(cmd[0]).name == "spark-submit" and cmd[cmd.index("--class") + 1] == THRIFT_SERVER_CLASS
    assert f"spark.hadoop.javax.jdo.option.ConnectionURL={PG_URL}" in cmd
    assert "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension" in cmd
    assert cmd[-5:] == ["spark-internal", "--hiveconf", "hive.server2.thrift.bind.host=127.0.0.1", "--hiveconf", "hive.server2.thrift.port=10123"]


def test_sql_server_without_a_lake_is_one_line(tmp_path: Path, capsys) -> None:
    assert altlake_main(["sql-server", "--lake", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("altlake sql-server: no lake at") and err.count("\n") == 1


def test_sql_server_on_a_taken_port_is_one_line(tmp_path: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert altlake_main(["sql-server", "--lake", str(tmp_path), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1:" in err and "Address already in use" in err and err.count("\n") == 1


@pytest.mark.integration
def test_thrift_server_and_jobs_share_a_postgres_metastore(postgres, sample_wat: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    metastore = postgres.create_database(f"metastore_{os.getpid()}_{time.monotonic_ns()}")
    env = dict(
        os.environ, ALTLAKE_METASTORE_URL=postgres.jdbc_url(metastore), ALTLAKE_LAKE_DIR=str(lake),
        ALTLAKE_SPARK_MASTER="local[2]", ALTLAKE_SPARK_SHUFFLE_PARTITIONS="2", ALTLAKE_SPARK_DRIVER_MEMORY="1g",
    )  # fmt: skip

    first = _extract(env, "CC-MAIN-2015-18", sample_wat, tmp_path / "extract-1.log")
    assert first.wait(timeout=900) == 0, (tmp_path / "extract-1.log").read_text()[-3000:]
    # The job's catalog lives in Postgres (Hive's schema, created on first use), not in a Derby folder.
    registered = postgres.sql('SELECT t."TBL_NAME" FROM "TBLS" t JOIN "DBS" d ON t."DB_ID" = d."DB_ID" WHERE d."NAME" = \'altlake\'', db=metastore)
    assert {"candidates", "crawl_files", "pairs", "scores"} <= set(registered.split())
    assert not (lake / "metastore" / "metastore_db").exists()

    port = _free_port()
    server_log = tmp_path / "sql-server.log"
    server = _altlake(env, "sql-server", "--port", str(port), stdout=server_log.open("w"), stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, server, server_log)
        assert f"serving {jdbc_url('127.0.0.1', port)}" in server_log.read_text()

        # The README's queries ("Querying the lake"), answered over JDBC as a direct read answers them.
        statuses = _beeline(port, "SELECT status, count(*) FROM crawl_files GROUP BY 1")
        files = _table(lake, "crawl_files").to_pyarrow_table().to_pylist()
        assert files and {r["status"]: int(r["count(1)"]) for r in statuses} == {"done": len(files)}
        assert all(f["status"] == "done" for f in files)

        history = _beeline(port, "DESCRIBE HISTORY candidates")
        assert sorted(int(r["version"]) for r in history) == sorted(h["version"] for h in _table(lake, "candidates").history())
        assert any(r["operation"] == "MERGE" for r in history)

        top = _beeline(port, "SELECT url, text, similarity FROM pairs ORDER BY similarity DESC LIMIT 10")
        assert top == [] and _table(lake, "pairs").to_pyarrow_table().num_rows == 0  # nothing scored yet: both agree

        before = int(_beeline(port, "SELECT count(*) AS n FROM candidates")[0]["n"])
        assert before == _table(lake, "candidates").to_pyarrow_table().num_rows > 0

        # A second job writes while JDBC clients query: both JVMs hold the Postgres metastore at once.
        second_wat = generate_wat(tmp_path / "second.warc.wat", pages=200, seed=7).path
        second = _extract(env, "CC-MAIN-2015-22", Path(second_wat), tmp_path / "extract-2.log")
        seen_during: list[int] = []
        while second.poll() is None:
            seen_during.append(int(_beeline(port, "SELECT count(*) AS n FROM candidates")[0]["n"]))
        assert second.wait() == 0, (tmp_path / "extract-2.log").read_text()[-3000:]
        assert seen_during, "no JDBC query ran while the second job did"
        assert all(n >= before for n in seen_during)

        after = int(_beeline(port, "SELECT count(*) AS n FROM candidates")[0]["n"])
        assert after == _table(lake, "candidates").to_pyarrow_table().num_rows > before
        crawls = _beeline(port, "SELECT crawl, count(*) AS n FROM crawl_files GROUP BY crawl ORDER BY crawl")
        assert [(r["crawl"], int(r["n"])) for r in crawls] == [("CC-MAIN-2015-18", 1), ("CC-MAIN-2015-22", 1)]
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
