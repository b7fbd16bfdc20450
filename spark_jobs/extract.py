"""The extraction job: WAT files of one crawl -> `candidates` and `crawl_files` Delta tables.

Each WAT is one Spark task (the path list is parallelized with one partition per file) running
`spark_jobs.wat.process_wat`. Writes are ordered so that killing the job at any moment and running
it again gives exactly the same tables:

1. `candidates` MERGE on uid (insert new pairs, move first/last_seen_crawl of known ones, and opt
   a known one out when it is now seen on a page that opts out: `opt_out`, never cleared). A
   re-run finds its pairs already there and changes nothing.
2. `crawl_files` MERGE on (crawl, path), last: a WAT counts as done only once its pairs are in.

WATs already done for the crawl are skipped; failed ones are tried again (attempts + 1). Failed
WATs contribute no pairs, so a file is all-or-nothing.

    altlake extract --crawl CC-MAIN-2024-10 --wat 'data/*.warc.wat.gz'
    spark-submit --master spark://host:7077 --jars ... spark_jobs/extract.py --crawl ... --wat ...

Exit status: 0 when at least one WAT is done (or all were already done), 1 when every WAT tried
failed (the JSON summary still says why), 2 when the invocation is wrong (no WAT matches, bad args).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import os
import sys
import threading
from datetime import datetime, timezone

import orjson

from altlake.config import Settings, exit_status
from altlake.names import COMMONCRAWL_S3, check_crawl_id
from altlake.paths import LakePaths
from altlake.schemas import CANDIDATES, CRAWL_FILES, FILE_DONE, FILE_FAILED, REJECT_REASONS
from altlake.stats import StageStats, chain
from altlake.urls import canonical_host, canonical_url
from spark_jobs.batches import withdraw_opted_out
from spark_jobs.takedowns import load_domain_blocklist

DEFAULT_WAT_PREFIX = COMMONCRAWL_S3  # the command line runs where Spark reads S3 (altlake.names)
_COUNTS = ("records", "bad_records", "pages", "raw_links", "raw_pairs", "kept_pairs", "opted_out")
SKIPPED = "skipped"


# --- inputs -------------------------------------------------------------------------------------


def resolve_wat_paths(
    specs: list[str], limit: int | None = None, *, prefix: str = DEFAULT_WAT_PREFIX, s3_endpoint: str = ""
) -> list[str]:
    """WAT locations from paths, globs, s3a:// URLs and `wat.paths.gz` listings, in order, deduplicated.

    Local paths become absolute (executors may run elsewhere; the path is the table key). A missing
    local file is kept: the job reports it as failed rather than forgetting it. A glob or a listing
    that yields nothing raises ValueError, as that is a wrong invocation.
    """
    from spark_jobs.wat import open_wat

    found: list[str] = []
    for spec in specs:
        if spec.endswith((".paths.gz", ".paths")):
            with open_wat(spec, s3_endpoint) as raw:
                data = raw.read()
            text = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            entries = [line.strip() for line in text.decode().splitlines() if line.strip()]
            if not entries:
                raise ValueError(f"the listing {spec} is empty")
            found += [e if "://" in e else prefix.rstrip("/") + "/" + e.lstrip("/") for e in entries]
        elif "://" in spec:
            found.append(spec)
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec))
            if not matches:
                raise ValueError(f"no file matches {spec!r}")
            found += [os.path.abspath(m) for m in matches]
        else:
            found.append(os.path.abspath(spec))
    unique = list(dict.fromkeys(found))
    return unique[:limit] if limit is not None else unique


# --- the job ------------------------------------------------------------------------------------


def run_extract(settings: Settings, crawl: str, wat_paths: list[str], spark=None) -> dict:
    """Extract `wat_paths` of `crawl` into the lake; returns {"files": [...], "totals": {...}}. Idempotent."""
    from spark_jobs.session import get_spark

    spark = spark or get_spark(settings, app_name=f"altlake-extract-{crawl}")
    lake = LakePaths(_absolute(settings.lake_dir))
    blocklist = load_domain_blocklist(spark, settings)  # before the WATs: its domains never become candidates
    done = _done_paths(spark, lake, crawl)
    todo = [p for p in wat_paths if p not in done]
    results: list[dict] = []
    inserted = 0
    if todo:
        extracted = _extract(spark, settings, lake, todo)
        try:
            results = extracted.map(lambda item: item[0]).collect()
            now = datetime.now(timezone.utc)
            done_paths = {r["path"] for r in results if r["status"] == FILE_DONE}
            if done_paths:
                inserted, updated = _merge_candidates(spark, lake, crawl, extracted, done_paths, now)
                if updated:  # known pairs seen again, some perhaps now opted out: planned batches must not fetch them
                    withdraw_opted_out(spark, settings)
            _merge_crawl_files(spark, lake, crawl, results, now)
        finally:
            extracted.unpersist()
    files = [_file_summary(r) for r in results] + [
        {"path": p, "status": SKIPPED, "error": None} for p in wat_paths if p in done
    ]
    summary = {"files": files, "totals": _totals(results, len(wat_paths) - len(todo), inserted)}
    return {**summary, "blocklist": blocklist} if blocklist else summary


def _done_paths(spark, lake: LakePaths, crawl: str) -> set[str]:
    rows = (
        spark.read.format("delta")
        .load(lake.table(CRAWL_FILES.name))
        .where(f"crawl = '{_sql_str(crawl)}' AND status = '{FILE_DONE}'")
        .select("path")
        .collect()
    )
    return {r.path for r in rows}


def _takedowns(spark, lake: LakePaths) -> tuple[frozenset[str], frozenset[str]]:
    rows = spark.read.format("delta").load(lake.table("takedowns")).where("kind IN ('url', 'domain')").collect()
    # Canonical again on read: requests recorded before values were stored canonical still match.
    urls = frozenset(filter(None, (canonical_url(r.value) for r in rows if r.kind == "url")))
    domains = frozenset(filter(None, (canonical_host(r.value) for r in rows if r.kind == "domain")))
    return urls, domains


def _extract(spark, settings: Settings, lake: LakePaths, paths: list[str]):
    """A persisted RDD of (counts, pairs) per WAT: process_wat on every path, one task each."""
    from pyspark import StorageLevel

    from spark_jobs.wat import meta_opt_out_names

    urls, domains = _takedowns(spark, lake)
    sc = spark.sparkContext
    takedowns = sc.broadcast((urls, domains))
    endpoint = settings.s3_endpoint
    meta_names = meta_opt_out_names(settings.user_agent, settings.ai_crawler_tokens)  # whose noai speaks to us

    def extract_partition(partition):
        from spark_jobs.wat import process_wat

        url_set, domain_set = takedowns.value
        for path in partition:
            result = process_wat(
                path, s3_endpoint=endpoint, takedown_urls=url_set, takedown_domains=domain_set, meta_names=meta_names
            )
            summary = result.summary()
            pairs = [
                (p.uid, p.url, p.url_canonical, p.text, p.page_url, p.language, p.language_score, p.license, p.opt_out)
                for p in result.pairs
            ]
            yield summary, pairs

    sc.setJobGroup("altlake-extract", f"extract {len(paths)} WAT files")
    extracted = sc.parallelize(paths, len(paths)).mapPartitions(extract_partition)
    extracted = extracted.persist(StorageLevel.MEMORY_AND_DISK)
    with _TaskProgress(sc, len(paths)):
        extracted.count()  # the extraction itself, once; the merges read the persisted result
    return extracted


def _merge_candidates(spark, lake: LakePaths, crawl: str, extracted, done_paths: set[str], now: datetime) -> tuple[int, int]:
    """Insert new pairs of the done files; known pairs only get their seen-crawl range widened (and an
    opt-out when a page now has one). Returns (inserted, updated) rows."""
    from delta.tables import DeltaTable
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    pairs_rdd = extracted.filter(lambda item: item[0]["path"] in done_paths).flatMap(
        lambda item: [(item[0]["path"], *pair) for pair in item[1]]
    )
    columns = (
        "wat_path string, uid string, url string, url_canonical string, text string, page_url string,"
        " language string, language_score float, license string, opt_out string"
    )
    pairs = spark.createDataFrame(pairs_rdd, columns)
    # One row per uid: the first sighting in path order, so every run picks the same one; opted out
    # when any of its sightings is (an opt-out is never lost to an earlier sighting without one).
    first = Window.partitionBy("uid").orderBy("wat_path", "page_url")
    source = (
        pairs.withColumn("_n", F.row_number().over(first))
        .withColumn("opt_out", F.max("opt_out").over(Window.partitionBy("uid")))
        .where("_n = 1")
        .select(
            *[F.col(c.name) for c in CANDIDATES.columns if c.name not in ("first_seen_crawl", "last_seen_crawl", "ingested_at")],
            F.lit(crawl).alias("first_seen_crawl"),
            F.lit(crawl).alias("last_seen_crawl"),
            F.lit(now).cast("timestamp").alias("ingested_at"),
        )
    )
    table = DeltaTable.forPath(spark, lake.table(CANDIDATES.name))
    (
        table.alias("t")
        .merge(source.alias("s"), "t.uid = s.uid")
        .whenMatchedUpdate(
            # A known pair seen again with an opt-out becomes opted out; one never loses its opt-out.
            condition=(
                "s.last_seen_crawl > t.last_seen_crawl OR s.first_seen_crawl < t.first_seen_crawl"
                " OR (t.opt_out IS NULL AND s.opt_out IS NOT NULL)"
            ),
            set={
                "last_seen_crawl": "greatest(t.last_seen_crawl, s.last_seen_crawl)",
                "first_seen_crawl": "least(t.first_seen_crawl, s.first_seen_crawl)",
                "opt_out": "coalesce(t.opt_out, s.opt_out)",
            },
        )
        .whenNotMatchedInsertAll()
        .execute()
    )
    metrics = table.history(1).select("operationMetrics").first()[0] or {}
    return int(metrics.get("numTargetRowsInserted", 0)), int(metrics.get("numTargetRowsUpdated", 0))


def _merge_crawl_files(spark, lake: LakePaths, crawl: str, results: list[dict], now: datetime) -> None:
    """Record each file's outcome, last, so a file is only `done` once its pairs are in."""
    from delta.tables import DeltaTable

    rows = [
        (
            crawl,
            r["path"],
            r["status"],
            r["error"],
            *(int(r[c]) for c in _COUNTS),
            {k: int(v) for k, v in r["rejected"].items()},
            1,
            datetime.fromtimestamp(now.timestamp() - r["duration_s"], timezone.utc),
            now,
            float(r["duration_s"]),
        )
        for r in results
    ]
    source = spark.createDataFrame(rows, CRAWL_FILES.spark_ddl())
    updates = {c: f"s.{c}" for c in CRAWL_FILES.column_names if c not in ("crawl", "path", "attempts")}
    updates["attempts"] = "t.attempts + 1"
    (
        DeltaTable.forPath(spark, lake.table(CRAWL_FILES.name))
        .alias("t")
        .merge(source.alias("s"), "t.crawl = s.crawl AND t.path = s.path")
        .whenMatchedUpdate(condition=f"t.status <> '{FILE_DONE}'", set=updates)
        .whenNotMatchedInsertAll()
        .execute()
    )


