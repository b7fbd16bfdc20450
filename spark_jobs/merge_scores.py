"""Score merge: a finished worker output directory -> the `scores` table, and its batch -> done.

The worker's files are read on the driver (a batch is bounded by the batch size): results.parquet
gives one row per uid, and the clip-retrieval embedding files (img_emb_N.npy / text_emb_N.npy,
row i = row i of metadata_N.parquet) are joined in by uid as float16 little-endian bytes.

MERGE on uid, newer `scored_at` wins: merging the same output twice, a batch delivered twice, or
an older attempt arriving after a newer one changes nothing. `attempts` counts download attempts
across runs (+1 each time a newer result replaces an older one). A directory without the worker's
_SUCCESS marker is not merged (reported incomplete); an unreadable one marks its batch failed.
Images on a hash takedown list are recorded as `opted_out` without scores or embeddings.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script by spark-submit: make our packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from altlake.config import Settings, exit_status
from altlake.paths import RESULTS_FILE, SUCCESS_FILE, embedding_shard, embedding_shard_number, join
from altlake.schemas import BATCH_DONE, BATCH_FAILED, BATCH_PLANNED, BATCHES, SCORES, STATUS_OK, STATUS_OPTED_OUT, WORKER_RESULTS
from altlake.stats import StageStats, chain
from spark_jobs.batches import list_lake_files, read_lake_bytes
from spark_jobs.lake import commit_metrics, read_table, table_path, table_version
from spark_jobs.takedowns import HASH_COLUMNS, match_takedowns


# Columns a takedown clears: nothing derived from the image stays in the lake.
_IMAGE_DERIVED = ("similarity", "punsafe", "pwatermark", "aesthetic", "img_emb", "text_emb")


class IncompleteBatch(RuntimeError):
    """The output directory has no _SUCCESS marker: the worker has not finished it."""


def read_batch_output(settings: Settings, output_dir: str):
    """The batch's rows in the SCORES schema (pyarrow), embeddings joined in by uid.

    Raises IncompleteBatch without _SUCCESS, ValueError when the files disagree with each other.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if read_lake_bytes(settings, join(output_dir, SUCCESS_FILE)) is None:
        raise IncompleteBatch(f"{output_dir} has no {SUCCESS_FILE} marker: the worker has not finished it")
    data = read_lake_bytes(settings, join(output_dir, RESULTS_FILE))
    if data is None:
        raise ValueError(f"{output_dir} has {SUCCESS_FILE} but no {RESULTS_FILE}")
    results = pq.read_table(io.BytesIO(data))
    missing = [f for f in WORKER_RESULTS.to_arrow() if f.name not in results.column_names]
    required = sorted(f.name for f in missing if not f.nullable)
    if required:
        raise ValueError(f"{RESULTS_FILE} lacks columns {required}")
    for f in missing:  # written by a worker from before the column was declared (aesthetic, ...): no value
        results = results.append_column(f, pa.nulls(results.num_rows, f.type))
    results = results.select(WORKER_RESULTS.column_names).cast(WORKER_RESULTS.to_arrow())
    uids = results.column("uid").to_pylist()
    if len(set(uids)) != len(uids):
        raise ValueError(f"{RESULTS_FILE} repeats uids: {len(uids) - len(set(uids))} duplicates")
    img, text = _embeddings_by_uid(settings, output_dir)
    ok = [s == STATUS_OK for s in results.column("status").to_pylist()]
    without = [u for u, is_ok in zip(uids, ok) if is_ok and u not in img]
    if without:
        raise ValueError(f"{len(without)} ok rows have no embedding, e.g. uid {without[0]}")
    return results.append_column(pa.field("attempts", pa.int32(), False), pa.array([1] * len(uids), pa.int32())) \
        .append_column("img_emb", pa.array([img.get(u) if o else None for u, o in zip(uids, ok)], pa.binary())) \
        .append_column("text_emb", pa.array([text.get(u) if o else None for u, o in zip(uids, ok)], pa.binary())) \
        .select(SCORES.column_names).cast(SCORES.to_arrow())  # fmt: skip


