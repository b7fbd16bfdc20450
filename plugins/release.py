"""What the build_release DAG's tasks do, as plain functions (the DAG file only wires them).

validate_candidates -> publish (pairs, the scores/pairs gates, the release files, their KNN index
built from the staged files and recorded in the manifest, the `releases` row: one function,
`spark_jobs.release.build_release`, so versions are pinned once and nothing is written before every
gate passed) -> build_index (confirms the manifest's index; indexes older releases beside them).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from altlake.config import Settings
from altlake.paths import INDEX_DIR, MANIFEST
from plugins.spark import start_jvm, task_spark

log = logging.getLogger(__name__)

DEFAULT_AWS_CONN_ID = "aws_default"
# Threshold names the form accepts, and the Settings field each one overrides.
THRESHOLD_FIELDS = {"en": "threshold_en", "other": "threshold_other", "near_duplicate_cosine": "near_duplicate_cosine"}


def run_settings(params: dict) -> Settings:
    """ALTLAKE_* settings with the run's release store and threshold overrides."""
    overrides = dict(params.get("thresholds") or {})
    unknown = sorted(set(overrides) - set(THRESHOLD_FIELDS))
    if unknown:
        raise AirflowFailException(f"unknown thresholds {unknown}: use {sorted(THRESHOLD_FIELDS)}")
    values = {THRESHOLD_FIELDS[name]: float(value) for name, value in overrides.items()}
    return Settings.from_env(release_store=params.get("release_store") or None, **values)


def s3_client(settings: Settings, aws_conn_id: str):
    """A boto3 S3 client from the Airflow connection when the store is on S3 (None otherwise)."""
    if not settings.release_dir.startswith(("s3://", "s3a://")):
        return None
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id or DEFAULT_AWS_CONN_ID).get_conn()


def validate_candidates(settings: Settings, run_id: str) -> dict:
    """The `candidates` suite over the whole table: a release is cut from every crawl's rows."""
    from spark_jobs.quality import QualityGateError, validate_table

    start_jvm(settings)
    try:
        report = validate_table(settings, "candidates", run_id)
        report.raise_for_failures()
    except QualityGateError as error:
        raise AirflowFailException(f"release stopped by the candidates gate: {error}") from error
    log.info("Summary: the GX gate on all %s candidate rows passed (Data Docs: %s)", report.n_rows, report.docs_dir)
    return {"table": "candidates", "n_rows": report.n_rows, "success": report.success, "docs_dir": report.docs_dir}


def publish(settings: Settings, run_id: str, aws_conn_id: str = DEFAULT_AWS_CONN_ID) -> dict:
    """Build pairs, gate scores and pairs (a failing expectation stops the release and is named),
    publish the release and record it. The same inputs on the same day give the same release id,
    which is never written twice: the recorded release is returned instead (so its index is still
    built), or the task is skipped when it was published but never recorded."""
    from altlake.profiles import ProfileError
    from explore.index import index_staged_release
    from spark_jobs.publish import ReleaseExistsError
    from spark_jobs.quality import QualityGateError
    from spark_jobs.release import MixedModelsError, build_release

    spark = task_spark(settings, "altlake-release")
    try:
        summary = build_release(spark, settings, client=s3_client(settings, aws_conn_id), run_id=run_id, index_release=index_staged_release)
    except QualityGateError as error:
        raise AirflowFailException(f"release stopped by a quality gate: {error}") from error
    except (MixedModelsError, ProfileError) as error:
        raise AirflowFailException(f"release refused: {error}") from error
    except ReleaseExistsError as error:
        existing = recorded_release(spark, settings)
        if existing is None:
            raise AirflowSkipException(f"nothing new to release: {error}") from error
        log.info("%s", publish_summary_line(existing))
        return existing
    log.info("%s", publish_summary_line(summary))
    return summary


def publish_summary_line(summary: dict) -> str:
    """The publish task's last log line: the release, what it kept of what was scored, why the rest
    was dropped (the manifest's funnel, step by step), and the gates."""
    funnel = summary["funnel"]
    kept = ", ".join(f"{subset} {n}" for subset, n in summary["counts"].items() if n) or "none"
    if summary.get("reused"):
        state = "reused (nothing new: the tables and thresholds are those it was cut from)"
    else:
        state = "published"
    line = (
        f"Summary: release {summary['release_id']} {state} at {summary['location']}: {funnel['after_takedowns']} pair(s) "
        f"kept ({kept}) of {funnel['scored']} scored ({funnel['candidates']} candidates); dropped: "
        f"{funnel['scored'] - funnel['ok']} not downloaded or scored, {funnel['ok'] - funnel['above_threshold']} below "
        f"the similarity threshold, {funnel['above_threshold'] - funnel['after_exact_dedup']} duplicates, "
        f"{funnel['after_exact_dedup'] - funnel['after_takedowns']} taken down; "
        f"{funnel['near_duplicates_marked']} near-duplicate(s) marked, not dropped"
    )
    if summary.get("gx"):  # a reused release's gates ran when it was published
        line += "; GX: " + ", ".join(
            f"{table} {r['evaluated'] - len(r['failed'])}/{r['evaluated']} expectations passed" for table, r in summary["gx"].items()
        )
    return line


