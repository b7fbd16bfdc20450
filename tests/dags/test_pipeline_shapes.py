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
    assert set(dag.params) >= {"crawl", "batch_size", "max_batches", "worker_backend", "profile", "rescore", "per_host_concurrency", "per_host_rate"}


def test_build_release_and_apply_takedowns_shapes(dagbag):
    from plugins.assets import SCORES_ASSET

    release = dagbag.dags["build_release"]
    assert [a.name for a in release.timetable.asset_condition.objects] == [SCORES_ASSET.name]
    assert [t.task_id for t in release.topological_sort()] == ["validate_candidates", "publish", "build_index"]
    assert set(release.params) >= {"release_store", "thresholds"}
    takedowns = dagbag.dags["apply_takedowns"]
    assert takedowns.timetable.summary == "@daily" and takedowns.timetable._expression == "0 0 * * *"
    assert [t.task_id for t in takedowns.topological_sort()] == ["add", "apply", "amend_releases", "purge"]
    assert set(takedowns.params) >= {"url", "domain", "sha256", "md5", "pdq", "pdq_max_distance", "hash_list", "reason"}


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


def test_score_candidates_form_politeness_reaches_the_worker_command(dagbag, monkeypatch):
    """Form fields -> run settings -> flags on each batch -> the score task's command line -> the
    worker's DownloadConfig; settings without a form field travel as flags too (containers get no ALTLAKE_* for them)."""
    import argparse
    import copy
    import sys

    from airflow.sdk.exceptions import ParamValidationError

    from altlake.config import Settings
    from gpu_workers.worker import configure, download_config
    from plugins import scoring
    from plugins.worker_backends import LOCAL_COMMAND, LocalScoreOperator

    module = sys.modules["dags.score_candidates"]
    dag = dagbag.dags["score_candidates"]
    assert dag.get_task("score").expand_input.value.callables == [module.score_kwargs], "each batch's kwargs come from score_kwargs"
    batch = {"batch_id": "b-7", "input_path": "s3://lake/b-7/input.parquet", "output_path": "s3://lake/b-7/output"}
    parser = argparse.ArgumentParser()
    configure(parser)

    def worker_config(form: dict):
        settings = scoring.run_settings(form)
        run_args = [*scoring.profile_args(settings, form["profile"]), *scoring.politeness_args(settings)]
        (planned,) = scoring.with_worker_args([batch], run_args)  # what the plan task returns
        operator = LocalScoreOperator(task_id="score", **module.score_kwargs(planned))
        assert operator.batch == batch and operator.command[: len(LOCAL_COMMAND)] == list(LOCAL_COMMAND)
        args = parser.parse_args(operator.command[len(LOCAL_COMMAND) :])  # what follows `altlake score`
        config = download_config(args, Settings.from_env({}))  # the worker's container: no ALTLAKE_* politeness
        assert args.profile == form["profile"] == "demo"
        return config.per_host_concurrency, config.per_host_rate, config.max_retry_after_s, config.host_refusal_limit

    params = copy.deepcopy(dag.params)
    for name, bad in (("per_host_concurrency", 0), ("per_host_rate", -1)):
        with pytest.raises(ParamValidationError):
            params[name] = bad
    monkeypatch.setenv("ALTLAKE_PER_HOST_RATE", "3")
    monkeypatch.setenv("ALTLAKE_MAX_RETRY_AFTER_S", "12")
    assert worker_config(params.validate()) == (8, 3.0, 12.0, 5), "empty fields: the deployment's settings"
    params["per_host_concurrency"], params["per_host_rate"] = 2, 0
    assert worker_config(params.validate()) == (2, 0.0, 12.0, 5), "the form wins, and a rate of 0 (no limit) is a value"
    # After ALTLAKE_WORKER_ARGS, so the run's politeness wins over a flag given there.
    kwargs = scoring.score_kwargs({**batch, "worker_args": ["--per-host-concurrency", "2"]}, ["--model", "ViT-L-14", "--per-host-concurrency", "9"])
    assert kwargs == {"batch": batch, "worker_args": ["--model", "ViT-L-14", "--per-host-concurrency", "9", "--per-host-concurrency", "2"]}
