"""Run altlake's Spark jobs on the configured backend: one interface, three places to run.

`ALTLAKE_SPARK_BACKEND` (or the DAG's `backend` param) picks where:

- `local` (default): in the Airflow task's own process, through `get_spark(settings)` with
  `spark_master` (local[*] by default). Chosen over a spark-submit subprocess because the task
  gets the job's Python result (per-file counts) directly, the worker starts one JVM instead of
  two, and the JVM ends with the task process. The `spark` pool (1 slot) keeps two such JVMs from
  sharing the embedded Derby catalog.
- `submit`: `spark-submit` of the job's script to `spark_master` (e.g. spark://host:7077), with
  every setting of `spark_jobs.session.spark_conf` and the ALTLAKE_* environment; the job's JSON
  summary is read back from its stdout.
- `emr_serverless`: the same script on EMR Serverless through the amazon provider's
  EmrServerlessStartJobOperator (see plugins/emr.py and infra/aws/README.md).

Both jobs also run without Airflow (`altlake extract`, `python spark_jobs/quality.py`), so none of
this is needed to use them; it only decides where an Airflow task sends them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

from altlake.config import Settings
from spark_jobs.quality import GATE_FAILED_EXIT

log = logging.getLogger(__name__)

BACKENDS = ("local", "submit", "emr_serverless")
REPO = Path(__file__).resolve().parent.parent


class SparkJobError(RuntimeError):
    """The job ran and failed; the message carries its exit status and the end of its output."""


@dataclass(frozen=True)
class SparkJob:
    """One of our Spark entry points with its command-line arguments: what every backend runs."""

    name: str
    script: str  # repo-relative, also the key under ALTLAKE_EMR_CODE_URI
    args: tuple[str, ...]


def extract_job(crawl: str, wat_paths: list[str], lake_dir: str) -> SparkJob:
    return SparkJob(f"extract-{crawl}", "spark_jobs/extract.py", ("--crawl", crawl, "--lake", lake_dir, "--wat", *wat_paths))


def quality_job(table: str, run_id: str, crawl: str, lake_dir: str) -> SparkJob:
    return SparkJob(
        f"quality-{table}-{crawl}",
        "spark_jobs/quality.py",
        ("--table", table, "--run-id", run_id, "--crawl", crawl, "--lake", lake_dir),
    )


def check_backend(settings: Settings) -> str:
    if settings.spark_backend not in BACKENDS:
        raise ValueError(f"unknown spark_backend {settings.spark_backend!r}: use one of {', '.join(BACKENDS)}")
    return settings.spark_backend


def run_extract_job(settings: Settings, crawl: str, wat_paths: list[str], context=None) -> dict:
    """Extract `wat_paths` into the lake on the configured backend; returns the job's summary."""
    if check_backend(settings) == "local":
        from spark_jobs.extract import run_extract

        return run_extract(settings, crawl, wat_paths)
    return run_remote(settings, extract_job(crawl, wat_paths, settings.lake_dir), context)


def run_quality_job(settings: Settings, table: str, run_id: str, crawl: str, context=None) -> dict:
    """Gate `crawl`'s rows of `table`; raises spark_jobs.quality.QualityGateError (local) or
    SparkJobError (remote) when an expectation fails."""
    if check_backend(settings) == "local":
        from spark_jobs.quality import validate_table  # imports GX: only where it runs

        report = validate_table(settings, table, run_id, crawl=crawl)
        report.raise_for_failures()
        return report.to_dict()
    return run_remote(settings, quality_job(table, run_id, crawl, settings.lake_dir), context)


def run_remote(settings: Settings, job: SparkJob, context=None) -> dict:
    """Run `job` with spark-submit (returns the JSON the job printed) or on EMR Serverless
    (returns the job run's id: the summary is in its logs and the lake), waiting for the end."""
    if settings.spark_backend == "submit":
        return run_spark_submit(settings, job)
    from plugins.emr import start_job_operator

    operator = start_job_operator(settings, job, task_id=f"emr_{job.name}")
    job_run_id = operator.execute(context)
    return {"backend": "emr_serverless", "application_id": settings.emr_application_id, "job_run_id": job_run_id}


def spark_submit_command(settings: Settings, job: SparkJob) -> list[str]:
    """The spark-submit command line: our session's whole configuration as --conf, then the job."""
    import pyspark

    from spark_jobs.session import spark_conf

    command = [str(Path(pyspark.__file__).parent / "bin" / "spark-submit"), "--master", settings.spark_master]
    for key, value in spark_conf(settings, f"altlake-{job.name}").items():
        if key != "spark.master":
            command += ["--conf", f"{key}={value}"]
    return [*command, str(REPO / job.script), *job.args]


def run_spark_submit(settings: Settings, job: SparkJob) -> dict:
    command = spark_submit_command(settings, job)
    log.info("spark-submit %s to %s", job.script, settings.spark_master)
    done = subprocess.run(
        command, env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, check=False
    )
    if done.stderr:
        log.info("spark-submit output:\n%s", done.stderr[-20_000:])
    if done.returncode == GATE_FAILED_EXIT:
        from spark_jobs.quality import QualityGateError

        raise QualityGateError(done.stderr[-4000:])
    if done.returncode != 0:
        raise SparkJobError(
            f"{job.script} exited with status {done.returncode} on {settings.spark_master}:\n"
            f"{(done.stderr or done.stdout)[-4000:]}"
        )
    result = json_output(done.stdout)
    if result is None:
        raise SparkJobError(f"{job.script} printed no JSON summary on stdout:\n{done.stdout[-4000:]}")
    return result


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ALTLAKE_* variables, so a job process sees exactly this task's settings."""
    return {f"ALTLAKE_{f.name.upper()}": str(getattr(settings, f.name)) for f in fields(settings)}


def json_output(stdout: str) -> dict | None:
    """The JSON document a job prints last on stdout (both our jobs print their summary there)."""
    lines = stdout.splitlines()
    for start in range(len(lines)):
        if lines[start].startswith("{"):
            try:
                return json.loads("\n".join(lines[start:]))
            except ValueError:
                continue
    return None
