"""A real `dag.test()` run of maintain_lake over a small lake: real Spark + Delta, the task's Summary line."""

from __future__ import annotations

import logging

import pytest

from spark_jobs.lake import read_table
from tests.spark_jobs.lakegen import add_candidates, candidate

pytestmark = pytest.mark.integration  # an Airflow run of a Spark task: over a minute on a busy machine


def test_maintain_lake_compacts_the_chosen_tables_and_records_the_run(airflow_db, settings, spark, monkeypatch, caplog):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from dags.maintain_lake import maintain_lake_dag as dag

    for batch in range(3):
        add_candidates(spark, settings, [candidate(f"https://img.example.org/{batch}/{i}.jpg", f"picture {batch} {i}") for i in range(2)])
    uids = sorted(r["uid"] for r in read_table(spark, settings, "candidates").select("uid").collect())
    monkeypatch.setenv("ALTLAKE_LAKE_DIR", settings.lake_dir)
    monkeypatch.setenv("ALTLAKE_SPARK_MASTER", settings.spark_master)
    monkeypatch.setenv("ALTLAKE_SPARK_SHUFFLE_PARTITIONS", str(settings.spark_shuffle_partitions))
    monkeypatch.setenv("ALTLAKE_SPARK_BACKEND", "local")

    with caplog.at_level(logging.INFO, logger="plugins.maintenance"):
        run = dag.test(run_conf={"tables": ["candidates", "batches"]})

    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {"maintain": "success"}
    with create_session() as session:
        query = XComModel.get_many(run_id=run.run_id, key="return_value", dag_ids=dag.dag_id, task_ids="maintain")
        summary = XComModel.deserialize_value(session.scalars(query).first())
    assert set(summary["tables"]) == {"candidates", "batches"} and summary["errors"] == {}
    candidates = summary["tables"]["candidates"]
    assert candidates["files_before"] >= 3 and candidates["files_after"] == 1
    assert sorted(r["uid"] for r in read_table(spark, settings, "candidates").select("uid").collect()) == uids

    recorded = read_table(spark, settings, "maintenance").where(f"run_id = '{summary['run_id']}'").collect()
    assert sorted(r["table_name"] for r in recorded) == ["batches", "candidates"]
    row = next(r for r in recorded if r["table_name"] == "candidates")
    assert (row["files_before"], row["files_after"], row["retention_hours"]) == (candidates["files_before"], 1, settings.history_retention_hours)
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Summary: lake maintenance")]
    assert summaries and f"{candidates['files_before']} -> 1 data files" in summaries[-1]


def test_the_form_refuses_a_table_the_lake_does_not_have():
    from airflow.sdk.exceptions import ParamValidationError

    from dags.maintain_lake import maintain_lake_dag as dag

    params = dag.params
    params.validate()  # the weekly run needs no input: every table
    with pytest.raises(ParamValidationError):
        params["tables"] = ["candidate"]


def test_the_summary_line_names_the_effect_and_any_failed_table():
    from plugins.maintenance import summary_line

    result = {
        "run_id": "20261205T000000Z-0a1b2c3d", "retention_hours": 720, "tables": {"candidates": {}, "scores": {}},
        "files_before": 120, "files_after": 9, "bytes_before": 3 * 1024 * 1024, "bytes_after": 2 * 1024 * 1024,
        "vacuumed_files": 40, "seconds": 61.4, "errors": {},
    }  # fmt: skip
    assert summary_line(result) == (
        "Summary: lake maintenance 20261205T000000Z-0a1b2c3d of 2 table(s): 120 -> 9 data files, 3.0 -> 2.0 MiB; "
        "VACUUM (retention 720 h) deleted 40 file(s); 61 s"
    )
    assert summary_line({**result, "errors": {"scores": "boom"}}).endswith("; FAILED: scores")
    assert "job run 00f1" in summary_line({"backend": "emr_serverless", "job_run_id": "00f1"})
