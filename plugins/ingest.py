"""What the cc_ingest DAG's tasks do, as plain functions (the DAG file only wires them).

resolve_inputs -> extract -> validate_candidates; each takes Settings (ALTLAKE_* plus the run's
form overrides) and returns a small JSON-able dict for XCom.
"""

from __future__ import annotations

import logging

from airflow.configuration import conf
from airflow.sdk.exceptions import AirflowFailException

from altlake import stats
from altlake.config import Settings
from altlake.names import COMMONCRAWL_HTTPS, check_crawl_id
from altlake.schemas import CANDIDATES, FILE_DONE, FILE_FAILED
from plugins.crawls import newest_crawl
from plugins.defaults import data_docs_url
from plugins.spark import run_extract_job, run_quality_job
from spark_jobs.quality import QualityGateError

log = logging.getLogger(__name__)

# Where a crawl's WAT listing and files live when no explicit paths are given. HTTPS works
# anywhere without AWS credentials; on AWS, COMMONCRAWL_S3 reads the same objects in-region.
DEFAULT_WAT_PREFIX = COMMONCRAWL_HTTPS


def run_settings(params: dict) -> Settings:
    """ALTLAKE_* settings with the run's form overrides (empty fields keep the settings)."""
    return Settings.from_env(spark_backend=params.get("backend") or None, spark_master=params.get("spark_master") or None)


def resolve_inputs(
    settings: Settings,
    crawl: str | None,
    wat_paths: list[str] | None = None,
    wat_limit: int | None = None,
    wat_prefix: str = DEFAULT_WAT_PREFIX,
) -> dict:
    """The crawl (the newest in the crawl list unless given) and its WAT files: the explicit
    paths, else the crawl's `wat.paths.gz` listing, cut to `wat_limit`."""
    from spark_jobs.extract import resolve_wat_paths

    crawl = crawl or newest_crawl(settings.crawl_list_url)
    try:
        check_crawl_id(crawl)
    except ValueError as error:
        raise AirflowFailException(str(error)) from error
    specs = wat_paths or [f"{wat_prefix.rstrip('/')}/crawl-data/{crawl}/wat.paths.gz"]
    try:
        paths = resolve_wat_paths(specs, wat_limit, prefix=wat_prefix, s3_endpoint=settings.s3_endpoint)
    except ValueError as error:  # a glob or listing that names nothing: retrying cannot help
        raise AirflowFailException(f"no WAT files for {crawl}: {error}") from error
    log.info("crawl %s: %d WAT files (first: %s)", crawl, len(paths), paths[:1])
    return {"crawl": crawl, "wat_paths": paths}


def extract(settings: Settings, crawl: str, wat_paths: list[str], context=None) -> dict:
    """Run the extraction; fail (and retry) only when no WAT of this run could be read.

    Individual failed WATs are recorded in `crawl_files` with their reason and tried again by the
    next run, so they do not fail the task.
    """
    summary = run_extract_job(settings, crawl, wat_paths, context)
    totals = summary.get("totals")
    if totals is None:  # EMR Serverless: the summary is in the job's logs and in crawl_files
        return {"crawl": crawl, **summary}
    failed = [f for f in summary["files"] if f["status"] == FILE_FAILED]
    for item in failed:
        log.warning("WAT failed: %s: %s", item["path"], item["error"])
    log.info("%s", extract_summary_line(crawl, totals))
    if failed and totals[FILE_DONE] == 0 and totals["skipped"] == 0:
        raise RuntimeError(f"every WAT of {crawl} failed; first reason: {failed[0]['error']}")
    return {"crawl": crawl, "totals": totals, "failed": [{"path": f["path"], "error": f["error"]} for f in failed]}


def extract_summary_line(crawl: str, totals: dict) -> str:
    """What a person reads last in the task log: what came in, what was kept, what was skipped and why."""
    files = totals[FILE_DONE] + totals[FILE_FAILED] + totals["skipped"]
    parts = [
        f"Summary: {crawl}: {files} WAT file(s): {totals[FILE_DONE]} ingested, {totals['skipped']} skipped "
        f"(already ingested by an earlier run), {totals[FILE_FAILED]} failed (recorded in crawl_files, retried next run)",
        f"{totals.get('new_candidates', 0)} new candidate pair(s)",
    ]
    if totals.get("stages") and totals[FILE_DONE]:
        parts.append("distinct pairs " + stats.summary(totals["stages"]))
    if files and totals["skipped"] == files:
        parts.append("nothing new to ingest")
    return "; ".join(parts)


def validate_candidates(settings: Settings, crawl: str, run_id: str, context=None) -> dict:
    """The GX gate on this crawl's candidates. Bad data fails the task at once (no retry: the
    same rows would fail again); a crashed job raises anything else and is retried."""
    try:
        report = run_quality_job(settings, CANDIDATES.name, run_id, crawl, context)
    except QualityGateError as error:
        raise AirflowFailException(f"quality gate failed for crawl {crawl}: {error}") from error
    log.info("Summary: the GX gate on %s rows of crawl %s passed; Data Docs: %s (files: %s)",
             report.get("n_rows"), crawl, data_docs_url(conf.get("api", "base_url", fallback=""), run_id), report.get("docs_dir"))  # fmt: skip
    return report