def _file_summary(result: dict) -> dict:
    keys = ("path", "status", "error", *_COUNTS, "rejected", "duration_s")
    return {k: result[k] for k in keys}


def _totals(results: list[dict], skipped: int, inserted: int) -> dict:
    totals: dict = {
        "files": len(results) + skipped,
        FILE_DONE: sum(r["status"] == FILE_DONE for r in results),
        FILE_FAILED: sum(r["status"] == FILE_FAILED for r in results),
        SKIPPED: skipped,
    }
    for key in _COUNTS:
        totals[key] = sum(r[key] for r in results)
    totals["new_candidates"] = inserted
    # The ingested files' distinct pairs through the LAION-5B rules, then into `candidates` (a pair
    # already there, or found in another WAT of this run, is not inserted again).
    done = [r for r in results if r["status"] == FILE_DONE]
    rejected = {reason: sum(r["rejected"][reason] for r in done) for reason in REJECT_REASONS}
    rules = StageStats("rules", sum(r["raw_pairs"] for r in done), rejected)
    totals["stages"] = chain([rules, StageStats("candidates", rules.kept, {"already_a_candidate": rules.kept - inserted})])
    return totals


class _TaskProgress:
    """A tqdm bar on stderr that follows the extraction's finished tasks (one per WAT)."""

    def __init__(self, sc, total: int):
        self._sc, self._total = sc, total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _follow(self) -> None:
        from tqdm import tqdm

        tracker = self._sc.statusTracker()
        with tqdm(total=self._total, desc="WAT files", unit="file", file=sys.stderr, disable=None) as bar:
            while True:
                finished = self._stop.wait(1.0)
                completed = 0
                for job_id in tracker.getJobIdsForGroup("altlake-extract"):
                    job = tracker.getJobInfo(job_id)
                    for stage_id in job.stageIds if job else ():
                        stage = tracker.getStageInfo(stage_id)
                        completed += stage.numCompletedTasks if stage else 0
                bar.update(min(completed, self._total) - bar.n)
                if finished:
                    bar.update(self._total - bar.n)
                    return


