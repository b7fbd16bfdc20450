"""What every Spark backend runs: one of our job scripts with its arguments.

Apart from plugins/spark.py, which runs jobs (on EMR Serverless through plugins/emr.py), so that
plugins/emr.py, which builds EMR's request for a job, does not import plugins/spark.py back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
