"""Lake maintenance: compact small files, keep data-skipping statistics, VACUUM, checkpoint the log.

Every per-batch MERGE and append leaves small files behind, and every reader pays for each file and
each JSON commit it opens. Per table, in this order:

1. OPTIMIZE (bin-packing compaction): small files of a partition become few large ones. Rows and
   the current snapshot's content do not change; the replaced files stay on storage for time travel.
   No ZORDER: the keys are random hashes (uid) that no query ranges over, and the lake's lookups by
   key are MERGE and takedown joins, which read every file in open-source Delta anyway; ZORDER
   would rewrite each table completely on every run (it is not incremental) for no pruning.
2. Statistics: Delta keeps per-file min/max/null counts in its log for data skipping, collected
   when a file is written (OPTIMIZE's new files included). Delta 4.0 has no `ANALYZE TABLE ...
   COMPUTE DELTA STATISTICS` (Databricks Runtime only: its parser rejects it) and Spark's
   `ANALYZE TABLE ... COMPUTE STATISTICS` refuses Delta (v2) tables, so this step counts the files
   whose statistics are missing (written with stats collection off, or by another tool) and
   recomputes them through Delta's StatisticsCollection.recompute, a JVM-only API.
3. VACUUM with Settings.history_retention_hours, after setting the tables' retention properties to
   it (spark_jobs.takedowns.set_history_retention, as the takedown purge does): only files
   unreferenced for longer than that are deleted. Settings keeps history_retention_hours >=
   takedown_grace_hours, so maintenance never deletes a taken-down row's file before the purge's
   grace period ends, and time travel (`build-release --rebuild`) reaches as far back as promised.
4. A checkpoint of the Delta log, so readers start from one parquet file instead of replaying the
   commits OPTIMIZE and VACUUM just added (Delta writes one every 10 commits on its own).

Each table's effect (files and bytes in the current snapshot before and after, files vacuumed,
seconds per step, any error) is one row of the `maintenance` table; a table that fails is recorded
with its error and the others are still maintained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: make our packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from altlake import storage
from altlake.config import Settings, exit_status
from altlake.schemas import MAINTENANCE, TABLES
from spark_jobs.lake import lake_paths, table_path, table_version
from spark_jobs.takedowns import checkpoint_table, set_history_retention


def check_tables(names: Iterable[str] | None) -> list[str]:
    """The tables to maintain (all of TABLES when none are named); ValueError names unknown ones."""
    wanted = list(dict.fromkeys(n.strip() for n in (names or []) if n and n.strip())) or list(TABLES)
    unknown = [n for n in wanted if n not in TABLES]
    if unknown:
        raise ValueError(f"no lake table {', '.join(map(repr, unknown))}: choose from {', '.join(TABLES)}")
    return wanted


def snapshot_size(spark, path: str) -> tuple[int, int]:
    """(data files, bytes) of the table's current snapshot, as DESCRIBE DETAIL reports them."""
    from delta.tables import DeltaTable

    detail = DeltaTable.forPath(spark, path).detail().first()
    return int(detail["numFiles"] or 0), int(detail["sizeInBytes"] or 0)


def _delta_log(spark, path: str):
    """Delta's JVM DeltaLog of a table, brought up to date (the Python API exposes no file list)."""
    jvm = spark._jvm
    log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
    log.update(False, jvm.scala.Option.empty(), jvm.scala.Option.empty())
    return log


def files_without_stats(spark, path: str) -> int:
    """Data files of the current snapshot whose log entry carries no row count and min/max statistics."""
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    files = DataFrame(_delta_log(spark, path).unsafeVolatileSnapshot().allFiles().toDF(), spark)
    return files.where(F.col("stats").isNull() | ~F.col("stats").contains('"numRecords"')).count()


def recompute_stats(spark, path: str) -> None:
    """Recompute every file's statistics in the log (one commit). Delta 4.0 offers this only as the
    internal StatisticsCollection.recompute; the defaults of its last two arguments (no partition
    predicate, every file) are Scala default arguments, fetched by their JVM names."""
    jvm = spark._jvm
    collection = jvm.org.apache.spark.sql.delta.stats.StatisticsCollection
    collection.recompute(
        spark._jsparkSession,
        _delta_log(spark, path),
        jvm.scala.Option.empty(),
        getattr(collection, "recompute$default$4")(),
        getattr(collection, "recompute$default$5")(),
    )


def vacuumed_files(spark, path: str, since_version: int) -> int | None:
    """Files the VACUUM after `since_version` deleted, from its `VACUUM END` commit (None when Delta
    did not log the VACUUM: spark.databricks.delta.vacuum.logging.enabled=false)."""
    from delta.tables import DeltaTable

    commits = DeltaTable.forPath(spark, path).history().where(f"version > {since_version} AND operation = 'VACUUM END'").collect()
    return sum(int((c["operationMetrics"] or {}).get("numDeletedFiles", 0)) for c in commits) if commits else None


