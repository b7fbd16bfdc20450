"""What the maintain_lake DAG's task does, as a plain function (the DAG file only wires it).

The job runs on the configured Spark backend like extraction: in the task's process (`local`), by
spark-submit of spark_jobs/maintain.py, or on EMR Serverless. A table that failed is recorded in
`maintenance` with its error and the task fails after every table was tried, so Airflow retries it.
"""

from __future__ import annotations

import logging

from airflow.sdk.exceptions import AirflowFailException

from altlake.config import Settings
from plugins.jobs import SparkJob
from plugins.spark import check_backend, run_remote, task_spark

log = logging.getLogger(__name__)


def maintain_job(tables: list[str], lake_dir: str) -> SparkJob:
    """spark_jobs/maintain.py for `tables` (all of them when empty), for the remote backends."""
    return SparkJob("maintain", "spark_jobs/maintain.py", ("--lake", lake_dir, *(a for t in tables for a in ("--table", t))))


def maintain(settings: Settings, tables: list[str] | None = None, context=None) -> dict:
    """Compact, vacuum and checkpoint `tables` (default: every lake table); returns the job's summary."""
    from spark_jobs.maintain import check_tables, maintain_lake

    try:
        names = check_tables(tables)
    except ValueError as error:  # a form naming no lake table: retrying cannot help
        raise AirflowFailException(str(error)) from error
    if check_backend(settings) == "local":
        result = maintain_lake(task_spark(settings, "altlake-maintain"), settings, names)
    else:
        result = run_remote(settings, maintain_job(names, settings.lake_dir), context)
    log.info("%s", summary_line(result))
    if result.get("errors"):
        raise RuntimeError(f"maintenance failed for {', '.join(sorted(result['errors']))}: {result['errors']}")
    return result


def summary_line(result: dict) -> str:
    """The task's last log line: files and bytes before and after, files vacuumed, time taken."""
    if "tables" not in result:  # EMR Serverless: the summary is in the job's logs and the `maintenance` table
        return f"Summary: lake maintenance submitted to EMR Serverless as job run {result.get('job_run_id')}: see the `maintenance` table"
    mib = 1024 * 1024
    line = (
        f"Summary: lake maintenance {result['run_id']} of {len(result['tables'])} table(s): "
        f"{result['files_before']} -> {result['files_after']} data files, "
        f"{result['bytes_before'] / mib:.1f} -> {result['bytes_after'] / mib:.1f} MiB; "
        f"VACUUM (retention {result['retention_hours']} h) deleted {result['vacuumed_files']} file(s); {result['seconds']:.0f} s"
    )
    if result["errors"]:
        line += f"; FAILED: {', '.join(sorted(result['errors']))}"
    return line
