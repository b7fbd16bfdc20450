"""Takedowns: opt-out requests by URL, domain, image digest or perceptual hash, and their removal from the lake.

Requests land in the `takedowns` Delta table (MERGE on (kind, value): sending a request twice
changes nothing). `apply_takedowns` deletes every matching row from candidates, scores and pairs.
Afterwards the requests keep working: extraction drops url/domain matches before they become
candidates, the score merge marks hash matches `opted_out`, and the release build drops any
match again and records the takedowns table version it honoured in the manifest.

`purge_takedowns` finishes the job once the grace period (Settings.takedown_grace_hours) has
passed: VACUUM deletes the data files that still held the removed rows for time travel, and the
`purges` table records every apply and its purge.

Hash lists follow Re-LAION-5B: plain files of hex digests, one per line (or a parquet/CSV column).
A `pdq` request matches every image whose PDQ perceptual hash (altlake.perceptual) is within its
recorded Hamming distance, so resized, re-encoded and slightly cropped copies go too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: make our packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from altlake import perceptual
from altlake.config import Settings, exit_status
from altlake.schemas import PURGES, TABLES, TAKEDOWN_KINDS, TAKEDOWNS
from altlake.urls import CANONICAL_HOST_PATTERN, canonical_host, canonical_url
from spark_jobs.lake import commit_metrics, read_table, table_path, table_version

HASH_LENGTHS = {"sha256": 64, "md5": 32, "pdq": perceptual.HASH_HEX}
HASH_COLUMNS = tuple(HASH_LENGTHS)  # the scores / pairs columns hash requests match (pdq: by distance)
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")


# --- requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TakedownRequest:
    kind: str
    value: str
    reason: str
    max_distance: int | None = None  # pdq only: None takes perceptual.DEFAULT_MAX_DISTANCE


def max_distance_of(request: TakedownRequest) -> int | None:
    """The Hamming distance a pdq request matches within (recorded with it); None for other kinds."""
    if request.kind != "pdq":
        if request.max_distance is not None:
            raise ValueError(f"takedown {request.kind} {request.value!r}: a maximum distance only applies to pdq requests")
        return None
    distance = perceptual.DEFAULT_MAX_DISTANCE if request.max_distance is None else request.max_distance
    if not 0 <= distance <= perceptual.MAX_DISTANCE_LIMIT:
        raise ValueError(f"takedown pdq {request.value!r}: maximum distance {distance} is not between 0 and {perceptual.MAX_DISTANCE_LIMIT} bits")
    return distance


def normalize_value(kind: str, value: str) -> str:
    """The canonical form matching uses (altlake.urls for urls and domains); ValueError says why a
    request cannot be honoured."""
    if kind not in TAKEDOWN_KINDS:
        raise ValueError(f"unknown takedown kind {kind!r} (expected one of {', '.join(TAKEDOWN_KINDS)})")
    value = (value or "").strip()
    if kind == "url":
        canonical = canonical_url(value) if re.match(r"^https?://", value, re.IGNORECASE) else None
        if canonical is None:
            raise ValueError(f"takedown url {value!r} is not an absolute http(s) URL")
        return canonical
    if kind == "domain":
        bare = value.removeprefix("*.")
        domain = canonical_host(bare) if bare and not re.search(r"[/:@?#\s]", bare) else None
        if domain is None or not _DOMAIN.match(domain):
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
        raise ValueError(f"hash lists hold sha256, md5 or pdq hashes, not {kind!r}")
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


def hashes_of_images(paths: Iterable[str], kind: str) -> list[str]:
    """The request values for image files a takedown request came with: their sha256 / md5 digest,
    or their PDQ hash. A flat image (PDQ quality under 50) is refused for pdq: its hash would match
    unrelated flat images, so its exact digest is the request to send."""
    import hashlib

    if kind not in HASH_LENGTHS:
        raise ValueError(f"--image makes sha256, md5 or pdq requests, not {kind}")
    values = []
    for path in paths:
        if kind != "pdq":
            with open(path, "rb") as f:
                values.append(hashlib.new(kind, f.read()).hexdigest())
            continue
        value, quality = perceptual.pdq_of_file(path)
        if quality < perceptual.MIN_QUALITY:
            raise ValueError(f"{path}: PDQ quality {quality} < {perceptual.MIN_QUALITY} (a flat image would match unrelated ones): take it down by --kind sha256")
        values.append(value)
    return values


def read_domain_list(path: str, categories: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Canonical domains of a blocklist in UT1's layout (the format datatrove's URL filter reads): a
    `domains` file (one per line, '#' comments), a category folder holding one, or the list's root folder
    or .tar.gz with `categories` naming its folders. Returns (domains, skipped lines with why): a
    third-party list's odd lines (IP addresses, paths) are skipped and reported, not fatal."""
    return parse_domain_list(path, domain_list_sources(path, categories))


