"""EMR Serverless: the request that runs one of our Spark jobs there, built from our settings.

Production runs `spark_jobs/extract.py` and `spark_jobs/quality.py` on an EMR Serverless
application through the amazon provider's EmrServerlessStartJobOperator. Everything the request
holds comes from `Settings` (ALTLAKE_EMR_*; see infra/aws/README.md):

- entryPoint: `{emr_code_uri}/{script}`; our packages travel as `{emr_code_uri}/altlake.zip`
  (spark.submit.pyFiles), built by `build_code_zip`.
- sparkSubmitParameters: Delta from Maven (the delta-spark version pinned in this venv), the Delta
  SQL extension and catalog, the Glue Data Catalog as Hive metastore, and the job's non-default
  ALTLAKE_* settings plus ALTLAKE_SPARK_PROVIDED=true as driver and executor environment.
- configurationOverrides: driver/executor logs to `emr_log_uri`.
"""

from __future__ import annotations

import zipfile
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path

from altlake.config import Settings
from plugins.jobs import REPO, SparkJob

CODE_ZIP = "altlake.zip"
PACKAGES = ("altlake", "spark_jobs")  # what the jobs import on the cluster
SCALA_VERSION = "2.13"  # Spark 4 is built for Scala 2.13 only
GLUE_CATALOG = "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"


def _required(settings: Settings) -> None:
    missing = [
        f"ALTLAKE_{name.upper()}"
        for name in ("emr_application_id", "emr_execution_role_arn", "emr_code_uri", "emr_log_uri")
        if not getattr(settings, name)
    ]
    if missing:
        raise ValueError(f"spark_backend=emr_serverless needs {', '.join(missing)} (see infra/aws/README.md)")


def spark_submit_conf(settings: Settings, job: SparkJob) -> dict[str, str]:
    """The --conf pairs of the EMR job: Delta, our code, our settings."""
    code = settings.emr_code_uri.rstrip("/")
    conf = {
        "spark.app.name": f"altlake-{job.name}",
        "spark.jars.packages": f"io.delta:delta-spark_{SCALA_VERSION}:{version('delta-spark')}",
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.submit.pyFiles": f"{code}/{CODE_ZIP}",
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        # The catalog is the Glue Data Catalog and the jars come with the job: the session must
        # not look for a local jar cache or start an embedded Derby metastore.
        "spark.hadoop.hive.metastore.client.factory.class": GLUE_CATALOG,
    }
    for name, value in {**changed_settings(settings), "spark_provided": "true"}.items():
        if any(ch.isspace() for ch in value):
            raise ValueError(f"ALTLAKE_{name.upper()}={value!r}: EMR's sparkSubmitParameters cannot carry spaces")
        conf[f"spark.emr-serverless.driverEnv.ALTLAKE_{name.upper()}"] = value
        conf[f"spark.executorEnv.ALTLAKE_{name.upper()}"] = value
    return conf


# Settings that only mean something on the Airflow side: the cluster picks its own master,
# memory and jar locations.
AIRFLOW_SIDE = {"airflow_home", "cache_dir", "crawl_list_url", "spark_backend", "spark_master", "spark_driver_memory"}


def changed_settings(settings: Settings) -> dict[str, str]:
    """Settings that differ from the defaults (the cluster has the defaults already)."""
    defaults = Settings()
    return {
        f.name: str(getattr(settings, f.name))
        for f in fields(settings)
        if getattr(settings, f.name) != getattr(defaults, f.name)
        and f.name not in AIRFLOW_SIDE
        and not f.name.startswith("emr_")
    }


def job_driver(settings: Settings, job: SparkJob) -> dict:
    """The `jobDriver` of StartJobRun for `job`."""
    _required(settings)
    conf = spark_submit_conf(settings, job)
    return {
        "sparkSubmit": {
            "entryPoint": f"{settings.emr_code_uri.rstrip('/')}/{job.script}",
            "entryPointArguments": list(job.args),
            "sparkSubmitParameters": " ".join(f"--conf {key}={value}" for key, value in conf.items()),
        }
    }


def configuration_overrides(settings: Settings) -> dict:
    """Where EMR Serverless writes the driver and executor logs."""
    _required(settings)
    return {"monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": settings.emr_log_uri}}}


def start_job_operator(settings: Settings, job: SparkJob, task_id: str):
    """The provider's operator for `job`, waiting for the run to finish (polled every 30 s)."""
    from airflow.providers.amazon.aws.operators.emr import EmrServerlessStartJobOperator

    return EmrServerlessStartJobOperator(
        task_id=task_id,
        application_id=settings.emr_application_id,
        execution_role_arn=settings.emr_execution_role_arn,
        job_driver=job_driver(settings, job),
        configuration_overrides=configuration_overrides(settings),
        name=f"altlake-{job.name}",
        aws_conn_id=settings.emr_aws_conn_id,
        wait_for_completion=True,
        waiter_delay=30,
        waiter_max_attempts=240,  # two hours
    )


def build_code_zip(destination: str | Path) -> Path:
    """Zip the packages the jobs import, for `{emr_code_uri}/altlake.zip`."""
    destination = Path(destination)
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            for source in sorted((REPO / package).rglob("*.py")):
                archive.write(source, source.relative_to(REPO).as_posix())
    return destination
