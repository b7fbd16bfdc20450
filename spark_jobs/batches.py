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
    flags = _need_flags(spark, settings, all_candidates, limits, rescore_profile, in_flight_members).cache()
    counts = _plan_counts(flags, rescore_profile is not None)
    todo = flags.where("_eligible").select("uid", "attempts")
    ordered = _ordered(todo).cache()
    numbered = _numbered(ordered, batch_size)
    capped = numbered if max_batches is None else numbered.where(F.col("batch_no") < max_batches)
    # Every batch's input file in one Spark job: its executors write them, one group per batch.
    members = candidates.join(capped, "uid").select(*CANDIDATES.column_names, "attempts", "batch_no")
    written = members.groupBy("batch_no").applyInArrow(
        _batch_writer(lake, storage.S3Options.of(settings)), "batch_no bigint, batch_id string, n_rows bigint"
    )
    now = datetime.now(timezone.utc)
    rows = [
        (row["batch_id"], crawl, int(row["n_rows"]), lake.batch_input(row["batch_id"]), lake.batch_output(row["batch_id"]),
         BATCH_PLANNED, 0, None, now, now)
        for row in sorted(written.collect(), key=lambda row: row["batch_no"])
    ]  # fmt: skip
    _record_batches(spark, settings, rows)
    ordered.unpersist()
    flags.unpersist()
    planned_rows = sum(r[2] for r in rows)
    return {
        **counts,
        "withdrawn_from_planned": withdrawn["uids"],
        "planned_rows": planned_rows,
        "left_for_later": counts["eligible"] - planned_rows,
        "batches": [{"batch_id": r[0], "n_rows": r[2], "input_path": r[3], "output_path": r[4]} for r in rows],
    }


def _need_flags(spark, settings: Settings, all_candidates, limits: dict[str, int], rescore_profile: str | None, in_flight_members):
    """One row per candidate: uid, attempts so far, and flags for why it is (not) planned, so that
    every count and the batches come from one read of candidates and scores."""
    from pyspark.sql import functions as F

    scores = read_table(spark, settings, "scores").select("uid", "status", "attempts", "profile", F.lit(True).alias("_scored"))
    flags = all_candidates.select("uid", F.col("opt_out").isNotNull().alias("_opted_out")).join(scores, "uid", "left")
    if in_flight_members is not None:
        in_flight = in_flight_members.select("uid").distinct().withColumn("_in_flight", F.lit(True))
        flags = flags.join(in_flight, "uid", "left")
    else:
        flags = flags.withColumn("_in_flight", F.lit(None).cast("boolean"))
    retry_allowed = F.lit(False)
    for status, limit in limits.items():
        retry_allowed = retry_allowed | ((F.col("status") == status) & (F.col("attempts") < limit))
    rescore = F.lit(False)
    if rescore_profile is not None:  # rows scored ok under another profile, only when rescoring
        rescore = (F.col("status") == "ok") & ~F.col("profile").eqNullSafe(rescore_profile)
    scored = F.coalesce(F.col("_scored"), F.lit(False))
    opted_out, in_flight_uid = F.col("_opted_out"), F.coalesce(F.col("_in_flight"), F.lit(False))
    retryable = scored & F.coalesce(retry_allowed, F.lit(False))
    rescored = scored & F.coalesce(rescore, F.lit(False))
    return flags.select(
        "uid",
        F.coalesce(F.col("attempts"), F.lit(0)).alias("attempts"),
        F.col("status"),
        opted_out,
        scored.alias("_scored"),
        (~opted_out & retryable).alias("_retryable"),
        (~opted_out & rescored).alias("_rescore"),
        (~opted_out & in_flight_uid).alias("_already_planned"),
        (~opted_out & ~in_flight_uid & (~scored | retryable | rescored)).alias("_eligible"),
    )


