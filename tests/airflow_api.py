"""Driving a running Airflow from a test as a user's script would: its REST API over HTTP, with
bounded waits that fail with the end of the server's log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from altlake_cli.airflow_cmd import PASSWORDS_FILE


def free_port() -> int:
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

    def runs(self, dag_id: str) -> list[dict]:
        status, body = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")
        assert status == 200, body
        return body["dag_runs"]


def tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def wait(what: str, check, timeout_s: float, process: subprocess.Popen, log: Path, every_s: float = 3.0):
    """Poll `check` until it returns a truthy value; fail with the log's tail when time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Airflow exited ({process.returncode}) while waiting for {what}:\n{tail(log)}")
        result = check()
        if result:
            return result
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}:\n{tail(log)}")


def wait_finished(api: Api, dag_id: str, run_id: str, process: subprocess.Popen, log: Path, timeout_s: float = 1500) -> dict[str, str]:
    """Wait for a run to end; it must succeed (a failure names its task states and the log's end).
    Returns task id (with [map index]) -> state."""
    run_path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"

    def finished():
        status, body = api.call("GET", run_path)
        return body if status == 200 and body["state"] in ("success", "failed") else None

    final = wait(f"the {dag_id} run to finish", finished, timeout_s, process, log, every_s=10)
    states = {_ti_key(ti): ti["state"] for ti in task_instances(api, dag_id, run_id)}
    assert final["state"] == "success", f"{dag_id}: {states}\n{tail(log)}"
    return states


def task_instances(api: Api, dag_id: str, run_id: str) -> list[dict]:
    status, body = api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")
    assert status == 200, body
    return body["task_instances"]


def _ti_key(ti: dict) -> str:
    return ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")


def stop(process: subprocess.Popen) -> None:
    """SIGINT is the launcher's own shutdown; whatever of its process group outlives it is killed."""
    for sig, grace_s in ((signal.SIGINT, 90), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue


def airflow_test_env(lake: Path, **settings: str) -> dict[str, str]:
    """This process's environment without its AIRFLOW_* variables, with a small local lake on local Spark
    and Spark backend, plus `settings` (more ALTLAKE_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        ALTLAKE_LAKE_DIR=str(lake),
        ALTLAKE_SPARK_BACKEND="local",
        ALTLAKE_SPARK_MASTER="local[2]",
        ALTLAKE_SPARK_SHUFFLE_PARTITIONS="2",
        **settings,
    )
    return env


def admin_password(home: Path) -> str | None:
    """The admin's password once the API server has written it under AIRFLOW_HOME."""
    passwords = home / PASSWORDS_FILE
    return passwords.exists() and json.loads(passwords.read_text()).get("admin")
