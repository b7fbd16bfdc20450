"""Every DAG file imports cleanly and follows the platform's conventions."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    files = {Path(p).name for p in DAGS_DIR.glob("*.py")}
    loaded = {Path(d.fileloc).name for d in dagbag.dags.values()}
    assert files == loaded, f"files without a DAG: {files - loaded}"


def test_dags_follow_the_conventions(dagbag):
    assert "cc_ingest" in dagbag.dags
    for dag_id, dag in dagbag.dags.items():
        assert "altlake" in dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md) > 100, f"{dag_id} needs a doc_md"
        assert dag.description and len(dag.description) > 20, f"{dag_id} needs a description for the DAG list"
        for t in dag.tasks:
            assert t.retries >= 1, f"{dag_id}.{t.task_id} has no retries"
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"
        # A cycle makes topological_sort raise.
        assert len(dag.topological_sort()) == len(dag.tasks)


def test_cc_ingest_shape(dagbag):
    from plugins.assets import CANDIDATES_ASSET
    from plugins.defaults import SPARK_POOL

    dag = dagbag.dags["cc_ingest"]
    assert dag.catchup is False
    assert dag.timetable.summary == "@monthly" and dag.timetable._expression == "0 0 1 * *"
    assert set(dag.params) >= {"crawl", "wat_paths", "wat_limit", "backend", "spark_master"}
    order = [t.task_id for t in dag.topological_sort()]
    assert order == ["resolve_inputs", "extract", "validate_candidates"]
    assert dag.get_task("extract").pool == SPARK_POOL
    assert dag.get_task("validate_candidates").pool == SPARK_POOL
    assert dag.get_task("extract").retry_exponential_backoff
    assert CANDIDATES_ASSET in dag.get_task("validate_candidates").outlets


def test_params_form_rejects_a_bad_crawl_id(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    params = dagbag.dags["cc_ingest"].params
    params.validate()  # the defaults are valid: the monthly run needs no input
    with pytest.raises(ParamValidationError, match="crawl"):
        params["crawl"] = "2024-10"
    with pytest.raises(ParamValidationError):
        params["backend"] = "yarn"


def test_a_laptop_airflow_has_no_time_based_runs_but_keeps_the_asset_chain(monkeypatch):
    """`altlake airflow` parses the DAGs with ALTLAKE_SCHEDULES=false: the monthly ingest would reach
    for the internet, and a run nobody asked for must not start."""
    import os
    import subprocess
    import sys

    from altlake.config import Settings
    from altlake_cli.airflow_cmd import airflow_env

    env = airflow_env(Settings.from_env(), 8080, base=dict(os.environ))
    assert env["ALTLAKE_SCHEDULES"] == "false" and env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert airflow_env(Settings.from_env(), 8080, base=dict(os.environ), schedules=True)["ALTLAKE_SCHEDULES"] == "true"
    probe = (
        "from airflow.dag_processing.dagbag import DagBag; import sys; bag = DagBag(dag_folder=sys.argv[1]);"
        "print('SCHEDULES', *(f'{i}={d.schedule}' for i, d in sorted(bag.dags.items())))"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(DAGS_DIR)], env=env, capture_output=True, text=True, timeout=300)
    line = next((line for line in done.stdout.splitlines() if line.startswith("SCHEDULES ")), "")
    schedules = dict(item.split("=", 1) for item in line.split()[1:])
    assert schedules["cc_ingest"] == "None" and schedules["apply_takedowns"] == "None", done.stderr[-2000:]
    assert schedules["maintain_lake"] == "None", done.stderr[-2000:]
    assert "candidates" in schedules["score_candidates"] and "scores" in schedules["build_release"]
