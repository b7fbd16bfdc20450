"""A team's Airflow for real: `altlake airflow --database postgresql://...` on a Postgres 15 server on
127.0.0.1 runs the scheduler, DAG processor, triggerer and API server as separate processes with
LocalExecutor and a `scoring` pool three wide. The whole chain cc_ingest -> score_candidates ->
build_release is triggered through the REST API alone and ends in success, the mapped batches are
scored side by side, and a second trigger of the same crawl duplicates nothing.

Slow by nature (four Airflow components, Spark JVMs and scoring workers on a shared 2-core machine),
so every wait is generous but bounded, and everything started is shut down at the end.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from altlake.paths import LakePaths
from altlake_cli.airflow_cmd import COMPONENT_LOGS, COMPONENTS
from altlake_cli.demo import DEMO_CRAWL, write_demo_crawl
from tests.airflow_api import Api, admin_password, airflow_test_env, free_port, stop, task_instances, tail, wait, wait_finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3000)]

SCORING_SLOTS = 3
BATCH_SIZE = 3  # over a dozen candidates: more batches than the pool runs at once
CHAIN = ("cc_ingest", "score_candidates", "build_release")


def _table(lake: Path, name: str):
    from deltalake import DeltaTable

    return DeltaTable(LakePaths(str(lake)).table(name)).to_pyarrow_table()


def _snapshot(lake: Path) -> dict[str, list]:
    """What the chain wrote, minus nothing: every row of the tables a re-run must not grow."""
    return {
        "candidates": sorted(_table(lake, "candidates").column("uid").to_pylist()),
        "scores": sorted(_table(lake, "scores").column("uid").to_pylist()),
        "batches": sorted(_table(lake, "batches").column("batch_id").to_pylist()),
        "pairs": sorted(_table(lake, "pairs").column("uid").to_pylist()),
        "releases": sorted(_table(lake, "releases").column("release_id").to_pylist()),
    }


def _overlapping(intervals: list[tuple[datetime, datetime]]) -> bool:
    ordered = sorted(intervals)
    return any(later_start < earlier_end for (_, earlier_end), (later_start, _) in zip(ordered, ordered[1:]))


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _idle(api: Api) -> bool:
    """No run of the chain queued or running."""
    return all(run["state"] not in ("queued", "running") for dag_id in CHAIN for run in api.runs(dag_id))


def test_team_airflow_on_postgres_runs_the_chain_through_the_rest_api(postgres, tmp_path):
    from altlake_cli.image_server import ImageServer

    database = postgres.sqlalchemy_url(postgres.create_database("airflow_team"))
    port, home, lake = free_port(), tmp_path / "airflow_home", tmp_path / "lake"
    env = airflow_test_env(
        lake,
        ALTLAKE_BATCH_SIZE=str(BATCH_SIZE),
        ALTLAKE_WORKER_ARGS="--allow-host 127.0.0.1 --allow-listed-only --decode-workers 1",
        ALTLAKE_WORKER_RETRIES="0",
    )
    log = tmp_path / "airflow.log"
    with ImageServer(files_dir=tmp_path / "crawl" / "images") as server:
        demo = write_demo_crawl(tmp_path / "crawl", server.base_url, matching=4, multilingual=1, mismatched=2, watermarked=1)
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "altlake_cli.main", "airflow", "--database", database, "--port", str(port), "--home", str(home),
                 "--scoring-slots", str(SCORING_SLOTS)],
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        api = Api(port)
        components: list[psutil.Process] = []
        try:
            wait("the API server", lambda: api.call("GET", "/api/v2/monitor/health")[0] == 200, 900, process, log)
            components = psutil.Process(process.pid).children()
            # One process per component (the API server retitles its process, so it is the one left).
            names = [" ".join(c.cmdline()) for c in components]
            assert len(components) == len(COMPONENTS), names
            assert all(any(n.endswith(f"airflow {name}") for n in names) for name in COMPONENTS if name != "api-server"), names
            # The metadata database is the Postgres server: Airflow's own tables are there.
            assert "dag_run" in postgres.sql("SELECT tablename FROM pg_tables", db="airflow_team").split()
            health = wait(
                "every component healthy",
                lambda: (body := api.call("GET", "/api/v2/monitor/health")[1])
                and all(body.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler", "triggerer", "dag_processor"))
                and body,
                300, process, log,
            )  # fmt: skip
            assert health["metadatabase"]["status"] == "healthy"

            password = wait("the admin password", lambda: admin_password(home), 120, process, log)
            status, body = api.call("POST", "/auth/token", {"username": "admin", "password": password})
            assert status == 201, body
            api.token = body["access_token"]
            status, pool = api.call("GET", "/api/v2/pools/scoring")
            assert status == 200 and pool["slots"] == SCORING_SLOTS, pool
            for dag_id in CHAIN:
                wait(f"{dag_id} to be parsed", lambda d=dag_id: api.call("GET", f"/api/v2/dags/{d}")[0] == 200, 600, process, log)
                api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

            first = _trigger_chain(api, process, log, demo.wat)
            score_tis = [ti for ti in first["score_candidates"] if ti["task_id"] == "score"]
            assert len(score_tis) > SCORING_SLOTS and {ti["state"] for ti in score_tis} == {"success"}, score_tis
            assert {ti["pool"] for ti in score_tis} == {"scoring"}
            # LocalExecutor ran batches side by side (the pool is three wide), not one after another.
            assert _overlapping([(_when(ti["start_date"]), _when(ti["end_date"])) for ti in score_tis]), score_tis
            wrote = _snapshot(lake)
            # Each batch carries its worker's throughput record, for SQL.
            batches = _table(lake, "batches").to_pylist()
            assert all(b["host"] and b["finished_at"] > b["started_at"] and b["wall_s"] > 0 for b in batches), batches
            assert sum(b["rows_ok"] for b in batches) >= 7 and sum(b["bytes_downloaded"] for b in batches) > 0
            assert len(wrote["candidates"]) >= 10 and len(wrote["releases"]) == 1 and wrote["pairs"]
            assert len(wrote["scores"]) == len(wrote["candidates"]) - 1  # the opted-out page is never downloaded
            assert len(wrote["batches"]) == len(score_tis) == -(-len(wrote["scores"]) // BATCH_SIZE)

            # The same crawl again: ingested nothing new, scored nothing new, released nothing new.
            second = _trigger(api, "cc_ingest", {"crawl": DEMO_CRAWL, "wat_paths": [str(demo.wat)]}, process, log)
            assert {ti["state"] for ti in second} == {"success"}
            time.sleep(30)  # an asset-triggered follower would be created within the scheduler's loop
            wait("the chain to go idle", lambda: _idle(api), 1500, process, log, every_s=10)
            assert all(run["state"] == "success" for dag_id in CHAIN for run in api.runs(dag_id)), {
                d: [r["state"] for r in api.runs(d)] for d in CHAIN
            }
            assert _snapshot(lake) == wrote
        finally:
            stop(process)
    assert process.poll() is not None, "altlake airflow is still running"
    still = [c.pid for c in components if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not still, f"components outlived the launcher: {still}"
    assert all((home / COMPONENT_LOGS / f"{name}.log").stat().st_size > 0 for name in COMPONENTS), tail(log)


def _trigger(api: Api, dag_id: str, conf: dict, process, log: Path) -> list[dict]:
    """Trigger a run through the REST API, wait for it to succeed, return its task instances."""
    status, run = api.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
    assert status == 200, run
    wait_finished(api, dag_id, run["dag_run_id"], process, log)
    return task_instances(api, dag_id, run["dag_run_id"])


def _trigger_chain(api: Api, process, log: Path, wat: Path) -> dict[str, list[dict]]:
    """cc_ingest through the API; score_candidates and build_release follow on their assets."""
    done = {"cc_ingest": _trigger(api, "cc_ingest", {"crawl": DEMO_CRAWL, "wat_paths": [str(wat)]}, process, log)}
    for dag_id in ("score_candidates", "build_release"):
        (run,) = wait(f"{dag_id} to follow on its asset", lambda d=dag_id: api.runs(d), 900, process, log)
        assert run["run_type"] == "asset_triggered", run
        wait_finished(api, dag_id, run["dag_run_id"], process, log)
        done[dag_id] = task_instances(api, dag_id, run["dag_run_id"])
    return done
