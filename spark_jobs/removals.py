"""Removals addenda: what holders of an already published release must delete.

A release's files are immutable (their checksums are its identity), so a takedown that reaches a
published release is recorded beside it, the way Re-LAION-5B let holders clean their copies:
`removals/removals-<takedowns version>.parquet` lists the rows (uid, url, hashes) that the
requests in force at that version match and that no earlier addendum listed, with the request
that matched. `amend_releases` runs after every takedown apply; the search service hides listed
rows on its next reload; `releases` records when each release was last amended and how many rows
its addenda list. `deprecate_release` marks a superseded release the same way: a notice written once
beside its files (`DEPRECATED.json`) and `releases.deprecated`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from datetime import datetime, timezone

from altlake import storage
from altlake.config import Settings
from altlake.paths import DEPRECATION, REMOVALS_DIR, removals_file
from altlake.schemas import REMOVALS
from spark_jobs.lake import read_table, table_path, table_version
from spark_jobs.publish import ReleaseExistsError, ReleaseStore
from spark_jobs.takedowns import HASH_COLUMNS, match_takedowns


def release_store_of(location: str, settings: Settings, store_options: storage.S3Options | None = None) -> tuple[ReleaseStore, str]:
    """(the store holding a published release, its id) from the location `releases` recorded."""
    root, _, release_id = location.rstrip("/").rpartition("/")
    return ReleaseStore(root, store_options or storage.S3Options.of(settings)), release_id


def release_rows(spark, location: str):
    """A published release's rows as its parquet files hold them: uid, url, url_canonical, hashes
    (pdq from format 5 on; an older release's rows have none, so perceptual requests skip them)."""
    from pyspark.sql import functions as F

    from altlake.urls import canonical_url

    rows = spark.read.parquet(f"{storage.hadoop_url(location)}/parquet/*/*.parquet")
    return rows.select(
        "uid",
        F.col("URL").alias("url"),
        F.udf(canonical_url, "string")(F.col("URL")).alias("url_canonical"),
        "sha256",
        F.col("hash").alias("md5"),
        *(["pdq"] if "pdq" in rows.columns else []),
    )


def listed_removals(store: ReleaseStore, release_id: str) -> list[dict]:
    """Every row the release's addenda list so far, oldest addendum first."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for name in store.list_files(release_id, f"{REMOVALS_DIR}/"):
        rows += pq.read_table(io.BytesIO(store.read_file(release_id, name))).to_pylist()
    return rows


def amend_releases(
    spark,
    settings: Settings,
    store_options: storage.S3Options | None = None,
    now: datetime | None = None,
    release_ids: list[str] | None = None,
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
        store, release_id = release_store_of(release["location"], settings, store_options)
        listed = listed_removals(store, release_id)
        seen = {row["uid"] for row in listed}
        rows = release_rows(spark, release["location"])
        matched = match_takedowns(rows, takedowns, HASH_COLUMNS).join(rows.drop("url_canonical"), "uid")
        first = {}  # one request per row (the smallest kind, value), so the addendum is deterministic
        for row in matched.orderBy("uid", "kind", "value").collect():
            first.setdefault(row["uid"], row)
        new = [
            {"uid": r["uid"], "url": r["url"], "sha256": r["sha256"], "md5": r["md5"], "pdq": r.asDict().get("pdq"), "kind": r["kind"],
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


class UnknownReleaseError(ValueError):
    """The release id is not recorded in `releases`."""


def deprecate_release(
    spark,
    settings: Settings,
    release_id: str,
    reason: str,
    superseded_by: str | None = None,
    store_options: storage.S3Options | None = None,
    now: datetime | None = None,
) -> dict:
    """Mark a published release superseded: `DEPRECATED.json` beside its immutable files (written once:
    deprecating again keeps the first notice) and `releases.deprecated`, so holders of a copy, SQL
    users and the search service all see it. Returns the notice and whether it was already there."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    if not reason.strip():
        raise ValueError("a deprecation needs a reason (holders read it)")
    releases = read_table(spark, settings, "releases")
    wanted = [release_id, superseded_by] if superseded_by else [release_id]
    found = {r["release_id"]: r["location"] for r in releases.where(F.col("release_id").isin(wanted)).select("release_id", "location").collect()}
    for name in wanted:
        if name not in found:
            raise UnknownReleaseError(f"no release {name!r} is recorded in `releases` (SELECT release_id FROM releases lists them)")
    if superseded_by == release_id:
        raise ValueError("a release cannot supersede itself")
    store, _ = release_store_of(found[release_id], settings, store_options)
    successor = (superseded_by, found[superseded_by]) if superseded_by else None
    notice, already = write_deprecation(store, release_id, reason, successor, now)
    (
        DeltaTable.forPath(spark, table_path(settings, "releases"))
        .update(condition=(F.col("release_id") == release_id) & ~F.coalesce(F.col("deprecated"), F.lit(False)), set={"deprecated": F.lit(True)})
    )
    return {**notice, "already_deprecated": already, "location": found[release_id]}


def write_deprecation(
    store: ReleaseStore, release_id: str, reason: str, successor: tuple[str, str] | None = None, now: datetime | None = None
) -> tuple[dict, bool]:
    """`DEPRECATED.json` beside the release's immutable files, written once; `successor` is (release id,
    location). Returns the notice in force and whether it was already there (the first one stands)."""
    notice = {
        "release_id": release_id,
        "deprecated_at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "reason": reason.strip(),
        "superseded_by": successor[0] if successor else None,
        "superseded_by_location": successor[1] if successor else None,
    }
    try:
        store.add_file(release_id, DEPRECATION, json.dumps(notice, indent=2, sort_keys=True).encode() + b"\n")
    except ReleaseExistsError:
        return json.loads(store.read_file(release_id, DEPRECATION)), True
    return notice, False


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("release_id", help="the release to mark superseded (see SELECT release_id FROM releases)")
    parser.add_argument("--reason", required=True, help="what holders should know, e.g. 'rebuilt with the 2025 takedowns'")
    parser.add_argument("--superseded-by", metavar="RELEASE_ID", help="the release that replaces it")
    parser.add_argument("--lake", help="lake root (default: ALTLAKE_LAKE_DIR)")
    parser.add_argument("--master", help="Spark master (default: ALTLAKE_SPARK_MASTER)")


def run(args: argparse.Namespace) -> int:
    """`altlake deprecate-release`: one line for a person, the notice as JSON on stdout."""
    from spark_jobs.session import get_spark, require_lake

    settings = Settings.from_env(lake_dir=args.lake, spark_master=args.master)
    require_lake(settings)
    try:
        notice = deprecate_release(get_spark(settings, "altlake-deprecate"), settings, args.release_id, args.reason, args.superseded_by)
    except ValueError as error:
        print(f"altlake deprecate-release: {error}", file=sys.stderr)
        return 2
    state = "was already deprecated (its first notice stands)" if notice["already_deprecated"] else "is now deprecated"
    print(f"altlake deprecate-release: {args.release_id} {state}: {notice['location']}/{DEPRECATION}", file=sys.stderr)
    print(json.dumps(notice, indent=2))
    return 0
