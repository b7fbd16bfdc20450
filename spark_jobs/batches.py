"""Batch planning: turn unscored candidates into scoring batches (`batches` table + input parquet).

A candidate is planned when it has no score yet, or when its last score is a retryable failure
(altlake.schemas.RETRYABLE_STATUSES) with fewer attempts than that class allows
(Settings.retry_limits). Permanent failures are never re-queued, and uids already in a batch that
is planned but not merged are left alone, so two planners never hand one uid out twice. Opted-out
candidates (`candidates.opt_out`, e.g. a page's meta robots noai) are never planned, not even for
a retry: they are never downloaded, so they get no score, which a release needs (its inner join).

A deployment that moves to another model profile rescores: `rescore_profile` also plans the rows
scored ok under any other profile (or before profiles were recorded), so that one release can again
hold rows of one CLIP; the merge replaces their scores (the newer score wins).

A batch id is a hash of its sorted (uid, attempts) list: re-planning after a crash produces the
same ids and the same files, and a retry of the same uids (attempts moved on) gets a new id, so
the worker never mistakes it for the finished earlier batch.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: make our packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from altlake import storage
from altlake.config import Settings, exit_status, parse_retry_limits
from altlake.names import check_crawl_id
from altlake.paths import BATCH_INPUT_FILE
from altlake.schemas import BATCH_FAILED, BATCH_PLANNED, BATCHES, CANDIDATES
from spark_jobs.lake import lake_paths, read_table, table_path

BATCH_ID_CHARS = 20


# --- lake files (local or s3a://), written atomically -------------------------------------------------


def write_lake_bytes(settings: Settings, url: str, data: bytes) -> None:
    """Write a whole file or nothing (altlake.storage: temp + rename locally, one PUT on S3)."""
    storage.write_bytes(url, data, storage.S3Options.of(settings))


def read_lake_bytes(settings: Settings, url: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return storage.read_bytes(url, storage.S3Options.of(settings))
    except (FileNotFoundError, IsADirectoryError):
        return None


def list_lake_files(settings: Settings, url: str) -> list[str]:
    """Names of the files directly under a lake directory (sorted; empty when it is missing)."""
    return storage.list_files(url, storage.S3Options.of(settings))


def parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


# --- planning ------------------------------------------------------------------------------------------


def plan_batches(
    spark,
    settings: Settings,
    crawl: str | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    rescore_profile: str | None = None,
) -> dict:
    """Plan batches of candidates that need (another) score; returns what was planned and skipped.
    With `rescore_profile`, rows scored ok under another profile need one too."""
    from pyspark.sql import functions as F

    batch_size = batch_size or settings.batch_size
    if batch_size < 1 or (max_batches is not None and max_batches < 1):
        raise ValueError("batch_size and max_batches must be at least 1")
    limits = parse_retry_limits(settings.retry_limits)
    lake = lake_paths(settings)
    in_flight_members = _planned_members(spark, settings)  # read once: withdrawn from, and never planned again
    withdrawn = _withdraw(spark, settings, in_flight_members)  # pages that opted out since earlier batches were planned

    all_candidates = read_table(spark, settings, "candidates")
    if crawl:
        all_candidates = all_candidates.where(F.col("first_seen_crawl") == crawl)
    # An opted-out candidate (its page said noai at extraction) is never downloaded: never planned.
    candidates = all_candidates.where(F.col("opt_out").isNull())
    scores = read_table(spark, settings, "scores").select("uid", "status", "attempts", "profile")
    retry_allowed = F.lit(False)
    for status, limit in limits.items():
        retry_allowed = retry_allowed | ((F.col("status") == status) & (F.col("attempts") < limit))
    scored = candidates.select("uid").join(scores, "uid")
    retryable = scored.where(retry_allowed).select("uid", "attempts")
    todo = candidates.join(scores, "uid", "left_anti").withColumn("attempts", F.lit(0)).unionByName(
        candidates.join(retryable, "uid")
    )
    rescore = None  # rows scored ok under another profile, only when rescoring (no Spark job otherwise)
    if rescore_profile is not None:
        rescore = scored.where((F.col("status") == "ok") & ~F.col("profile").eqNullSafe(rescore_profile)).select("uid", "attempts")
        todo = todo.unionByName(candidates.join(rescore, "uid"))
    in_flight = in_flight_members.select("uid").distinct() if in_flight_members is not None else spark.createDataFrame([], "uid string")
    todo = todo.join(in_flight, "uid", "left_anti").cache()
    counts = {
        "candidates": all_candidates.count(),
        "opted_out": all_candidates.where(F.col("opt_out").isNotNull()).count(),  # skipped, never downloaded
        "unscored": candidates.join(scores, "uid", "left_anti").count(),
        "retryable": retryable.count(),
        "rescore": rescore.count() if rescore is not None else 0,
        "not_retried": scored.where(F.col("status") != "ok").count() - retryable.count(),
        "already_planned": candidates.join(in_flight, "uid").count(),
        "eligible": todo.count(),
    }

    numbered = (
        todo.orderBy("uid")
        .rdd.zipWithIndex()
        .map(lambda pair: (pair[0]["uid"], pair[0]["attempts"], pair[1] // batch_size))
        .toDF("uid string, attempts int, batch_no bigint")
        .cache()
    )
    capped = numbered if max_batches is None else numbered.where(F.col("batch_no") < max_batches)
    ids = (
        capped.groupBy("batch_no")
        .agg(
            F.sha2(F.concat_ws("\n", F.sort_array(F.collect_list(F.concat_ws(":", "uid", "attempts")))), 256).alias("h"),
            F.count("*").alias("n_rows"),
        )
        .orderBy("batch_no")
        .collect()
    )
    now = datetime.now(timezone.utc)
    rows = []
    # One join for every batch, cached: each batch's file is then a scan of memory, not another read
    # of `candidates` and a shuffle join (that made planning grow with rows x batches).
    members = candidates.join(capped.select("uid", "batch_no"), "uid").select(*CANDIDATES.column_names, "batch_no").cache()
    for row in ids:
        batch_id = row["h"][:BATCH_ID_CHARS]
        batch = members.where(F.col("batch_no") == row["batch_no"]).select(*CANDIDATES.column_names).orderBy("uid").toArrow()
        write_lake_bytes(settings, lake.batch_input(batch_id), parquet_bytes(batch.cast(CANDIDATES.to_arrow())))
        rows.append(
            (batch_id, crawl, int(row["n_rows"]), lake.batch_input(batch_id), lake.batch_output(batch_id),
             BATCH_PLANNED, 0, None, now, now)
        )  # fmt: skip
    _record_batches(spark, settings, rows)
    members.unpersist()
    numbered.unpersist()
    todo.unpersist()
    planned_rows = sum(r[2] for r in rows)
    return {
        **counts,
        "withdrawn_from_planned": withdrawn["uids"],
        "planned_rows": planned_rows,
        "left_for_later": counts["eligible"] - planned_rows,
        "batches": [{"batch_id": r[0], "n_rows": r[2], "input_path": r[3], "output_path": r[4]} for r in rows],
    }


def withdraw_opted_out(spark, settings: Settings) -> dict:
    """Tell the worker about uids of planned batches whose page opted out after planning (a later
    crawl saw the page say noai): each such batch gets `withdrawn.parquet` beside its input, listing
    all of its opted-out uids, so the worker records them opted_out and never downloads them.

    Idempotent and cheap when nothing changed; the planner calls it before planning, the extraction
    after an update marked known pairs opted out. A worker that already started reads the file at
    its next run of the batch; the release excludes opted-out pairs whatever the worker did.
    """
    return _withdraw(spark, settings, _planned_members(spark, settings))


def _withdraw(spark, settings: Settings, members) -> dict:
    """withdraw_opted_out for the planned batches' (uid, batch_id) rows (None: no planned batch)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    if members is None:
        return {"batches": 0, "uids": 0}
    opted = read_table(spark, settings, "candidates").where(F.col("opt_out").isNotNull()).select("uid", "opt_out")
    withdrawn: dict[str, list[tuple[str, str]]] = {}
    for row in members.join(opted, "uid").collect():
        withdrawn.setdefault(row["batch_id"], []).append((row["uid"], row["opt_out"]))
    lake = lake_paths(settings)
    for batch_id, rows in withdrawn.items():
        rows.sort()
        table = pa.table({"uid": [u for u, _ in rows], "opt_out": [o for _, o in rows]})
        data = parquet_bytes(table)
        if read_lake_bytes(settings, lake.batch_withdrawn(batch_id)) != data:
            write_lake_bytes(settings, lake.batch_withdrawn(batch_id), data)
    return {"batches": len(withdrawn), "uids": sum(len(rows) for rows in withdrawn.values())}