def _plan_counts(flags, rescoring: bool) -> dict[str, int]:
    """What planning found, in one Spark job over the flags."""
    from pyspark.sql import functions as F

    n = lambda condition: F.count(F.when(condition, 1))  # noqa: E731
    live = ~F.col("_opted_out")
    row = flags.agg(
        F.count(F.lit(1)).alias("candidates"),
        n(F.col("_opted_out")).alias("opted_out"),
        n(live & ~F.col("_scored")).alias("unscored"),
        n(F.col("_retryable")).alias("retryable"),
        n(F.col("_rescore")).alias("rescore"),
        n(live & F.col("_scored") & (F.col("status") != "ok")).alias("scored_not_ok"),
        n(F.col("_already_planned")).alias("already_planned"),
        n(F.col("_eligible")).alias("eligible"),
    ).first()
    return {
        "candidates": row["candidates"],
        "opted_out": row["opted_out"],  # skipped, never downloaded
        "unscored": row["unscored"],
        "retryable": row["retryable"],
        "rescore": row["rescore"] if rescoring else 0,
        "not_retried": row["scored_not_ok"] - row["retryable"],
        "already_planned": row["already_planned"],
        "eligible": row["eligible"],
    }


# monotonically_increasing_id: the partition in the upper 31 bits, the row within it in the lower 33.
_ROW_IN_PARTITION = (1 << 33) - 1


def _ordered(todo):
    """(uid, attempts) sorted by uid, with each row's partition and its id in it (cache it: the
    positions are only stable for one materialisation)."""
    from pyspark.sql import functions as F

    return todo.orderBy("uid").select(
        "uid", "attempts", F.spark_partition_id().alias("_part"), F.monotonically_increasing_id().alias("_id")
    )


def _numbered(ordered, batch_size: int):
    """(uid, attempts, batch_no): the sorted uids cut into batches of batch_size. A row's position is
    its partition's offset plus its place in the partition, so no row passes through Python or
    through one partition."""
    from pyspark.sql import functions as F

    sizes = sorted((r["_part"], r["count"]) for r in ordered.groupBy("_part").count().collect())
    offsets, start = [], 0
    for part, size in sizes:
        offsets += [F.lit(part), F.lit(start).cast("bigint")]
        start += size
    if not offsets:
        return ordered.select("uid", "attempts", F.lit(0).cast("bigint").alias("batch_no"))
    position = F.element_at(F.create_map(*offsets), F.col("_part")) + F.col("_id").bitwiseAND(F.lit(_ROW_IN_PARTITION))
    return ordered.select("uid", "attempts", F.floor(position / batch_size).cast("bigint").alias("batch_no"))


def _batch_writer(lake, options: storage.S3Options):
    """The function that writes one batch's input file (Arrow in, its id and size out), run on the
    executors. The id hashes the sorted (uid, attempts) list: the same uids and attempts always make
    the same id."""
    import hashlib

    import pyarrow as pa

    schema = CANDIDATES.to_arrow()

    def write(table: pa.Table) -> pa.Table:
        table = table.sort_by("uid")
        keys = sorted(f"{uid}:{attempts}" for uid, attempts in zip(table.column("uid").to_pylist(), table.column("attempts").to_pylist()))
        batch_id = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:BATCH_ID_CHARS]
        storage.write_bytes(lake.batch_input(batch_id), parquet_bytes(table.select(schema.names).cast(schema)), options)
        return pa.table({"batch_no": [table.column("batch_no")[0].as_py()], "batch_id": [batch_id], "n_rows": [table.num_rows]})

    return write


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
    planned = read_table(spark, settings, "batches").where(f"status = '{BATCH_PLANNED}'").select("input_path")
    paths = [r["input_path"] for r in planned.collect()]
    return read_batch_inputs(spark, paths) if paths else None


def read_batch_inputs(spark, paths: list[str]):
    """(uid, batch_id) of the given batch input files, in one scan: the batch is the input's folder."""
    from pyspark.sql import functions as F

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
