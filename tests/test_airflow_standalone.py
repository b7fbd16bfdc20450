"""`altlake airflow` for real: airflow standalone boots, cc_ingest is triggered through the REST API
the web UI uses (JWT from the simple auth manager), and the run succeeds over the real WAT sample.

Slow by nature (four Airflow components and two Spark JVMs on a shared 2-core machine), so every
wait is generous but bounded, and everything started is shut down at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from altlake.paths import LakePaths

REPO = Path(__file__).resolve().parent.parent
CRAWL = "CC-MAIN-2015-18"

pytestmark = pytest.mark.timeout(2400)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Api:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.token: str | None = None

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, {"detail": error.read().decode(errors="replace")}
        except (OSError, ValueError) as error:
            return 0, {"detail": str(error)}


def _wait(what: str, check, timeout_s: float, process: subprocess.Popen, log: Path, every_s: float = 3.0):
    """Poll `check` until it returns a truthy value; fail with the log's tail when time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"altlake airflow exited ({process.returncode}) while waiting for {what}:\n{_tail(log)}")
        result = check()
        if result:
            return result
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}:\n{_tail(log)}")


def _tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _stop(process: subprocess.Popen) -> None:
    """SIGINT is standalone's own shutdown; whatever of our process group outlives it is killed."""
    for sig, grace_s in ((signal.SIGINT, 90), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue


def test_standalone_runs_cc_ingest_triggered_through_the_rest_api(tmp_path, sample_wat):
    from deltalake import DeltaTable

    port, home, lake = _free_port(), tmp_path / "airflow_home", tmp_path / "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        ALTLAKE_LAKE_DIR=str(lake),
        ALTLAKE_SPARK_BACKEND="local",
        ALTLAKE_SPARK_MASTER="local[2]",
        ALTLAKE_SPARK_SHUFFLE_PARTITIONS="2",
        # Only the run this test triggers: the @monthly schedule would reach for the internet.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
    )
    log = tmp_path / "standalone.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "altlake_cli.main", "airflow", "--port", str(port), "--home", str(home)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    api = Api(port)
    try:
        _wait("the API server", lambda: api.call("GET", "/api/v2/monitor/health")[0] == 200, 900, process, log)
        passwords = home / "simple_auth_manager_passwords.json.generated"
        password = _wait("the admin password", lambda: passwords.exists() and json.loads(passwords.read_text()).get("admin"), 120, process, log)
        status, body = api.call("POST", "/auth/token", {"username": "admin", "password": password})
        assert status == 201, body
        api.token = body["access_token"]

        _wait("cc_ingest to be parsed", lambda: api.call("GET", "/api/v2/dags/cc_ingest")[0] == 200, 600, process, log)
        status, body = api.call("PATCH", "/api/v2/dags/cc_ingest", {"is_paused": False})
        assert status == 200 and body["is_paused"] is False, body
        conf = {"crawl": CRAWL, "wat_paths": [str(sample_wat)]}
        status, run = api.call("POST", "/api/v2/dags/cc_ingest/dagRuns", {"logical_date": None, "conf": conf})
        assert status == 200, run
        run_path = f"/api/v2/dags/cc_ingest/dagRuns/{run['dag_run_id']}"

        def finished():
            status, body = api.call("GET", run_path)
            return body if status == 200 and body["state"] in ("success", "failed") else None

        final = _wait("the triggered run to finish", finished, 1500, process, log, every_s=10)
        _, tis = api.call("GET", f"{run_path}/taskInstances")
        states = {ti["task_id"]: ti["state"] for ti in tis["task_instances"]}
        assert final["state"] == "success", f"{states}\n{_tail(log)}"
        assert states == {"resolve_inputs": "success", "extract": "success", "validate_candidates": "success"}

        status, xcom = api.call("GET", f"{run_path}/taskInstances/extract/xcomEntries/return_value")
        assert status == 200, xcom
        value = json.loads(xcom["value"]) if isinstance(xcom["value"], str) else xcom["value"]
        totals = value["totals"]
        candidates = DeltaTable(LakePaths(str(lake)).table("candidates")).to_pyarrow_table()
        assert candidates.num_rows > 0
        assert candidates.num_rows == totals["new_candidates"]
        assert set(candidates.column("last_seen_crawl").to_pylist()) == {CRAWL}
        assert list((lake / "gx").glob("*/index.html")), "the run's GX Data Docs are missing"
    finally:
        _stop(process)
    assert process.poll() is not None, "airflow standalone is still running"