def maintain_table(spark, settings: Settings, name: str, run_id: str) -> dict:
    """OPTIMIZE, statistics, VACUUM and checkpoint of one table; its `maintenance` row (with the
    error, when a step failed: the steps before it stay done)."""
    from delta.tables import DeltaTable

    path = table_path(settings, name)
    row: dict = dict.fromkeys(MAINTENANCE.column_names)
    row.update(run_id=run_id, table_name=name, started_at=datetime.now(timezone.utc), retention_hours=settings.history_retention_hours)
    try:
        row["version_before"] = table_version(spark, settings, name)
        row["files_before"], row["bytes_before"] = snapshot_size(spark, path)

        started = time.monotonic()
        metrics = DeltaTable.forPath(spark, path).optimize().executeCompaction().first()["metrics"]
        row["files_compacted"] = int(metrics["numFilesRemoved"])
        row["optimize_s"] = round(time.monotonic() - started, 3)

        started = time.monotonic()
        row["files_without_stats"] = files_without_stats(spark, path)
        if row["files_without_stats"]:
            recompute_stats(spark, path)
        row["stats_s"] = round(time.monotonic() - started, 3)

        started = time.monotonic()
        set_history_retention(spark, settings, [name])  # VACUUM's safety check compares RETAIN with these
        before_vacuum = table_version(spark, settings, name)
        spark.sql(f"VACUUM delta.`{path}` RETAIN {settings.history_retention_hours} HOURS").collect()
        row["vacuumed_files"] = vacuumed_files(spark, path, before_vacuum)
        row["vacuum_s"] = round(time.monotonic() - started, 3)

        started = time.monotonic()
        row["checkpointed"] = checkpoint_table(spark, settings, name)
        row["checkpoint_s"] = round(time.monotonic() - started, 3)

        row["version_after"] = table_version(spark, settings, name)
        row["files_after"], row["bytes_after"] = snapshot_size(spark, path)
    except Exception as error:  # noqa: BLE001 - recorded, and the other tables are still maintained
        row["error"] = (str(error).strip().splitlines() or [type(error).__name__])[0][:1000]
    row["finished_at"] = datetime.now(timezone.utc)
    return row


# A merge group's staging lives for minutes; one untouched for this long was left by a killed merge-scores.
STALE_SCRATCH_HOURS = 24


def sweep_merge_scratch(settings: Settings, now: datetime) -> list[str]:
    """Remove merge-scores staging folders untouched for STALE_SCRATCH_HOURS (a merge that was killed
    never reached its cleanup); returns their names. A running merge's folder is younger."""
    options = storage.S3Options.of(settings)
    scratch = lake_paths(settings).merge_scratch_dir
    stale = sorted(name for name, when in storage.last_modified(scratch, options).items() if (now - when).total_seconds() > STALE_SCRATCH_HOURS * 3600)
    for name in stale:
        storage.delete(storage.join(scratch, name), options)
    return stale

def maintain_lake(spark, settings: Settings, tables: Iterable[str] | None = None, now: datetime | None = None) -> dict:
    """Maintain `tables` (default: every lake table) and append one `maintenance` row per table.

    Safe to run at any time and again: a second run finds nothing to compact or vacuum and still
    records its rows. Run it where no other job writes the same tables (the Airflow `spark` pool),
    as OPTIMIZE conflicts with a concurrent DELETE or MERGE of the files it compacts."""
    names = check_tables(tables)
    started = now or datetime.now(timezone.utc)
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    rows = [maintain_table(spark, settings, name, run_id) for name in names]
    swept = sweep_merge_scratch(settings, started)
    frame = spark.createDataFrame([tuple(r[c] for c in MAINTENANCE.column_names) for r in rows], MAINTENANCE.spark_ddl())
    frame.write.format("delta").mode("append").save(table_path(settings, MAINTENANCE.name))

    def total(column: str) -> int:
        return sum(r[column] or 0 for r in rows)

    return {
        "run_id": run_id,
        "retention_hours": settings.history_retention_hours,
        "tables": {
            r["table_name"]: {k: r[k] for k in ("files_before", "files_after", "bytes_before", "bytes_after", "files_compacted",
                                                "files_without_stats", "vacuumed_files", "checkpointed", "optimize_s", "stats_s",
                                                "vacuum_s", "checkpoint_s", "error")}
            for r in rows
        },  # fmt: skip
        "files_before": total("files_before"),
        "files_after": total("files_after"),
        "bytes_before": total("bytes_before"),
        "bytes_after": total("bytes_after"),
        "vacuumed_files": total("vacuumed_files"),
        "seconds": round(sum((r["finished_at"] - r["started_at"]).total_seconds() for r in rows), 3),
        "errors": {r["table_name"]: r["error"] for r in rows if r["error"]},
        "stale_merge_scratch_removed": swept,
    }


# --- CLI ----------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", action="append", default=[], help=f"a table to maintain (repeatable; default: all of {', '.join(TABLES)})")
    parser.add_argument("--lake", help="lake root (default: ALTLAKE_LAKE_DIR)")
    parser.add_argument("--master", help="Spark master (default: ALTLAKE_SPARK_MASTER)")


def run(args: argparse.Namespace) -> int:
    """`altlake maintain`: the summary as JSON on stdout; exit status 1 when a table failed (all were tried)."""
    from spark_jobs.session import get_spark, require_lake

    settings = Settings.from_env(lake_dir=args.lake, spark_master=args.master)
    try:
        tables = check_tables(args.table)
    except ValueError as error:
        print(f"altlake maintain: {error}", file=sys.stderr)
        return 2
    require_lake(settings)
    summary = maintain_lake(get_spark(settings, "altlake-maintain"), settings, tables)
    print(json.dumps(summary, indent=2))
    for table, error in summary["errors"].items():
        print(f"altlake maintain: {table} failed: {error}", file=sys.stderr)
    return 1 if summary["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maintain", description="compact, vacuum and checkpoint the lake's Delta tables")
    configure(parser)
    return exit_status(parser.prog, lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
