"""Takedowns: opt-out requests by URL, domain or image hash, and their removal from the lake.

Requests land in the `takedowns` Delta table (MERGE on (kind, value): sending a request twice
changes nothing). `apply_takedowns` deletes every matching row from candidates, scores and pairs.
Afterwards the requests keep working: extraction drops url/domain matches before they become
candidates, the score merge marks hash matches `opted_out`, and the release build drops any
match again and records the takedowns table version it honoured in the manifest.

Hash lists follow Re-LAION-5B: plain files of hex digests, one per line (or a parquet/CSV column).
Also the home of the small lake helpers every release-side job shares (table paths, versions).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: make our packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from altlake.config import Settings
from altlake.paths import LakePaths
from altlake.schemas import TAKEDOWN_KINDS, TAKEDOWNS

HASH_LENGTHS = {"sha256": 64, "md5": 32}
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")


# --- lake access shared by the release-side jobs ---------------------------------------------------


def lake_paths(settings: Settings) -> LakePaths:
    """The lake's layout with an absolute root (a relative lake dir resolves against the working dir)."""
    root = settings.lake_dir if "://" in settings.lake_dir else str(Path(settings.lake_dir).absolute())
    return LakePaths(root)


def table_path(settings: Settings, name: str) -> str:
    return lake_paths(settings).table(name)


def table_version(spark, settings: Settings, name: str) -> int:
    """The table's latest Delta version: what a job reads and a manifest records."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, table_path(settings, name)).history(1).first()["version"])


def read_table(spark, settings: Settings, name: str, version: int | None = None):
    """A table as of `version` (Delta time travel) or its latest version."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(table_path(settings, name))


def commit_metrics(spark, settings: Settings, name: str, version_before: int) -> dict[str, int]:
    """Row counts Delta recorded for the commit after `version_before` (e.g. numTargetRowsDeleted);
    empty when the operation changed nothing and so committed nothing."""
    from delta.tables import DeltaTable

    latest = DeltaTable.forPath(spark, table_path(settings, name)).history(1).first()
    if int(latest["version"]) == version_before:
        return {}
    return {k: int(v) for k, v in (latest["operationMetrics"] or {}).items() if str(v).isdigit()}


# --- requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TakedownRequest:
    kind: str
    value: str
    reason: str


def normalize_value(kind: str, value: str) -> str:
    """The canonical form matching uses; ValueError says why a request cannot be honoured."""
    if kind not in TAKEDOWN_KINDS:
        raise ValueError(f"unknown takedown kind {kind!r} (expected one of {', '.join(TAKEDOWN_KINDS)})")
    value = (value or "").strip()
    if kind == "url":
        if not re.match(r"^https?://[^\s/]+", value, re.IGNORECASE):
            raise ValueError(f"takedown url {value!r} is not an absolute http(s) URL")
        return value
    if kind == "domain":
        domain = value.lower().removeprefix("*.").rstrip(".")
        if not _DOMAIN.match(domain):
            raise ValueError(f"takedown domain {value!r} is not a host name (e.g. example.com)")
        return domain
    digest = value.lower()
    if len(digest) != HASH_LENGTHS[kind] or not re.fullmatch(r"[0-9a-f]+", digest):
        raise ValueError(f"takedown {kind} {value!r} is not {HASH_LENGTHS[kind]} hex digits")
    return digest


