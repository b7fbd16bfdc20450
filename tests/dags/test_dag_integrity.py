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
    assert dag.schedule == "@monthly"
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
