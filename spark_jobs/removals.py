"""Removals addenda: what holders of an already published release must delete.

A release's files are immutable (their checksums are its identity), so a takedown that reaches a
published release is recorded beside it, the way Re-LAION-5B let holders clean their copies:
`removals/removals-<takedowns version>.parquet` lists the rows (uid, url, hashes) that the
requests in force at that version match and that no earlier addendum listed, with the request
that matched. `amend_releases` runs after every takedown apply; the search service hides listed
rows on its next reload; `releases` records when each release was last amended and how many rows
its addenda list.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

from altlake.config import Settings
from altlake.paths import REMOVALS_DIR, removals_file
from altlake.schemas import REMOVALS
from spark_jobs.lake import read_table, table_path, table_version
from spark_jobs.publish import ReleaseStore
from spark_jobs.takedowns import HASH_COLUMNS, match_takedowns


def release_store_of(location: str, settings: Settings, client=None) -> tuple[ReleaseStore, str]:
    """(the store holding a published release, its id) from the location `releases` recorded."""
    root, _, release_id = location.rstrip("/").rpartition("/")
    return ReleaseStore(root, client=client, s3_endpoint=settings.s3_endpoint), release_id


def release_rows(spark, location: str):
    """A published release's rows as its parquet files hold them: uid, url, url_canonical, hashes."""
    from pyspark.sql import functions as F

    from altlake.urls import canonical_url

    path = location.replace("s3://", "s3a://", 1) if location.startswith("s3://") else location
    rows = spark.read.parquet(f"{path}/parquet/*/*.parquet")
    return rows.select(
        "uid",
        F.col("URL").alias("url"),
        F.udf(canonical_url, "string")(F.col("URL")).alias("url_canonical"),
        "sha256",
        F.col("hash").alias("md5"),
    )


def listed_removals(store: ReleaseStore, release_id: str) -> list[dict]:
    """Every row the release's addenda list so far, oldest addendum first."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for name in store.list_files(release_id, f"{REMOVALS_DIR}/"):
        rows += pq.read_table(io.BytesIO(store.read_file(release_id, name))).to_pylist()
    return rows


def amend_releases(
    spark, settings: Settings, client=None, now: datetime | None = None, release_ids: list[str] | None = None
) -> dict:
    """Add a removals addendum to every published release that the current takedowns reach further.

    `release_ids` limits it to those releases (default: every release `releases` records).
    Idempotent and safe to re-run after a crash: the rows to add are those matched now minus those
    any addendum already lists, so a second run adds nothing and only completes `releases`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from delta.tables import DeltaTable

    now = now or datetime.now(timezone.utc)
    version = table_version(spark, settings, "takedowns")
    takedowns = read_table(spark, settings, "takedowns", version)
    amended: dict[str, int] = {}
    updates = []
    releases = read_table(spark, settings, "releases")
    if release_ids is not None:
        releases = releases.where(releases["release_id"].isin(release_ids))
    for release in releases.collect():
        store, release_id = release_store_of(release["location"], settings, client)
        listed = listed_removals(store, release_id)
        seen = {row["uid"] for row in listed}
        rows = release_rows(spark, release["location"])
        matched = match_takedowns(rows, takedowns, HASH_COLUMNS).join(rows.drop("url_canonical"), "uid")
        first = {}  # one request per row (the smallest kind, value), so the addendum is deterministic
        for row in matched.orderBy("uid", "kind", "value").collect():
            first.setdefault(row["uid"], row)
        new = [
            {"uid": r["uid"], "url": r["url"], "sha256": r["sha256"], "md5": r["md5"], "kind": r["kind"],
             "value": r["value"], "takedowns_version": version, "removed_at": now}
            for uid, r in sorted(first.items()) if uid not in seen
        ]  # fmt: skip
        if new:
            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(new, schema=REMOVALS.to_arrow()), buffer, compression="zstd")
            store.add_file(release_id, removals_file(version), buffer.getvalue())
            amended[release_id] = len(new)
        every = listed + new
        last = max((row["removed_at"] for row in every), default=None)
        updates.append((release_id, last, len(every)))
    if updates:
        source = spark.createDataFrame(updates, "release_id string, amended_at timestamp, removed bigint")
        (
            DeltaTable.forPath(spark, table_path(settings, "releases"))
            .alias("t")
            .merge(source.alias("s"), "t.release_id = s.release_id")
            .whenMatchedUpdate(
                condition="t.removed IS NULL OR t.removed != s.removed OR NOT (t.amended_at <=> s.amended_at)",
                set={"amended_at": "s.amended_at", "removed": "s.removed"},
            )
            .execute()
        )
    return {"takedowns_version": version, "releases": len(updates), "amended": amended}