def _embeddings_by_uid(settings: Settings, output_dir: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """uid -> float16 little-endian bytes, from every aligned (metadata_N, img_emb_N, text_emb_N)."""
    import pyarrow.parquet as pq

    img, text = {}, {}
    for name in list_lake_files(settings, join(output_dir, "metadata")):
        n = embedding_shard_number("metadata", name)
        if n is None:
            continue
        meta = pq.read_table(io.BytesIO(read_lake_bytes(settings, join(output_dir, embedding_shard("metadata", n)))), columns=["uid"])
        shard_uids = meta.column("uid").to_pylist()
        for target, kind in ((img, "img_emb"), (text, "text_emb")):
            data = read_lake_bytes(settings, join(output_dir, embedding_shard(kind, n)))
            if data is None:
                raise ValueError(f"{embedding_shard(kind, n)} is missing beside {embedding_shard('metadata', n)}")
            vectors = np.load(io.BytesIO(data), allow_pickle=False)
            if vectors.ndim != 2 or vectors.shape[0] != len(shard_uids):
                raise ValueError(f"{kind}_{n}.npy has shape {vectors.shape}, metadata_{n} has {len(shard_uids)} rows")
            little = vectors.astype("<f2", copy=False)
            target.update((uid, little[i].tobytes()) for i, uid in enumerate(shard_uids))
    return img, text


def merge_batch(spark, settings: Settings, batch_id: str, output_dir: str | None = None) -> dict:
    """Merge one batch's worker output into `scores` and mark the batch done (idempotent).

    Returns {"batch_id", "status": merged | incomplete | failed, counts...}; a failed read marks the
    batch failed with the reason, so the planner hands its uids out again.
    """
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    output_dir = output_dir or _batch_row(spark, settings, batch_id)["output_path"]
    try:
        rows = read_batch_output(settings, output_dir)
    except IncompleteBatch as error:
        return {"batch_id": batch_id, "status": "incomplete", "error": str(error)}
    except (ValueError, OSError) as error:
        mark_batch_failed(spark, settings, batch_id, f"unreadable worker output: {error}")
        return {"batch_id": batch_id, "status": "failed", "error": str(error)}

    source = spark.createDataFrame(rows).select(*SCORES.column_names)
    n_results = len(rows)
    input_uids = _input_uids(spark, settings, batch_id)
    if input_uids is not None:
        source = source.join(input_uids, "uid", "left_semi")
    hashes = read_table(spark, settings, "takedowns").where(F.col("kind").isin(*HASH_COLUMNS))
    source = _opt_out_listed_hashes(source, hashes).cache()
    n_rows = source.count()
    statuses = {r["status"]: r["count"] for r in source.groupBy("status").count().collect()}
    columns = [c for c in SCORES.column_names if c != "attempts"]
    before = table_version(spark, settings, "scores")
    (
        DeltaTable.forPath(spark, table_path(settings, "scores"))
        .alias("t")
        .merge(source.alias("s"), "t.uid = s.uid")
        .whenMatchedUpdate(
            condition="s.scored_at > t.scored_at",
            set={**{c: f"s.`{c}`" for c in columns}, "attempts": "t.attempts + 1"},
        )
        .whenNotMatchedInsert(values={**{c: f"s.`{c}`" for c in columns}, "attempts": "1"})
        .execute()
    )
    metrics = commit_metrics(spark, settings, "scores", before)
    source.unpersist()
    _finish_batch(spark, settings, batch_id, BATCH_DONE, None, worker_record(settings, output_dir))
    inserted, updated = metrics.get("numTargetRowsInserted", 0), metrics.get("numTargetRowsUpdated", 0)
    results = StageStats("results", n_results, {"not_planned_in_this_batch": n_results - n_rows})
    merged = StageStats("merge", n_rows, {"not_newer_than_scores": n_rows - inserted - updated})
    return {
        "batch_id": batch_id,
        "status": "merged",
        "rows": n_rows,
        "missing_from_results": (input_uids.count() - n_rows) if input_uids is not None else 0,
        "inserted": inserted,
        "updated": updated,
        "unchanged": n_rows - inserted - updated,
        "statuses": dict(sorted(statuses.items())),
        "stages": chain([results, merged]),
    }


def _opt_out_listed_hashes(source, hashes):
    """Rows whose image is on a takedown list (sha256, md5, or within a pdq request's distance) become `opted_out`, scores cleared."""
    from pyspark.sql import functions as F

    hit = match_takedowns(source, hashes, HASH_COLUMNS).groupBy("uid").agg(F.min("kind").alias("_listed"))
    marked = source.join(hit, "uid", "left")
    listed_row = F.col("_listed").isNotNull()
    replaced = {
        "status": F.when(listed_row, F.lit(STATUS_OPTED_OUT)).otherwise(F.col("status")),
        # "<why>: <detail>", as the worker writes opt-outs, so SQL can count them by the first word
        "error": F.when(listed_row, F.concat(F.lit("takedown: the image's "), F.col("_listed"), F.lit(" is on a takedown list"))).otherwise(F.col("error")),
        **{c: F.when(listed_row, F.lit(None)).otherwise(F.col(c)) for c in _IMAGE_DERIVED},
    }
    return marked.select(*[replaced[c].alias(c) if c in replaced else F.col(c) for c in SCORES.column_names])


def _input_uids(spark, settings: Settings, batch_id: str):
    """The batch's planned uids (None when the batch was not planned here, e.g. a hand-run worker)."""
    row = _batch_row(spark, settings, batch_id, required=False)
    if row is None or read_lake_bytes(settings, row["input_path"]) is None:
        return None
    return spark.read.parquet(row["input_path"]).select("uid").distinct().cache()


def _batch_row(spark, settings: Settings, batch_id: str, required: bool = True):
    rows = read_table(spark, settings, "batches").where(f"batch_id = '{batch_id}'").collect()
    if not rows and required:
        raise ValueError(f"batch {batch_id!r} is not in the batches table; pass its output dir explicitly")
    return rows[0] if rows else None


# The batches columns a worker's _SUCCESS fills (its summary's key of the same name), typed as BATCHES declares them.
_WORKER_RECORD_COLUMNS = ("host", "started_at", "finished_at", "wall_s", "images_per_s", "rows_per_s", "bytes_downloaded", "rows_ok")
WORKER_RECORD = {c.name: c.type for c in BATCHES.columns if c.name in _WORKER_RECORD_COLUMNS}


def worker_record(settings: Settings, output_dir: str) -> dict:
    """The worker's throughput record from its _SUCCESS, as batches columns (None where an older
    worker did not write a value)."""
    summary = json.loads(read_lake_bytes(settings, join(output_dir, SUCCESS_FILE)) or b"{}")
    record = {name: summary.get(name) for name in WORKER_RECORD}
    record["rows_ok"] = summary["statuses"].get(STATUS_OK, 0) if "statuses" in summary else None
    for name, kind in WORKER_RECORD.items():
        if record[name] is not None and kind == "timestamp":
            record[name] = datetime.fromisoformat(record[name])
        elif record[name] is not None and kind == "double":
            record[name] = float(record[name])
    return record


def _finish_batch(spark, settings: Settings, batch_id: str, status: str, error: str | None, record: dict | None = None) -> None:
    """done: once (a re-merge leaves the row alone), with the worker's throughput record; failed:
    with the reason. Both count an attempt."""
    from delta.tables import DeltaTable

    record = record or dict.fromkeys(WORKER_RECORD)
    source = spark.createDataFrame(
        [(batch_id, status, error, datetime.now(timezone.utc), *[record[name] for name in WORKER_RECORD])],
        "batch_id string, status string, error string, updated_at timestamp, " + ", ".join(f"{n} {t}" for n, t in WORKER_RECORD.items()),
    )
    filled = {name: f"s.{name}" for name in WORKER_RECORD} if status == BATCH_DONE else {}
    (
        DeltaTable.forPath(spark, table_path(settings, "batches"))
        .alias("t")
        .merge(source.alias("s"), "t.batch_id = s.batch_id")
        .whenMatchedUpdate(
            condition=f"t.status <> '{BATCH_DONE}'",
            set={"status": "s.status", "error": "s.error", "attempts": "t.attempts + 1", "updated_at": "s.updated_at", **filled},
        )
        .execute()
    )


def mark_batch_failed(spark, settings: Settings, batch_id: str, error: str) -> None:
    """Record why a batch failed (worker crash, unreadable output); the planner re-plans its uids."""
    if not error:
        raise ValueError("a failed batch needs a reason")
    _finish_batch(spark, settings, batch_id, BATCH_FAILED, error)


def merge_planned_batches(spark, settings: Settings, batch_ids: list[str] | None = None) -> dict:
    """Merge every planned batch whose output is complete (or the given ones); report each outcome."""
    if batch_ids is None:
        planned = read_table(spark, settings, "batches").where(f"status = '{BATCH_PLANNED}'")
        batch_ids = sorted(r["batch_id"] for r in planned.select("batch_id").collect())
    outcomes = [merge_batch(spark, settings, batch_id) for batch_id in batch_ids]
    totals: dict[str, int] = {}
    for outcome in outcomes:
        totals[outcome["status"]] = totals.get(outcome["status"], 0) + 1
    return {"batches": outcomes, "totals": totals}


# --- CLI ------------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", action="append", help="batch id to merge (repeatable; default: all planned)")
    parser.add_argument("--output", help="the worker output dir of a single --batch (default: from batches)")
    parser.add_argument("--lake", help="lake root (default: ALTLAKE_LAKE_DIR)")
    parser.add_argument("--master", help="Spark master (default: ALTLAKE_SPARK_MASTER)")


def run(args: argparse.Namespace) -> int:
    from spark_jobs.session import get_spark

    settings = Settings.from_env(lake_dir=args.lake, spark_master=args.master)
    spark = get_spark(settings, "altlake-merge-scores")
    if args.output:
        if not args.batch or len(args.batch) != 1:
            print("altlake merge-scores: --output needs exactly one --batch", file=sys.stderr)
            return 2
        summary = {"batches": [merge_batch(spark, settings, args.batch[0], args.output)]}
    else:
        summary = merge_planned_batches(spark, settings, args.batch)
    print(json.dumps(summary, indent=2))
    return 1 if any(b["status"] == "failed" for b in summary["batches"]) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="merge_scores", description="merge worker outputs into scores")
    configure(parser)
    return exit_status(parser.prog, lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
