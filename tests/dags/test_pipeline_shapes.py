"""The three issue-4 DAGs are wired as documented: schedules, pools, trigger rules, assets."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def dagbag():
    """The DAG objects themselves, parsed afresh under the default deployment settings.

    The backend and retries are read when a DAG file is parsed, and other tests import these
    modules under their own ALTLAKE_* variables, so reload them with those variables unset.
    (test_dag_integrity covers parsing them through a DagBag.)"""
    import importlib
    import os
    from types import SimpleNamespace

    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("ALTLAKE_")}
    try:
        modules = [
            importlib.reload(importlib.import_module(f"dags.{name}"))
            for name in ("score_candidates", "build_release", "apply_takedowns")
        ]
    finally:
        os.environ.update(saved)
    dags = [modules[0].score_candidates_dag, modules[1].build_release_dag, modules[2].apply_takedowns_dag]
    return SimpleNamespace(dags={d.dag_id: d for d in dags})


def test_score_candidates_fans_out_in_the_scoring_pool_and_merges_whatever_finished(dagbag):
    from plugins.assets import CANDIDATES_ASSET, SCORES_ASSET
    from plugins.defaults import SCORING_POOL, SPARK_POOL

    dag = dagbag.dags["score_candidates"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == [CANDIDATES_ASSET.name]
    assert [t.task_id for t in dag.topological_sort()] == ["plan", "score", "merge", "check"]
    score = dag.get_task("score")
    assert score.pool == SCORING_POOL and score.retries >= 1 and score.retry_exponential_backoff
    assert dag.get_task("plan").pool == dag.get_task("merge").pool == SPARK_POOL
    assert dag.get_task("merge").trigger_rule == "all_done" and dag.get_task("check").trigger_rule == "all_done"
    assert SCORES_ASSET in dag.get_task("merge").outlets
    assert set(dag.params) >= {"crawl", "batch_size", "max_batches", "worker_backend", "model"}


def test_build_release_and_apply_takedowns_shapes(dagbag):
    from plugins.assets import SCORES_ASSET

    release = dagbag.dags["build_release"]
    assert [a.name for a in release.timetable.asset_condition.objects] == [SCORES_ASSET.name]
    assert [t.task_id for t in release.topological_sort()] == ["validate_candidates", "publish", "build_index"]
    assert set(release.params) >= {"release_store", "thresholds"}
    takedowns = dagbag.dags["apply_takedowns"]
    assert takedowns.schedule == "@daily"
    assert [t.task_id for t in takedowns.topological_sort()] == ["add", "apply"]
    assert set(takedowns.params) >= {"url", "domain", "sha256", "md5", "hash_list", "reason"}


def test_forms_reject_bad_values(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    params = dagbag.dags["score_candidates"].params
    params.validate()
    with pytest.raises(ParamValidationError):
        params["worker_backend"] = "yarn"
    release = dagbag.dags["build_release"].params
    release.validate()
    with pytest.raises(ParamValidationError):
        release["thresholds"] = {"en": 2.0}
