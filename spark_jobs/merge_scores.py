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
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script by spark-submit: make our packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from altlake import storage
from altlake.config import Settings, exit_status
from altlake.paths import RESULTS_FILE, SUCCESS_FILE, embedding_shard, embedding_shard_number, join
from altlake.schemas import BATCH_DONE, BATCH_FAILED, BATCH_PLANNED, BATCHES, SCORES, STATUS_OK, STATUS_OPTED_OUT, WORKER_RESULTS
from altlake.stats import StageStats, chain
from spark_jobs.batches import list_lake_files, parquet_bytes, read_lake_bytes, write_lake_bytes
from spark_jobs.lake import lake_paths, read_table, table_path
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
    planned = _batch_rows(spark, settings, [batch_id]).get(batch_id)
    if planned is None and output_dir is None:
        raise ValueError(f"batch {batch_id!r} is not in the batches table; pass its output dir explicitly")
    return merge_outputs(spark, settings, [(batch_id, output_dir or planned["output_path"], planned)])[0]


def merge_planned_batches(spark, settings: Settings, batch_ids: list[str] | None = None) -> dict:
    """Merge every planned batch whose output is complete (or the given ones); report each outcome.

    Complete outputs are merged together, up to `merge_rows` result rows per MERGE: a MERGE costs
    seconds whatever its size, so one per batch made merging hundreds of batches the slowest stage.
    """
    if batch_ids is None:
        rows = _batch_rows(spark, settings, None)
        batch_ids = sorted(b for b, row in rows.items() if row["status"] == BATCH_PLANNED)
    else:
        batch_ids = list(dict.fromkeys(batch_ids))
        rows = _batch_rows(spark, settings, batch_ids)
    unknown = [b for b in batch_ids if b not in rows]
    if unknown:
        raise ValueError(f"batch {unknown[0]!r} is not in the batches table; pass its output dir explicitly")
    outcomes = merge_outputs(spark, settings, [(b, rows[b]["output_path"], rows[b]) for b in batch_ids])
    totals: dict[str, int] = {}
    for outcome in outcomes:
        totals[outcome["status"]] = totals.get(outcome["status"], 0) + 1
    return {"batches": outcomes, "totals": totals}


def merge_outputs(spark, settings: Settings, outputs: list[tuple]) -> list[dict]:
    """(batch_id, output_dir, its batches row or None for a worker run by hand) -> one outcome each, in
    order. Outputs are read one at a time and staged as parquet in the lake's scratch folder, and
    merged in groups of about `merge_rows` rows, so the driver holds one output, never a group."""
    outcomes: dict[str, dict] = {}
    pending = list(outputs)
    while pending:
        scratch = lake_paths(settings).merge_scratch(uuid.uuid4().hex)
        try:
            group, pending = _stage_group(spark, settings, pending, scratch, outcomes)
            if group.batches:
                outcomes.update(_merge_group(spark, settings, group, scratch))
        finally:
            storage.delete(scratch, storage.S3Options.of(settings))
    return [outcomes[batch_id] for batch_id, _, _ in outputs]


# Working columns of a merge group: the batch a row came from, its rank among the group's rows of its
# uid (1 = newest), and what the MERGE does with it.
_BATCH, _RANK, _OUTCOME = "_merged_batch", "_rank", "_outcome"


@dataclass
class _Group:
    """A merge group's staged batches, each (batch_id, output_dir, its batches row when its rows were
    checked against its input, else None; result rows; rows kept: those its input was planned with),
    and whether a uid came in two of them (a batch delivered late after its uids were planned again)."""

    batches: list[tuple] = field(default_factory=list)
    repeats_uids: bool = False

    @property
    def rows(self) -> int:
        return sum(n_kept for *_, n_kept in self.batches)