def read_hash_list(path: str, kind: str) -> list[str]:
    """Hex digests from a hash-list file: text/CSV (first field per line, '#' comments) or parquet.

    Every bad line is reported at once (with its line number) so a list is fixed in one pass.
    """
    if kind not in HASH_LENGTHS:
        raise ValueError(f"hash lists hold sha256 or md5 digests, not {kind!r}")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        column = kind if kind in table.column_names else ("hash" if "hash" in table.column_names else None)
        if column is None:
            raise ValueError(f"{path}: no {kind!r} or 'hash' column (columns: {table.column_names})")
        entries = [(i + 1, str(v)) for i, v in enumerate(table.column(column).to_pylist()) if v is not None]
    else:
        with open(path, encoding="utf-8") as f:
            entries = [
                (i + 1, line.split(",")[0].strip().strip('"'))
                for i, line in enumerate(f)
                if line.strip() and not line.lstrip().startswith("#")
            ]
    digests, errors = [], []
    for line_no, raw in entries:
        try:
            digests.append(normalize_value(kind, raw))
        except ValueError as error:
            if line_no == 1 and not re.search(r"[0-9a-f]{8}", raw.lower()):
                continue  # a CSV header line
            errors.append(f"line {line_no}: {error}")
    if errors:
        raise ValueError(f"{path}: {len(errors)} invalid entries:\n  " + "\n  ".join(errors[:20]))
    if not digests:
        raise ValueError(f"{path}: no {kind} digest in the file")
    return digests


def add_takedowns(
    spark, settings: Settings, requests: Iterable[TakedownRequest], requested_at: datetime | None = None
) -> dict:
    """Record requests (MERGE on kind+value: resending one keeps its first time and reason).

    All requests are checked before anything is written, so a bad entry never half-applies a list.
    """
    from delta.tables import DeltaTable

    requested_at = requested_at or datetime.now(timezone.utc)
    rows, errors = {}, []
    for request in requests:
        try:
            value = normalize_value(request.kind, request.value)
        except ValueError as error:
            errors.append(str(error))
            continue
        if not (request.reason or "").strip():
            errors.append(f"takedown {request.kind} {request.value!r} has no reason")
            continue
        rows.setdefault((request.kind, value), (request.kind, value, request.reason.strip(), requested_at))
    if errors:
        raise ValueError(f"{len(errors)} invalid takedown requests:\n  " + "\n  ".join(errors[:20]))
    if not rows:
        return {"received": 0, "added": 0, "already_present": 0, "takedowns_version": table_version(spark, settings, "takedowns")}
    source = spark.createDataFrame(list(rows.values()), TAKEDOWNS.spark_ddl())
    before = table_version(spark, settings, "takedowns")
    (
        DeltaTable.forPath(spark, table_path(settings, "takedowns"))
        .alias("t")
        .merge(source.alias("s"), "t.kind = s.kind AND t.value = s.value")
        .whenNotMatchedInsertAll()
        .execute()
    )
    added = commit_metrics(spark, settings, "takedowns", before).get("numTargetRowsInserted", 0)
    return {
        "received": len(rows),
        "added": added,
        "already_present": len(rows) - added,
        "takedowns_version": table_version(spark, settings, "takedowns"),
    }


# --- matching ---------------------------------------------------------------------------------------


def host_suffixes(url_column: str = "url"):
    """The URL's host and each parent domain (a.b.example.com -> [a.b.example.com, b.example.com,
    example.com, com]), so a domain takedown is an equi-join that also covers subdomains."""
    from pyspark.sql import functions as F

    host = f"lower(try_parse_url(`{url_column}`, 'HOST'))"
    labels = f"split({host}, '[.]')"
    return F.expr(f"transform(sequence(1, size({labels})), i -> array_join(slice({labels}, i, size({labels}) - i + 1), '.'))")


def match_takedowns(df, takedowns, hash_columns: tuple[str, ...] = ()):
    """(uid, kind) for every row of `df` (uid, url, and the given hash columns) a request matches."""
    from pyspark.sql import functions as F

    requests = takedowns.select("kind", "value")
    by_url = df.join(requests.where("kind = 'url'"), df["url"] == requests["value"]).select("uid", "kind")
    hosts = df.select("uid", F.explode(host_suffixes("url")).alias("value"))
    by_domain = hosts.join(requests.where("kind = 'domain'"), "value").select("uid", "kind")
    matched = by_url.unionByName(by_domain)
    for column in hash_columns:
        hashed = df.select("uid", F.lower(F.col(column)).alias("value")).where(F.col("value").isNotNull())
        matched = matched.unionByName(hashed.join(requests.where(F.col("kind") == column), "value").select("uid", "kind"))
    return matched.distinct()


