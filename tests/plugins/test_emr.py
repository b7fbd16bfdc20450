"""The EMR Serverless request built from our settings (no AWS call: the operator is only built)."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from altlake.config import Settings
from plugins.emr import GLUE_CATALOG, build_code_zip, configuration_overrides, job_driver, start_job_operator
from plugins.jobs import extract_job, quality_job
from spark_jobs.session import spark_conf

EMR = dict(
    spark_backend="emr_serverless",
    lake_dir="s3a://altlake-lake/prod",
    emr_application_id="00fabc123",
    emr_execution_role_arn="arn:aws:iam::123456789012:role/altlake-emr",
    emr_code_uri="s3://altlake-code/v1/",
    emr_log_uri="s3://altlake-logs/emr/",
    spark_shuffle_partitions=400,
)


def test_extract_job_driver_and_overrides(tmp_path):
    settings = Settings.from_env(environ={}, **EMR)
    job = extract_job("CC-MAIN-2024-10", ["s3a://commoncrawl/a.wat.gz", "s3a://commoncrawl/b.wat.gz"], settings.lake_dir)

    driver = job_driver(settings, job)["sparkSubmit"]
    assert driver["entryPoint"] == "s3://altlake-code/v1/spark_jobs/extract.py"
    assert driver["entryPointArguments"] == [
        "--crawl", "CC-MAIN-2024-10", "--lake", "s3a://altlake-lake/prod",
        "--wat", "s3a://commoncrawl/a.wat.gz", "s3a://commoncrawl/b.wat.gz",
    ]
    params = driver["sparkSubmitParameters"].split(" ")
    conf = dict(p.split("=", 1) for p in params if p != "--conf")
    assert params[0::2] == ["--conf"] * len(conf)
    assert conf["spark.jars.packages"] == f"io.delta:delta-spark_2.13:{version('delta-spark')}"
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    assert conf["spark.submit.pyFiles"] == "s3://altlake-code/v1/altlake.zip"
    assert conf["spark.sql.shuffle.partitions"] == "400"
    # Non-default settings reach driver and executors; Airflow-side ones and EMR ids stay behind.
    assert conf["spark.emr-serverless.driverEnv.ALTLAKE_LAKE_DIR"] == "s3a://altlake-lake/prod"
    assert conf["spark.executorEnv.ALTLAKE_LAKE_DIR"] == "s3a://altlake-lake/prod"
    assert not any("SPARK_BACKEND" in k or "ALTLAKE_EMR_" in k or "SPARK_MASTER" in k for k in conf)
    assert conf["spark.hadoop.hive.metastore.client.factory.class"] == GLUE_CATALOG

    # The session the job opens on the cluster, from the environment this request gives its driver:
    # no local jar cache (there is none there) and no embedded Derby catalog.
    prefix = "spark.emr-serverless.driverEnv."
    cluster_env = {k.removeprefix(prefix): v for k, v in conf.items() if k.startswith(prefix)}
    cluster = Settings.from_env(environ={**cluster_env, "ALTLAKE_CACHE_DIR": str(tmp_path / "no-jars-here")})
    session_conf = spark_conf(cluster, "altlake-extract")
    assert cluster.spark_provided and cluster.lake_dir == "s3a://altlake-lake/prod"
    assert "spark.jars" not in session_conf and not any("jdo" in k or "derby" in v for k, v in session_conf.items())
    assert session_conf["spark.sql.catalogImplementation"] == "hive"
    with pytest.raises(RuntimeError, match="Delta jars are missing"):  # where Spark is not provided, the cache is required
        spark_conf(cluster.with_(spark_provided=False), "altlake-extract")

    assert configuration_overrides(settings) == {
        "monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": "s3://altlake-logs/emr/"}}
    }


def test_the_operator_carries_the_request():
    settings = Settings.from_env(environ={}, **EMR)
    job = quality_job("candidates", "manual__1", "CC-MAIN-2024-10", settings.lake_dir)
    operator = start_job_operator(settings, job, task_id="emr_quality")

    assert operator.application_id == "00fabc123"
    assert operator.execution_role_arn == "arn:aws:iam::123456789012:role/altlake-emr"
    assert operator.job_driver == job_driver(settings, job)
    assert operator.job_driver["sparkSubmit"]["entryPoint"].endswith("/spark_jobs/quality.py")
    assert operator.configuration_overrides == configuration_overrides(settings)
    assert operator.name == "altlake-quality-candidates-CC-MAIN-2024-10"
    assert operator.wait_for_completion is True
    assert operator.aws_conn_id == "aws_default"


def test_missing_emr_settings_are_named():
    settings = Settings.from_env(environ={}, spark_backend="emr_serverless", emr_application_id="00fabc123")
    with pytest.raises(ValueError, match="ALTLAKE_EMR_EXECUTION_ROLE_ARN, ALTLAKE_EMR_CODE_URI, ALTLAKE_EMR_LOG_URI"):
        job_driver(settings, extract_job("CC-MAIN-2024-10", ["a"], "lake"))


def test_settings_with_spaces_cannot_be_smuggled_into_submit_parameters():
    settings = Settings.from_env(environ={}, **EMR, user_agent="my bot/1.0")
    with pytest.raises(ValueError, match="ALTLAKE_USER_AGENT"):
        job_driver(settings, extract_job("CC-MAIN-2024-10", ["a"], "lake"))


def test_code_zip_holds_the_job_packages(tmp_path):
    import zipfile

    names = set(zipfile.ZipFile(build_code_zip(tmp_path / "altlake.zip")).namelist())
    assert {"altlake/config.py", "altlake/schemas.py", "spark_jobs/extract.py", "spark_jobs/quality.py"} <= names
    assert not any(n.startswith(("plugins/", "dags/")) for n in names)