def _stage_group(spark, settings: Settings, outputs: list[tuple], scratch: str, outcomes: dict) -> tuple[_Group, list[tuple]]:
    """Stage complete outputs under `scratch`/parts until the group holds `merge_rows` rows; record
    the incomplete and unreadable ones in `outcomes`. Returns the group and the outputs left.

    A planned batch keeps only the uids its input holds (a worker run by hand, or a batch whose
    input is gone, keeps all). The driver holds the output anyway, so filtering here spares Spark a
    join that shuffled every row, embeddings included."""
    import pyarrow as pa
    import pyarrow.compute as pc

    group, seen = _Group(), set()
    for i, (batch_id, output_dir, planned) in enumerate(outputs):
        try:
            rows = read_batch_output(settings, output_dir)
        except IncompleteBatch as error:
            outcomes[batch_id] = {"batch_id": batch_id, "status": "incomplete", "error": str(error)}
            continue
        except (ValueError, OSError) as error:
            mark_batch_failed(spark, settings, batch_id, f"unreadable worker output: {error}")
            outcomes[batch_id] = {"batch_id": batch_id, "status": "failed", "error": str(error)}
            continue
        n_results = rows.num_rows
        planned_uids = _planned_uids(settings, planned)
        if planned_uids is not None:
            rows = rows.filter(pc.is_in(rows.column("uid"), value_set=planned_uids))
        tagged = rows.append_column(_BATCH, pa.array([batch_id] * rows.num_rows, pa.string()))
        write_lake_bytes(settings, join(scratch, "parts", f"part-{len(group.batches):05d}.parquet"), parquet_bytes(tagged))
        uids = rows.column("uid").to_pylist()
        group.repeats_uids = group.repeats_uids or not seen.isdisjoint(uids)
        seen.update(uids)
        group.batches.append((batch_id, output_dir, planned if planned_uids is not None else None, n_results, rows.num_rows))
        if group.rows >= settings.merge_rows:
            return group, outputs[i + 1 :]
    return group, []


def _planned_uids(settings: Settings, planned: dict | None):
    """The uids a planned batch's input holds (pyarrow), or None for a worker run by hand or an input that is gone."""
    import pyarrow.parquet as pq

    data = read_lake_bytes(settings, planned["input_path"]) if planned is not None else None
    return None if data is None else pq.read_table(io.BytesIO(data), columns=["uid"]).column("uid").combine_chunks()


def _merge_group(spark, settings: Settings, group: _Group, scratch: str) -> dict[str, dict]:
    """One MERGE of several batches' staged rows into `scores`, their batches marked done in one more.

    Each row is classified against `scores` as read just before (new, newer, or not newer, as the
    MERGE's condition decides it), which gives every batch its own counts. A uid in two batches of
    the group keeps the newer row. Only the narrow columns are classified: the rows' embeddings
    are shuffled once, by the MERGE itself. Nothing is cached: a group's embeddings held in memory
    ran a 2 GB driver out of memory at 100,000 rows.
    """
    from delta.tables import DeltaTable
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    staged = spark.read.parquet(join(scratch, "parts")).select(*SCORES.column_names, _BATCH)
    source = _opt_out_listed_hashes(staged, _listed_hashes(spark, settings, staged, scratch))
    if group.repeats_uids:  # rare: ranking needs a shuffle of the group's rows
        newest = Window.partitionBy("uid").orderBy(F.col("scored_at").desc(), F.col(_BATCH).desc())
        source = source.withColumn(_RANK, F.row_number().over(newest))
    else:
        source = source.withColumn(_RANK, F.lit(1))
    target = read_table(spark, settings, "scores").select("uid", F.col("scored_at").alias("_scores_at"))
    outcome = (
        F.when(F.col(_RANK) > 1, "unchanged")
        .when(F.col("_scores_at").isNull(), "inserted")
        .when(F.col("scored_at") > F.col("_scores_at"), "updated")
        .otherwise("unchanged")
    )
    narrow = source.select("uid", _BATCH, "status", "scored_at", _RANK)
    counts = narrow.join(target, "uid", "left").groupBy(_BATCH, "status", outcome.alias(_OUTCOME)).count().collect()

    columns = [c for c in SCORES.column_names if c != "attempts"]
    changes = {r[_OUTCOME] for r in counts} - {"unchanged"}
    if changes:  # a group delivered again commits nothing
        # The MERGE's own conditions leave the rows classified unchanged as they are (a row older than
        # the group's newest of its uid is dropped first), so the source need not carry the classes.
        merge = (
            DeltaTable.forPath(spark, table_path(settings, "scores"))
            .alias("t")
            .merge(source.where(F.col(_RANK) == 1).select(*SCORES.column_names).alias("s"), "t.uid = s.uid")
        )
        if "updated" in changes:  # only then can a row meet one in scores (insert-only MERGE: one join less)
            merge = merge.whenMatchedUpdate(
                condition="s.scored_at > t.scored_at",
                set={**{c: f"s.`{c}`" for c in columns}, "attempts": "t.attempts + 1"},
            )
        merge.whenNotMatchedInsert(values={**{c: f"s.`{c}`" for c in columns}, "attempts": "1"}).execute()
    _finish_batches(spark, settings, [(batch_id, BATCH_DONE, None, worker_record(settings, output_dir)) for batch_id, output_dir, *_ in group.batches])

    outcomes = {}
    for batch_id, _, planned, n_results, n_kept in group.batches:
        mine = [r for r in counts if r[_BATCH] == batch_id]
        n_rows = sum(r["count"] for r in mine)
        by = {kind: sum(r["count"] for r in mine if r[_OUTCOME] == kind) for kind in ("inserted", "updated", "unchanged")}
        statuses: dict[str, int] = {}
        for r in mine:
            statuses[r["status"]] = statuses.get(r["status"], 0) + r["count"]
        results = StageStats("results", n_results, {"not_planned_in_this_batch": n_results - n_kept})
        merged = StageStats("merge", n_rows, {"not_newer_than_scores": by["unchanged"]})
        outcomes[batch_id] = {
            "batch_id": batch_id,
            "status": "merged",
            "rows": n_rows,
            # the uids its input holds, as the planner counted them
            "missing_from_results": (planned["n_rows"] if planned is not None else n_rows) - n_rows,
            **by,
            "statuses": dict(sorted(statuses.items())),
            "stages": chain([results, merged]),
        }
    return outcomes