def recorded_release(spark, settings: Settings) -> dict | None:
    """The newest recorded release cut from the tables' current versions with these thresholds."""
    from pyspark.sql import functions as F

    from spark_jobs.lake import read_table
    from spark_jobs.release import current_versions, release_models

    versions = current_versions(spark, settings)
    wanted = release_models(spark, settings, versions)[1].section()
    for row in read_table(spark, settings, "releases").orderBy(F.desc("created_at")).collect():
        manifest = json.loads(row["manifest"])
        if manifest["thresholds"] == wanted and all(manifest["sources"].get(k) == v for k, v in versions.items()):
            return {"release_id": row["release_id"], "location": row["location"], "counts": manifest["counts"],
                    "funnel": manifest["funnel"], "reused": True}  # fmt: skip
    return None


def build_index(settings: Settings, location: str, aws_conn_id: str = DEFAULT_AWS_CONN_ID) -> dict:
    """The release's KNN indices: recorded in its manifest when `publish` built them from the staged
    files (nothing to do), else (a release published before that) written beside its files."""
    summary = _build_index(settings, location, aws_conn_id)
    log.info("%s", index_summary_line(summary))
    return summary


def index_summary_line(summary: dict) -> str:
    """The build_index task's last log line: which indices the release has and how exact they are."""
    indices = ", ".join(f"{modality} ({i['kind']}, recall@10 {i['recall_at_10']})" for modality, i in summary["indices"].items())
    if summary["in_manifest"]:
        where = "recorded in its manifest (built before publishing)"
    else:
        where = "up to date beside its files" if summary["skipped"] else "written beside its files"
    return f"Summary: release {summary['release_id']}: KNN indices over {summary['rows']} pair(s) {where}: {indices}"


def _build_index(settings: Settings, location: str, aws_conn_id: str) -> dict:
    """On S3 a release without indices is read into a temporary directory and only the new `index/`
    files are uploaded: the published files, manifest included, stay exactly as released."""
    from explore.index import build_index as build
    from spark_jobs.publish import ReleaseStore

    store = ReleaseStore(settings.release_dir, client=s3_client(settings, aws_conn_id), s3_endpoint=settings.s3_endpoint)
    release_id = location.rstrip("/").rsplit("/", 1)[1]
    manifest = store.read_manifest(release_id)
    if manifest.get("index"):
        return {"release_id": release_id, "rows": manifest["index"]["rows"], "skipped": True, "in_manifest": True,
                "indices": _indices_summary(manifest["index"]["indices"])}  # fmt: skip
    if "://" not in location:
        return _index_summary(build(location))
    prefix = "/".join(p for p in (store.prefix, release_id) if p) + "/"
    with tempfile.TemporaryDirectory(prefix=f"altlake-index-{release_id}-") as tmp:
        local = Path(tmp, release_id)
        for key in _s3_keys(store.client, store.bucket, prefix):
            target = local / key[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            store.client.download_file(store.bucket, key, str(target))
        manifest_before = (local / MANIFEST).read_bytes()
        info = build(str(local))
        (local / MANIFEST).write_bytes(manifest_before)  # published manifests are immutable
        for path in sorted((local / INDEX_DIR).rglob("*")):
            if path.is_file():
                store.client.upload_file(str(path), store.bucket, prefix + path.relative_to(local).as_posix())
    return _index_summary(info)


def _s3_keys(client, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def _index_summary(info: dict) -> dict:
    return {
        "release_id": info["release_id"],
        "rows": info["rows"],
        "skipped": info.get("skipped", False),
        "in_manifest": False,
        "indices": _indices_summary(info["indices"]),
    }


def _indices_summary(indices: dict) -> dict:
    return {m: {k: v for k, v in i.items() if k in ("file", "factory", "kind", "rows", "recall_at_10")} for m, i in indices.items()}