def _planned_members(spark, settings: Settings):
    """(uid, batch_id) handed to batches that are planned but not merged yet, read from their inputs;
    None when no batch is planned."""
    from pyspark.sql import functions as F

    planned = read_table(spark, settings, "batches").where(f"status = '{BATCH_PLANNED}'").select("input_path")
    paths = [r["input_path"] for r in planned.collect()]
    if not paths:
        return None
    batch_of_file = F.regexp_extract(F.input_file_name(), rf"([^/]+)/{re.escape(BATCH_INPUT_FILE)}$", 1)
    return spark.read.parquet(*paths).select("uid", batch_of_file.alias("batch_id"))


def _record_batches(spark, settings: Settings, rows: list[tuple]) -> None:
    """Insert new batches; a failed batch planned again with the same uids goes back to planned."""
    from delta.tables import DeltaTable

    if not rows:
        return
    # The planner fills the planning columns; the worker's throughput record comes at merge.
    width = len(BATCHES.columns)
    source = spark.createDataFrame([(*row, *[None] * (width - len(row))) for row in rows], BATCHES.spark_ddl())
    (
        DeltaTable.forPath(spark, table_path(settings, "batches"))
        .alias("t")
        .merge(source.alias("s"), "t.batch_id = s.batch_id")
        .whenMatchedUpdate(
            condition=f"t.status = '{BATCH_FAILED}'",
            set={"status": "s.status", "error": "CAST(NULL AS STRING)", "updated_at": "s.updated_at"},
        )
        .whenNotMatchedInsertAll()
        .execute()
    )