def _listed_hashes(spark, settings: Settings, staged, scratch: str):
    """(uid, _listed: the first hash kind listed) of the staged rows whose image is on a takedown list,
    written to the scratch folder and read back so Spark sees its true size (small: broadcast to the
    rows, not a shuffle of them); None when no row is listed, the usual case."""
    from pyspark.sql import functions as F

    hashes = read_table(spark, settings, "takedowns").where(F.col("kind").isin(*HASH_COLUMNS))
    if hashes.isEmpty():
        return None
    path = join(scratch, "listed")
    match_takedowns(staged, hashes, HASH_COLUMNS).groupBy("uid").agg(F.min("kind").alias("_listed")).write.parquet(path)
    listed = spark.read.parquet(path)
    return None if listed.isEmpty() else listed


def _opt_out_listed_hashes(source, listed):
    """Rows whose image is on a takedown list (sha256, md5, or within a pdq request's distance) become `opted_out`, scores cleared."""
    from pyspark.sql import functions as F

    if listed is None:
        return source
    marked = source.join(listed, "uid", "left")
    listed_row = F.col("_listed").isNotNull()
    replaced = {
        "status": F.when(listed_row, F.lit(STATUS_OPTED_OUT)).otherwise(F.col("status")),
        # "<why>: <detail>", as the worker writes opt-outs, so SQL can count them by the first word
        "error": F.when(listed_row, F.concat(F.lit("takedown: the image's "), F.col("_listed"), F.lit(" is on a takedown list"))).otherwise(F.col("error")),
        **{c: F.when(listed_row, F.lit(None)).otherwise(F.col(c)) for c in _IMAGE_DERIVED},
    }
    extra = [c for c in source.columns if c not in SCORES.column_names]  # a merge group's working columns
    return marked.select(*[replaced[c].alias(c) if c in replaced else F.col(c) for c in SCORES.column_names], *extra)


def _batch_rows(spark, settings: Settings, batch_ids: list[str] | None) -> dict:
    """batch_id -> its batches row, read once (every batch when batch_ids is None)."""
    from pyspark.sql import functions as F

    table = read_table(spark, settings, "batches")
    if batch_ids is not None:
        table = table.where(F.col("batch_id").isin(*batch_ids))
    return {r["batch_id"]: r for r in table.collect()}


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


def _finish_batches(spark, settings: Settings, finished: list[tuple]) -> None:
    """(batch_id, status, error, worker record or None) each, in one MERGE. done: once (a re-merge
    leaves the row alone), with the worker's throughput record; failed: with the reason. Both count
    an attempt."""
    from delta.tables import DeltaTable

    rows = []
    for batch_id, status, error, record in finished:
        record = record if status == BATCH_DONE and record else dict.fromkeys(WORKER_RECORD)
        rows.append((batch_id, status, error, datetime.now(timezone.utc), *[record[name] for name in WORKER_RECORD]))
    source = spark.createDataFrame(
        rows, "batch_id string, status string, error string, updated_at timestamp, " + ", ".join(f"{n} {t}" for n, t in WORKER_RECORD.items())
    )
    # A failed batch has no record (nulls): its columns keep what they held.
    filled = {name: f"coalesce(s.{name}, t.{name})" for name in WORKER_RECORD}
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
    _finish_batches(spark, settings, [(batch_id, BATCH_FAILED, error, None)])


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