def _sql_str(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _absolute(lake_dir: str) -> str:
    return lake_dir if "://" in lake_dir else os.path.abspath(lake_dir)


# --- command line -------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crawl", required=True, help="crawl id, e.g. CC-MAIN-2024-10")
    parser.add_argument(
        "--wat", nargs="+", required=True, metavar="PATH",
        help="WAT files: local paths, globs, s3a:// URLs, or the crawl's wat.paths.gz listing",
    )
    parser.add_argument("--limit", type=int, help="take only the first N WATs")
    parser.add_argument("--lake", help="lake directory or s3a:// URL (default: $ALTLAKE_LAKE_DIR or ./lake)")
    parser.add_argument("--master", help="Spark master (default: $ALTLAKE_SPARK_MASTER or local[*])")
    parser.add_argument("--wat-prefix", default=DEFAULT_WAT_PREFIX, help="prefix of the entries of a wat.paths.gz listing")


def run(args: argparse.Namespace) -> int:
    try:  # before anything reads or writes: MERGE orders crawls by their ids
        check_crawl_id(args.crawl)
    except ValueError as exc:
        print(f"altlake extract: {exc}", file=sys.stderr)
        return 2
    settings = Settings.from_env(lake_dir=args.lake, spark_master=args.master or None)
    try:
        paths = resolve_wat_paths(args.wat, args.limit, prefix=args.wat_prefix, s3_endpoint=settings.s3_endpoint)
    except (ValueError, OSError) as exc:
        print(f"altlake extract: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print("altlake extract: no WAT files to process", file=sys.stderr)
        return 2
    summary = run_extract(settings, args.crawl, paths)
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    totals = summary["totals"]
    all_failed = totals[FILE_FAILED] > 0 and totals[FILE_DONE] == 0 and totals[SKIPPED] == 0
    return 1 if all_failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="extract.py", description="extract image/alt-text pairs from WAT files")
    configure(parser)
    return exit_status(parser.prog, lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
