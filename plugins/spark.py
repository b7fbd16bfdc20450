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

On `local` and `submit`, Spark's console output (log4j and the JVM's notes on stderr) reaches the
task log through a logger, each line at its own level (SparkOutput): Airflow shows raw stderr as errors.

Both jobs also run without Airflow (`altlake extract`, `python spark_jobs/quality.py`), so none of
this is needed to use them; it only decides where an Airflow task sends them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

from altlake.config import SPARK_BACKENDS, Settings
from plugins.emr import start_job_operator
from plugins.jobs import REPO, SparkJob, extract_job, quality_job
from spark_jobs.quality import GATE_FAILED_EXIT

log = logging.getLogger(__name__)
# Spark's own console output (log4j, the JVM, Python workers), relayed line by line: see SparkOutput.
output_log = logging.getLogger(f"{__name__}.output")

BACKENDS = SPARK_BACKENDS


class SparkJobError(RuntimeError):
    """The job ran and failed; the message carries its exit status and the end of its output."""


def check_backend(settings: Settings) -> str:
    if settings.spark_backend not in BACKENDS:
        raise ValueError(f"unknown spark_backend {settings.spark_backend!r}: use one of {', '.join(BACKENDS)}")
    return settings.spark_backend


def run_extract_job(settings: Settings, crawl: str, wat_paths: list[str], context=None) -> dict:
    """Extract `wat_paths` into the lake on the configured backend; returns the job's summary."""
    if check_backend(settings) == "local":
        from spark_jobs.extract import run_extract

        start_jvm(settings)
        return run_extract(settings, crawl, wat_paths)
    return run_remote(settings, extract_job(crawl, wat_paths, settings.lake_dir), context)


def run_quality_job(settings: Settings, table: str, run_id: str, crawl: str, context=None) -> dict:
    """Gate `crawl`'s rows of `table`; raises spark_jobs.quality.QualityGateError (local) or
    SparkJobError (remote) when an expectation fails."""
    if check_backend(settings) == "local":
        from spark_jobs.quality import validate_table  # imports GX: only where it runs

        start_jvm(settings)
        report = validate_table(settings, table, run_id, crawl=crawl)
        report.raise_for_failures()
        return report.to_dict()
    return run_remote(settings, quality_job(table, run_id, crawl, settings.lake_dir), context)


def run_remote(settings: Settings, job: SparkJob, context=None) -> dict:
    """Run `job` with spark-submit (returns the JSON the job printed) or on EMR Serverless
    (returns the job run's id: the summary is in its logs and the lake), waiting for the end."""
    if settings.spark_backend == "submit":
        return run_spark_submit(settings, job)
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
    """spark-submit `job`, its stderr relayed into the task log as it comes (see SparkOutput)."""
    command = spark_submit_command(settings, job)
    log.info("spark-submit %s to %s", job.script, settings.spark_master)
    output = SparkOutput()
    with subprocess.Popen(
        command, env={**os.environ, **settings_env(settings)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        relay = output.follow(process.stderr)
        stdout = process.stdout.read()
        returncode = process.wait()
        relay.join()
    if returncode == GATE_FAILED_EXIT:
        from spark_jobs.quality import QualityGateError

        raise QualityGateError(output.tail())
    if returncode != 0:
        raise SparkJobError(
            f"{job.script} exited with status {returncode} on {settings.spark_master}:\n{(output.tail() or stdout[-4000:])}"
        )
    result = json_output(stdout)
    if result is None:
        raise SparkJobError(f"{job.script} printed no JSON summary on stdout:\n{stdout[-4000:]}")
    return result


# Spark's console output, by kind of line. log4j2 with Spark's default pattern
# "%d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex":
_LOG4J = re.compile(r"^\d{2}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) ")
_PREFIXED = re.compile(r"^(WARNING|WARN|ERROR|INFO): ")  # the JVM's own notes ("WARNING: Using incubator modules")
_PY_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ")  # warnings.warn() in a job or a Python worker
_FAILED = re.compile(r"^(Traceback \(most recent call last\):|Exception in thread )")  # Python's or the JVM's uncaught error
_CONTINUED = re.compile(r"^(\s|Caused by: |Suppressed: |[\w$.]*(Exception|Error)\b)")  # a stack trace's further lines
LEVELS = {
    "TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
    "WARNING": logging.WARNING, "ERROR": logging.ERROR, "FATAL": logging.CRITICAL,
}  # fmt: skip


def line_level(line: str, previous: int = logging.INFO) -> int:
    """The level of one line of Spark's console output: the one log4j (or the JVM, or Python's
    warnings) gave it; a stack trace's lines keep the level of the record they belong to
    (`previous`, the level of the line before); anything else (spark-submit's notes) is INFO."""
    if match := _LOG4J.match(line) or _PREFIXED.match(line):
        return LEVELS[match.group(1)]
    if _PY_WARNING.match(line):
        return logging.WARNING
    if _FAILED.match(line):
        return logging.ERROR
    if _CONTINUED.match(line):
        return previous
    return logging.INFO


class SparkOutput:
    """Spark's console output into the task log, each line at the level Spark gave it.

    In an Airflow 3 task everything written to stderr is shown as an ERROR line, and Spark writes
    every log4j record (harmless WARNs included) to stderr: relayed through a logger instead, a
    WARN stays a warning and only Spark's real errors are red. The last lines are kept for the
    message of a failed job.
    """

    def __init__(self, logger: logging.Logger = output_log, keep_lines: int = 200) -> None:
        self.logger = logger
        self.level = logging.INFO
        self.last: deque[str] = deque(maxlen=keep_lines)

    def feed(self, lines: Iterable[str | bytes]) -> None:
        for raw in lines:
            line = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).rstrip()
            if line:
                self.last.append(line)
                self.level = line_level(line, self.level)
                self.logger.log(self.level, "%s", line)

    def follow(self, stream) -> threading.Thread:
        """Relay `stream` until it ends, in a thread: a process whose stderr pipe is not read blocks."""
        thread = threading.Thread(target=self.feed, args=(stream,), name="spark-output", daemon=True)
        thread.start()
        return thread

    def tail(self, chars: int = 4000) -> str:
        return "\n".join(self.last)[-chars:]


def start_jvm(settings: Settings) -> None:
    """Start this process's Spark JVM (the `local` backend's) with its stderr relayed by SparkOutput,
    before `get_spark` would start it writing to the task's stderr. The session's settings are
    passed as at any start (get_spark's session then uses this JVM). Nothing to do when a JVM runs
    already, or when this process is a driver that spark-submit started (its JVM is the parent)."""
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    from spark_jobs.session import spark_conf

    if SparkContext._gateway is not None or "PYSPARK_GATEWAY_PORT" in os.environ:
        return
    conf = SparkConf(loadDefaults=False).setAll(list(spark_conf(settings, "altlake").items()))
    gateway = launch_gateway(conf, popen_kwargs={"stderr": subprocess.PIPE})
    SparkOutput().follow(gateway.proc.stderr)
    SparkContext._ensure_initialized(gateway=gateway)


def task_spark(settings: Settings, app_name: str):
    """The Spark session a task in this process works with: its JVM started by start_jvm first, so
    Spark's console output reaches the task log at its own levels."""
    from spark_jobs.session import get_spark

    start_jvm(settings)
    return get_spark(settings, app_name)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ALTLAKE_* variables, so a job process sees exactly this task's settings (an
    unset optional value, such as a threshold left to the profiles, as empty: from_env skips it)."""
    return {f"ALTLAKE_{f.name.upper()}": "" if getattr(settings, f.name) is None else str(getattr(settings, f.name)) for f in fields(settings)}


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