# --- CLI ------------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crawl", help="plan only candidates first seen in this crawl")
    parser.add_argument("--batch-size", type=int, help="uids per batch (default: ALTLAKE_BATCH_SIZE)")
    parser.add_argument("--max-batches", type=int, help="plan at most this many batches")
    parser.add_argument("--rescore-for", metavar="PROFILE", help="also plan rows scored ok under any other model profile (after moving to PROFILE)")
    parser.add_argument("--lake", help="lake root (default: ALTLAKE_LAKE_DIR)")
    parser.add_argument("--master", help="Spark master (default: ALTLAKE_SPARK_MASTER)")


def run(args: argparse.Namespace) -> int:
    from spark_jobs.session import get_spark

    if args.crawl:  # empty: every crawl, as plan_batches reads it
        try:
            check_crawl_id(args.crawl)
        except ValueError as exc:
            print(f"altlake plan-batches: {exc}", file=sys.stderr)
            return 2
    settings = Settings.from_env(lake_dir=args.lake, spark_master=args.master)
    spark = get_spark(settings, "altlake-plan-batches")
    summary = plan_batches(spark, settings, args.crawl, args.batch_size, args.max_batches, args.rescore_for)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batches", description="plan scoring batches")
    configure(parser)
    return exit_status(parser.prog, lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