def domain_list_sources(path: str, categories: Iterable[str] = ()) -> list[tuple[str, bytes]]:
    """(name, bytes) of each `domains` file the blocklist at `path` holds for `categories`."""
    import tarfile

    wanted = [c.strip() for c in categories if c.strip()]
    if path.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(path) as archive:
            members = {m.name: m for m in archive.getmembers() if m.isfile() and m.name.endswith("/domains")}
            found = {Path(name).parent.name: name for name in members}
            return [(found[c], archive.extractfile(members[found[c]]).read()) for c in _categories(path, wanted, found)]
    if Path(path).is_dir():
        if Path(path, "domains").is_file():
            return [(str(Path(path, "domains")), Path(path, "domains").read_bytes())]
        found = {p.parent.name: str(p) for p in Path(path).glob("*/domains")}
        return [(found[c], Path(found[c]).read_bytes()) for c in _categories(path, wanted, found)]
    return [(path, Path(path).read_bytes())]


def parse_domain_list(path: str, sources: list[tuple[str, bytes]]) -> tuple[list[str], list[str]]:
    """The canonical domains of a blocklist's files, and the lines skipped with why."""
    domains, skipped = [], []
    for name, data in sources:
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            try:
                domains.append(normalize_value("domain", entry))
            except ValueError as error:
                skipped.append(f"{name} line {number}: {error}")
    if not domains:
        raise ValueError(f"{path}: no domain in the blocklist" + (f" ({len(skipped)} lines skipped, e.g. {skipped[0]})" if skipped else ""))
    return sorted(set(domains)), skipped


def _categories(path: str, wanted: list[str], found: dict[str, str]) -> list[str]:
    if not wanted:
        raise ValueError(f"{path} holds {len(found)} UT1 categories: name the ones to load (e.g. {', '.join(sorted(found)[:5])})")
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"{path} has no categor{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)} (it has {', '.join(sorted(found))})")
    return wanted


def load_domain_blocklist(spark, settings: Settings) -> dict | None:
    """Settings.domain_blocklist as domain takedowns, before an extraction: once per file content (the
    files' digest is in the reason, so an unchanged list is neither parsed nor merged again), None when
    none is set."""
    import hashlib

    from pyspark.sql import functions as F

    if not settings.domain_blocklist:
        return None
    categories = [c for c in settings.domain_blocklist_categories.split(",") if c.strip()]
    sources = domain_list_sources(settings.domain_blocklist, categories)
    digest = hashlib.sha256(b"".join(hashlib.sha256(data).digest() for _, data in sources)).hexdigest()[:12]
    reason = f"blocklist {Path(settings.domain_blocklist).name}" + (f" [{','.join(categories)}]" if categories else "") + f" sha256:{digest}"
    if read_table(spark, settings, "takedowns").where(F.col("reason") == reason).limit(1).count():
        # Loaded before: the file is not parsed again (millions of lines on every extraction otherwise).
        return {"blocklist": settings.domain_blocklist, "already_loaded": True}
    domains, skipped = parse_domain_list(settings.domain_blocklist, sources)
    summary = add_takedowns(spark, settings, [TakedownRequest("domain", d, reason) for d in domains])
    return {"blocklist": settings.domain_blocklist, "domains": len(domains), "skipped_lines": len(skipped), "already_loaded": False,
            "added": summary["added"]}  # fmt: skip


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
            max_distance = max_distance_of(request)
        except ValueError as error:
            errors.append(str(error))
            continue
        if not (request.reason or "").strip():
            errors.append(f"takedown {request.kind} {request.value!r} has no reason")
            continue
        rows.setdefault((request.kind, value), (request.kind, value, request.reason.strip(), requested_at, None, max_distance))
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
    matched = _record_matches(spark, settings, source)
    return {
        "received": len(rows),
        "added": added,
        "already_present": len(rows) - added,
        "matched_rows": {table: sum(m[table] for m in matched.values()) for table in MATCHED_TABLES},
        "matched_nothing": sorted(f"{kind} {value}" for (kind, value), m in matched.items() if not any(m.values())),
        "takedowns_version": table_version(spark, settings, "takedowns"),
    }


