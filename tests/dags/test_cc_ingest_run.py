"""A real `dag.test()` run of cc_ingest: real Spark + Delta over the real WAT sample, real GX."""

from __future__ import annotations

from pathlib import Path

from altlake.paths import LakePaths
from spark_jobs.quality import _safe_run_id

CRAWL = "CC-MAIN-2015-18"


def test_cc_ingest_extracts_validates_and_updates_the_asset(airflow_db, settings, spark, sample_wat, monkeypatch):
    from airflow.models.asset import AssetEvent
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from dags.cc_ingest import cc_ingest_dag as dag
    from plugins.assets import CANDIDATES_ASSET

    monkeypatch.setenv("ALTLAKE_LAKE_DIR", settings.lake_dir)
    monkeypatch.setenv("ALTLAKE_SPARK_MASTER", settings.spark_master)
    monkeypatch.setenv("ALTLAKE_SPARK_SHUFFLE_PARTITIONS", str(settings.spark_shuffle_partitions))
    monkeypatch.setenv("ALTLAKE_SPARK_BACKEND", "local")

    run = dag.test(run_conf={"crawl": CRAWL, "wat_paths": [str(sample_wat)]})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"resolve_inputs": "success", "extract": "success", "validate_candidates": "success"}

    def xcom(task_id: str):
        with create_session() as session:
            query = XComModel.get_many(run_id=run.run_id, key="return_value", dag_ids=dag.dag_id, task_ids=task_id)
            row = session.scalars(query).first()
            return XComModel.deserialize_value(row)

    inputs, extracted, report = xcom("resolve_inputs"), xcom("extract"), xcom("validate_candidates")
    assert inputs == {"crawl": CRAWL, "wat_paths": [str(sample_wat)]}
    totals = extracted["totals"]
    assert totals["done"] == 1 and totals["failed"] == 0

    candidates = spark.read.format("delta").load(LakePaths(settings.lake_dir).table("candidates"))
    rows = candidates.count()
    assert rows > 0
    assert rows == totals["new_candidates"] == totals["kept_pairs"]
    assert candidates.where(f"first_seen_crawl = '{CRAWL}' AND wat_path = '{sample_wat}'").count() == rows
    crawl_files = spark.read.format("delta").load(LakePaths(settings.lake_dir).table("crawl_files"))
    assert [(r.path, r.status) for r in crawl_files.collect()] == [(str(sample_wat), "done")]

    assert report["success"] is True and report["n_rows"] == rows
    assert {o["expectation"] for o in report["outcomes"]} >= {
        "expect_column_values_to_be_unique",
        "expect_column_value_lengths_to_be_between",
    }
    docs = Path(LakePaths(settings.lake_dir).gx_docs(_safe_run_id(run.run_id)))
    assert (docs / "index.html").is_file()
    assert list(docs.glob("validations/**/*.html")), "the validation's Data Docs page is missing"

    with create_session() as session:
        # This run's events only: the worker's Airflow database also holds other test files' runs.
        events = session.query(AssetEvent).filter_by(source_dag_id=dag.dag_id, source_run_id=run.run_id).all()
        events = [e for e in events if e.asset.uri == CANDIDATES_ASSET.uri]
    assert [e.extra.get("crawl") for e in events] == [CRAWL]
    assert events[0].extra["rows"] == rows
