"""One of the Spark jobs of test_dynamodb_log_store: it commits to a Delta table on the s3a lake while
another process commits to the same table. Settings (lake, endpoints, log table) come from ALTLAKE_*.

Usage: log_store_writer.py TABLE_URL WRITER WRITERS COMMITS ROWS BARRIER_DIR
Writer 0 creates the table; every writer then waits at the barrier so the commits overlap.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession

from altlake.config import Settings
from spark_jobs.session import spark_conf

SCHEMA = "writer INT, commit INT, row INT"


def main(table: str, writer: int, writers: int, commits: int, rows: int, barrier: Path) -> None:
    settings = Settings.from_env(spark_master="local[1]", spark_shuffle_partitions=1)
    builder = SparkSession.builder
    for key, value in spark_conf(settings, f"log-store-writer-{writer}").items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # Warm up (a first commit loads classes and clients for seconds) so that the commits below overlap.
    spark.range(1).write.format("delta").save(f"{table}-warmup-{writer}")
    if writer == 0:
        spark.createDataFrame([], SCHEMA).write.format("delta").save(table)
        (barrier / "created").touch()
    # A local marker, not DeltaTable.isDeltaTable: a table Delta once found missing stays missing in its cache.
    _wait((barrier / "created").exists)
    spark.read.format("delta").load(table).count()
    (barrier / f"ready-{writer}").touch()
    _wait(lambda: len(list(barrier.glob("ready-*"))) == writers)
    for commit in range(commits):
        rows_of_commit = [(writer, commit, row) for row in range(rows)]
        frame = spark.createDataFrame(rows_of_commit, SCHEMA)
        frame.write.format("delta").mode("append").option("userMetadata", f"writer-{writer}").save(table)
    print(f"WRITER {writer} DONE {commits}")
    spark.stop()


def _wait(ready, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError("the other writers never became ready")
        time.sleep(0.05)


if __name__ == "__main__":
    table_url, writer_id, writer_count, commit_count, row_count, barrier_dir = sys.argv[1:]
    main(table_url, int(writer_id), int(writer_count), int(commit_count), int(row_count), Path(barrier_dir))