def drop_taken_down(df, takedowns, hash_columns: tuple[str, ...] = ()):
    """`df` without the rows any request matches."""
    return df.join(match_takedowns(df, takedowns, hash_columns).select("uid").distinct(), "uid", "left_anti")


def apply_takedowns(spark, settings: Settings) -> dict:
    """Delete every row matching a request from candidates, scores and pairs.

    A hash match in scores also removes the candidate (and pair) with that uid, so the pair is not
    planned and downloaded again. Idempotent: a second run finds nothing and commits nothing.
    """
    from delta.tables import DeltaTable

    version = table_version(spark, settings, "takedowns")
    takedowns = read_table(spark, settings, "takedowns", version)
    candidates = read_table(spark, settings, "candidates")
    scores = read_table(spark, settings, "scores")
    pairs = read_table(spark, settings, "pairs")
    matched = (
        match_takedowns(candidates, takedowns)
        .unionByName(match_takedowns(scores, takedowns, ("sha256", "md5")))
        .unionByName(match_takedowns(pairs, takedowns, ("sha256", "md5")))
        .distinct()
        .cache()
    )
    by_kind = {row["kind"]: row["count"] for row in matched.groupBy("kind").count().collect()}
    uids = matched.select("uid").distinct().cache()
    n_uids = uids.count()
    deleted = {}
    for name in ("candidates", "scores", "pairs"):
        if n_uids == 0:
            deleted[name] = 0
            continue
        before = table_version(spark, settings, name)
        (
            DeltaTable.forPath(spark, table_path(settings, name))
            .alias("t")
            .merge(uids.alias("s"), "t.uid = s.uid")
            .whenMatchedDelete()
            .execute()
        )
        deleted[name] = commit_metrics(spark, settings, name, before).get("numTargetRowsDeleted", 0)
    matched.unpersist()
    uids.unpersist()
    return {
        "takedowns_version": version,
        "requests": takedowns.count(),
        "matched_uids": n_uids,
        "matched_by_kind": {kind: int(by_kind.get(kind, 0)) for kind in TAKEDOWN_KINDS},
        "deleted": deleted,
    }


# --- CLI ----------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="record takedown requests (idempotent)")
    add.add_argument("--kind", required=True, choices=TAKEDOWN_KINDS)
    add.add_argument("--value", action="append", default=[], help="a URL, domain or hex digest (repeatable)")
    add.add_argument("--hash-list", help="file of sha256/md5 digests, one per line (or .parquet)")
    add.add_argument("--reason", required=True, help="why, e.g. 'GDPR request 2024-113' or 'CSAM hash list'")
    sub.add_parser("apply", help="delete matching rows from candidates, scores and pairs")
    for p in (add, sub.choices["apply"]):
        p.add_argument("--lake", help="lake root (default: ALTLAKE_LAKE_DIR)")
        p.add_argument("--master", help="Spark master (default: ALTLAKE_SPARK_MASTER)")


def run(args: argparse.Namespace) -> int:
    from spark_jobs.session import get_spark, require_lake

    settings = Settings.from_env(lake_dir=args.lake, spark_master=args.master)
    if args.action == "add":
        values = list(args.value) + (read_hash_list(args.hash_list, args.kind) if args.hash_list else [])
        if not values:
            print("altlake takedown add: give --value or --hash-list", file=sys.stderr)
            return 2
        requests = [TakedownRequest(args.kind, v, args.reason) for v in values]
        try:
            summary = add_takedowns(get_spark(settings, "altlake-takedown"), settings, requests)
        except ValueError as error:
            print(f"altlake takedown add: {error}", file=sys.stderr)
            return 2
    else:
        require_lake(settings)
        summary = apply_takedowns(get_spark(settings, "altlake-takedown"), settings)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="takedowns", description="record and apply takedown requests")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