MATCHED_TABLES = ("candidates", "scores", "pairs")


def _record_matches(spark, settings: Settings, requests) -> dict[tuple[str, str], dict[str, int]]:
    """How many rows of each table every request matches now, stored in its `matched` column, so a
    request that matched nothing (a typo, a URL we never saw) is visible at once and by SQL."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    counts: dict[tuple[str, str], dict[str, int]] = {
        (r["kind"], r["value"]): dict.fromkeys(MATCHED_TABLES, 0) for r in requests.select("kind", "value").collect()
    }
    for table in MATCHED_TABLES:
        hashes = () if table == "candidates" else HASH_COLUMNS
        found = match_takedowns(read_table(spark, settings, table), requests, hashes).groupBy("kind", "value").count()
        for row in found.collect():
            counts[(row["kind"], row["value"])][table] = int(row["count"])
    source = spark.createDataFrame(
        [(kind, value, m) for (kind, value), m in counts.items()], "kind string, value string, matched map<string,bigint>"
    )
    (
        DeltaTable.forPath(spark, table_path(settings, "takedowns"))
        .alias("t")
        .merge(source.alias("s"), "t.kind = s.kind AND t.value = s.value")
        .whenMatchedUpdate(set={"matched": F.col("s.matched")})
        .execute()
    )
    return counts


# --- matching ---------------------------------------------------------------------------------------


def host_suffixes(column: str = "url_canonical"):
    """The canonical URL's host and each parent domain (a.b.example.com -> [a.b.example.com,
    b.example.com, example.com, com]), so a domain takedown is an equi-join that also covers
    subdomains; the same rule as altlake.urls.host_suffixes."""
    from pyspark.sql import functions as F

    labels = F.split(F.regexp_extract(F.col(column), CANONICAL_HOST_PATTERN, 1), "[.]")
    return F.transform(
        F.sequence(F.lit(1), F.size(labels)), lambda i: F.array_join(F.slice(labels, i, F.size(labels) - i + 1), ".")
    )


def canonical_requests(takedowns):
    """(kind, value) with url and domain values in canonical form: requests recorded before values
    were stored canonical match as well as new ones."""
    from pyspark.sql import functions as F

    as_url, as_host = F.udf(canonical_url, "string"), F.udf(canonical_host, "string")
    urls = takedowns.where("kind = 'url'").select("kind", as_url("value").alias("value"))
    domains = takedowns.where("kind = 'domain'").select("kind", as_host("value").alias("value"))
    hashes = takedowns.where(~F.col("kind").isin("url", "domain", "pdq")).select("kind", "value")
    return urls.unionByName(domains).unionByName(hashes).where(F.col("value").isNotNull())


def match_takedowns(df, takedowns, hash_columns: tuple[str, ...] = ()):
    """(uid, kind, value) for every row of `df` and request that matches it: url and domain
    requests against `url_canonical` when `df` has it (candidates, and what is built from them),
    hash requests against the given hash columns: sha256 / md5 by equality, pdq by Hamming distance
    (rows hashed before PDQ existed, such as an older table version, have no pdq to match)."""
    from functools import reduce

    from pyspark.sql import functions as F

    requests = canonical_requests(takedowns)
    matched = []
    if "url_canonical" in df.columns:
        urls = requests.where("kind = 'url'")
        matched.append(df.join(urls, df["url_canonical"] == urls["value"]).select("uid", "kind", "value"))
        hosts = df.select("uid", F.explode(host_suffixes()).alias("value"))
        matched.append(hosts.join(requests.where("kind = 'domain'"), "value").select("uid", "kind", "value"))
    for column in hash_columns:
        if column == "pdq":
            if "pdq" in df.columns:
                matched.append(_pdq_matches(df, takedowns))
            continue
        hashed = df.select("uid", F.lower(F.col(column)).alias("value")).where(F.col("value").isNotNull())
        matched.append(hashed.join(requests.where(F.col("kind") == column), "value").select("uid", "kind", "value"))
    if not matched:
        raise ValueError(f"nothing to match takedowns on: no url_canonical and no hash column in {df.columns}")
    return reduce(lambda a, b: a.unionByName(b), matched).distinct()


def pdq_distance(a, b):
    """Spark expression: the Hamming distance of two PDQ hex columns (eight 32-bit words, so
    every word fits a signed bigint); the same as altlake.perceptual.distance."""
    from pyspark.sql import functions as F

    word = lambda column, i: F.conv(F.substring(column, 8 * i + 1, 8), 16, 10).cast("bigint")  # noqa: E731
    return sum(F.bit_count(word(a, i).bitwiseXOR(word(b, i))) for i in range(perceptual.HASH_HEX // 8))


def _pdq_matches(df, takedowns):
    """(uid, kind, value) for rows whose pdq is within a pdq request's distance: requests are few,
    so they are broadcast to every partition of the rows."""
    from pyspark.sql import functions as F

    requests = takedowns.where("kind = 'pdq'").select(
        F.lower("value").alias("value"), F.coalesce("max_distance", F.lit(perceptual.DEFAULT_MAX_DISTANCE)).alias("_max")
    )
    hashed = df.select("uid", F.lower("pdq").alias("_pdq")).where(F.col("_pdq").rlike(f"^[0-9a-f]{{{perceptual.HASH_HEX}}}$"))
    near = hashed.join(F.broadcast(requests), pdq_distance(F.col("_pdq"), F.col("value")) <= F.col("_max"))
    return near.select("uid", F.lit("pdq").alias("kind"), "value")


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
    # url and domain requests match candidates (scores and pairs only hold candidates' uids);
    # hash requests match the downloaded images. Every uid matched goes from all three tables.
    matched = (
        match_takedowns(candidates, takedowns)
        .unionByName(match_takedowns(scores, takedowns, HASH_COLUMNS))
        .unionByName(match_takedowns(pairs, takedowns, HASH_COLUMNS))
        .select("uid", "kind")
        .distinct()
        .cache()
    )
    by_kind = {row["kind"]: row["count"] for row in matched.groupBy("kind").count().collect()}
    # Cut from its sources: deleting from candidates must not change the uids scores and pairs lose.
    uids = matched.select("uid").distinct().localCheckpoint(eager=True)
    n_uids = uids.count()
    deleted, deletes = {}, []
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
        metrics = commit_metrics(spark, settings, name, before)
        deleted[name] = metrics.get("numTargetRowsDeleted", 0)
        if deleted[name]:
            # taken after the commit: every file the delete removed was removed before this time
            deletes.append((name, table_version(spark, settings, name), deleted[name], metrics.get("numTargetFilesRemoved"), datetime.now(timezone.utc)))
    matched.unpersist()
    apply_id = _record_apply(spark, settings, version, deletes)
    return {
        "apply_id": apply_id,
        "takedowns_version": version,
        "requests": takedowns.count(),
        "matched_uids": n_uids,
        "matched_by_kind": {kind: int(by_kind.get(kind, 0)) for kind in TAKEDOWN_KINDS},
        "deleted": deleted,
    }


# --- purge: the removed rows leave the tables' history ---------------------------------------------

PURGED_TABLES = ("candidates", "scores", "pairs")
_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


def _record_apply(spark, settings: Settings, takedowns_version: int, deletes: list) -> str | None:
    """One `purges` row per table the apply deleted rows from (nothing when it deleted nothing)."""
    if not deletes:
        return None
    import uuid

    apply_id = f"{deletes[0][4]:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    grace = timedelta(hours=settings.takedown_grace_hours)
    rows = [
        {"apply_id": apply_id, "table_name": name, "table_version": table_ver, "takedowns_version": takedowns_version,
         "rows_deleted": n_rows, "files_rewritten": files, "applied_at": at, "grace_hours": settings.takedown_grace_hours,
         "purge_after": at + grace, "purged_at": None, "retention_hours": None, "vacuum_retain_hours": None,
         "files_removed": None, "vacuum_version": None}
        for name, table_ver, n_rows, files, at in deletes
    ]  # fmt: skip
    frame = spark.createDataFrame([tuple(r[c] for c in PURGES.column_names) for r in rows], PURGES.spark_ddl())
    frame.write.format("delta").mode("append").save(table_path(settings, "purges"))
    return apply_id


def retention_properties(settings: Settings) -> dict[str, str]:
    """The Delta table properties that keep `history_retention_hours` of history: removed data
    files (what VACUUM may delete without RETAIN) and log entries (expired at checkpoints)."""
    interval = f"interval {settings.history_retention_hours} hours"
    return {"delta.deletedFileRetentionDuration": interval, "delta.logRetentionDuration": interval}


def set_history_retention(spark, settings: Settings, names: Iterable[str] = tuple(TABLES)) -> list[str]:
    """Set the retention properties on every table whose values differ; returns the tables changed
    (unchanged tables get no commit)."""
    from delta.tables import DeltaTable

    wanted, changed = retention_properties(settings), []
    for name in names:
        path = table_path(settings, name)
        current = DeltaTable.forPath(spark, path).detail().first()["properties"] or {}
        if all(current.get(k) == v for k, v in wanted.items()):
            continue
        assignments = ", ".join(f"'{k}' = '{v}'" for k, v in wanted.items())
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({assignments})")
        changed.append(name)
    return changed


def _removed_files(settings: Settings, name: str, version: int) -> list[str] | None:
    """Storage paths of the data files the commit `version` removed (None when that commit's log
    entry has already expired)."""
    from urllib.parse import unquote

    from spark_jobs.session import lake_fs

    root = table_path(settings, name).rstrip("/")
    filesystem, log = lake_fs(settings, f"{root}/_delta_log/{version:020d}.json")
    try:
        with filesystem.open_input_stream(log) as f:
            lines = f.read().decode("utf-8").splitlines()
    except (FileNotFoundError, OSError):
        return None
    paths = []
    for line in lines:
        remove = json.loads(line).get("remove") if line.strip() else None
        if remove:
            path = unquote(remove["path"])
            paths.append(path if "://" in path or path.startswith("/") else f"{root}/{path}")
    return paths


def _files_present(settings: Settings, paths: list[str]) -> list[str]:
    from pyarrow import fs

    from spark_jobs.session import lake_fs

    present = []
    for path in paths:
        filesystem, local = lake_fs(settings, path.removeprefix("file:"))
        if filesystem.get_file_info(local).type != fs.FileType.NotFound:
            present.append(path)
    return present


def checkpoint_table(spark, settings: Settings, name: str) -> bool:
    """Write a Delta checkpoint now, which also deletes log entries older than the table's
    delta.logRetentionDuration. Delta's Python and SQL APIs have no checkpoint command: this calls
    DeltaLog.checkpoint() in the JVM (an internal API); False when that is unavailable."""
    try:
        jvm_log = spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, table_path(settings, name))
        jvm_log.checkpoint()
        return True
    except Exception as error:  # noqa: BLE001 - a missing internal API must not fail a purge that already vacuumed
        print(f"takedown purge: no checkpoint written for {name}: {str(error).splitlines()[0]}", file=sys.stderr)
        return False


def _due_applies(spark, settings: Settings, now: datetime) -> list[dict]:
    """Unpurged `purges` rows whose grace period (the current setting) has passed at `now`."""
    from pyspark.sql import functions as F

    rows = (
        read_table(spark, settings, "purges")
        .where(F.col("purged_at").isNull())
        .select("apply_id", "table_name", "table_version", "files_rewritten", F.unix_micros("applied_at").alias("applied_us"))
        .collect()
    )
    cutoff = now - timedelta(hours=settings.takedown_grace_hours)
    due = []
    for row in rows:
        applied_at = datetime.fromtimestamp(row["applied_us"] / 1e6, timezone.utc)
        if applied_at <= cutoff:
            due.append({**row.asDict(), "applied_at": applied_at})
    return due


def purge_table(spark, settings: Settings, name: str, applies: list[dict]) -> dict:
    """VACUUM one table so that every file removed at or before its newest due apply is deleted, check
    that the files those applies removed are gone, checkpoint, and record the purge of `applies`.

    VACUUM deletes files whose removal is older than RETAIN hours before the wall clock, so RETAIN is
    the whole hours since the newest apply (rounded down: the cutoff falls at or after it); the
    safety check against a RETAIN under delta.deletedFileRetentionDuration is off for this call only.
    Re-running it is harmless: VACUUM then finds nothing and the check still passes."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = table_path(settings, name)
    newest = max(a["applied_at"] for a in applies)
    retain = max(0, int((datetime.now(timezone.utc) - newest).total_seconds() // 3600))
    previous = spark.conf.get(_RETENTION_CHECK, None)
    spark.conf.set(_RETENTION_CHECK, "false")
    try:
        spark.sql(f"VACUUM delta.`{path}` RETAIN {retain} HOURS").collect()
    finally:
        if previous is None:
            spark.conf.unset(_RETENTION_CHECK)
        else:
            spark.conf.set(_RETENTION_CHECK, previous)
    vacuum_version = table_version(spark, settings, name)
    records, left = [], []
    for apply in applies:
        removed = _removed_files(settings, name, int(apply["table_version"]))
        present = _files_present(settings, removed) if removed is not None else []
        left += present
        records.append((apply["apply_id"], name, None if removed is None else len(removed) - len(present)))
    if left:
        raise RuntimeError(
            f"{path}: {len(left)} file(s) holding taken-down rows survived VACUUM (still referenced: deletion vectors, "
            f"or a RESTORE after the apply?), e.g. {left[0]}"
        )
    checkpointed = checkpoint_table(spark, settings, name)
    purged_at = datetime.now(timezone.utc)
    update = spark.createDataFrame(
        [(apply_id, table, files, purged_at) for apply_id, table, files in records],
        "apply_id string, table_name string, files_removed bigint, purged_at timestamp",
    )
    (
        DeltaTable.forPath(spark, table_path(settings, "purges"))
        .alias("p")
        .merge(update.alias("u"), "p.apply_id = u.apply_id AND p.table_name = u.table_name")
        .whenMatchedUpdate(
            set={
                "purged_at": F.col("u.purged_at"),
                "files_removed": F.col("u.files_removed"),
                "grace_hours": F.lit(settings.takedown_grace_hours),
                "purge_after": F.col("p.applied_at") + F.expr(f"INTERVAL {settings.takedown_grace_hours} HOURS"),
                "retention_hours": F.lit(settings.history_retention_hours),
                "vacuum_retain_hours": F.lit(retain).cast("bigint"),
                "vacuum_version": F.lit(vacuum_version).cast("bigint"),
            }
        )
        .execute()
    )
    return {
        "applies": sorted(a["apply_id"] for a in applies),
        "vacuum_retain_hours": retain,
        "files_removed": sum(f or 0 for _, _, f in records),
        "vacuum_version": vacuum_version,
        "checkpointed": checkpointed,
    }


def purge_takedowns(spark, settings: Settings, now: datetime | None = None) -> dict:
    """Physically delete what takedowns removed, once the grace period has passed.

    Every table gets the retention properties of Settings.history_retention_hours. Then each table
    with an apply older than the grace period (at `now`, default the clock) is vacuumed so that the
    data files that held the removed rows are deleted from storage, and the `purges` rows of those
    applies get purged_at, the retention used and files_removed. Afterwards time travel to a version
    before a purged apply fails (its files are gone): releases built from such versions can no longer
    be rebuilt as they were. Idempotent and resumable: a purge cut short leaves the tables it did not
    reach unpurged (and unrecorded) and the next run finishes them; with nothing due it commits nothing.

    The Delta log keeps file statistics (min/max of the first columns, url among them) in the commits
    that added the removed files until those entries pass delta.logRetentionDuration and a
    checkpoint expires them; the purge writes a checkpoint so that happens at the first chance.
    """
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    retention_set = set_history_retention(spark, settings)
    due = _due_applies(spark, settings, now)
    purged = {}
    for name in PURGED_TABLES:
        applies = [a for a in due if a["table_name"] == name]
        if applies:
            purged[name] = purge_table(spark, settings, name, applies)
    waiting = (
        read_table(spark, settings, "purges").where("purged_at IS NULL").groupBy("table_name").count().collect()
    )
    return {
        "now": now.isoformat(),
        "grace_hours": settings.takedown_grace_hours,
        "retention_hours": settings.history_retention_hours,
        "retention_set_on": retention_set,
        "purged": purged,
        "waiting": {row["table_name"]: int(row["count"]) for row in waiting},
    }


# --- CLI ----------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="record takedown requests (idempotent)")
    add.add_argument("--kind", required=True, choices=TAKEDOWN_KINDS)
    add.add_argument("--value", action="append", default=[], help="a URL, domain or hex digest (repeatable)")
    add.add_argument("--hash-list", help="file of sha256 / md5 digests or PDQ hashes, one per line (or .parquet)")
    add.add_argument("--image", action="append", default=[], help="an image file to take down: its sha256 / md5 digest, or with --kind pdq its perceptual hash (repeatable)")
    add.add_argument(
        "--max-distance", type=int,
        help=f"pdq: the largest Hamming distance of 256 bits that still matches (default {perceptual.DEFAULT_MAX_DISTANCE}, recorded with each request)",
    )  # fmt: skip
    add.add_argument("--blocklist", help="domain blocklist in UT1's layout: a domains file, a category folder, the root folder or its .tar.gz")
    add.add_argument("--category", action="append", default=[], help="UT1 category to load from a root folder or archive (repeatable)")
    add.add_argument("--reason", required=True, help="why, e.g. 'GDPR request 2024-113' or 'CSAM hash list'")
    sub.add_parser("apply", help="delete matching rows from candidates, scores and pairs; add removals addenda to published releases")
    purge = sub.add_parser("purge", help="after the grace period, VACUUM what applies removed out of the tables' history")
    purge.add_argument("--now", help="ISO time to judge the grace period by (default: now; without zone: UTC)")
    for p in (add, sub.choices["apply"], purge):
        p.add_argument("--lake", help="lake root (default: ALTLAKE_LAKE_DIR)")
        p.add_argument("--master", help="Spark master (default: ALTLAKE_SPARK_MASTER)")


def run(args: argparse.Namespace) -> int:
    from spark_jobs.session import get_spark, require_lake

    settings = Settings.from_env(lake_dir=args.lake, spark_master=args.master)
    if args.action == "add":
        try:
            values = list(args.value) + (read_hash_list(args.hash_list, args.kind) if args.hash_list else [])
            values += hashes_of_images(args.image, args.kind) if args.image else []
            if args.blocklist:
                if args.kind != "domain":
                    raise ValueError("--blocklist holds domains: use it with --kind domain")
                listed, skipped = read_domain_list(args.blocklist, args.category)
                values += listed
                if skipped:
                    print(f"altlake takedown add: {len(skipped)} blocklist line(s) skipped, e.g. {skipped[0]}", file=sys.stderr)
        except (OSError, ValueError) as error:
            print(f"altlake takedown add: {error}", file=sys.stderr)
            return 2
        if not values:
            print("altlake takedown add: give --value, --hash-list, --image or --blocklist", file=sys.stderr)
            return 2
        requests = [TakedownRequest(args.kind, v, args.reason, args.max_distance) for v in values]
        try:
            for request in requests:  # before Spark starts: a typo costs a second, not a session
                normalize_value(request.kind, request.value)
                max_distance_of(request)
        except ValueError as error:
            print(f"altlake takedown add: {error}", file=sys.stderr)
            return 2
        try:
            summary = add_takedowns(get_spark(settings, "altlake-takedown"), settings, requests)
        except ValueError as error:
            print(f"altlake takedown add: {error}", file=sys.stderr)
            return 2
    elif args.action == "purge":
        try:
            now = datetime.fromisoformat(args.now) if args.now else None
        except ValueError:
            print(f"altlake takedown purge: --now {args.now!r} is not an ISO time (e.g. 2025-06-01T12:00)", file=sys.stderr)
            return 2
        require_lake(settings)
        summary = purge_takedowns(get_spark(settings, "altlake-takedown"), settings, now)
    else:
        from spark_jobs.removals import amend_releases  # here: removals builds on this module

        require_lake(settings)
        spark = get_spark(settings, "altlake-takedown")
        summary = apply_takedowns(spark, settings)
        summary["releases_amended"] = amend_releases(spark, settings)["amended"]
    print(json.dumps(summary, indent=2))
    for request in summary.get("matched_nothing", []):
        print(f"altlake takedown add: {request} matches no row in the lake yet (it still blocks future crawls)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="takedowns", description="record and apply takedown requests")
    configure(parser)
    return exit_status(parser.prog, lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
