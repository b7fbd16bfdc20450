"""The build_release DAG's tasks: Airflow's wiring around `spark_jobs.release`, the release's one owner.

validate_candidates -> publish (`build_release`: pairs, the scores/pairs gates, the release files,
their KNN index, the manifest and the `releases` row, the same job `spark-submit spark_jobs/release.py`
and `altlake build-release` run) -> build_index (confirms the manifest's index; indexes older
releases beside their files). What stays here: the run's form (store, thresholds), the S3 endpoint and keys
from an Airflow connection, refusals as Airflow outcomes, and each task's summary line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from altlake import stats
from altlake.config import Settings
from plugins.spark import start_jvm, task_spark

if TYPE_CHECKING:
    from altlake import storage

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


def store_options(settings: Settings, aws_conn_id: str) -> storage.S3Options | None:
    """The release store's S3 endpoint and keys from the Airflow connection (its endpoint_url extra,
    else Settings.s3_endpoint) when the store is on S3; None otherwise (the settings' own)."""
    from altlake import storage  # pyarrow: only tasks pay for it, not DAG parsing

    if not storage.is_object_store(settings.release_dir):
        return None
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=aws_conn_id or DEFAULT_AWS_CONN_ID)
    credentials = None  # a connection without keys that boto3 finds elsewhere: storage's own chain
    if hook.get_session().get_credentials() is not None:
        keys = hook.get_credentials()  # also masks the secret in task logs
        credentials = storage.Credentials(keys.access_key, keys.secret_key, keys.token)
    return storage.S3Options(
        endpoint=hook.conn_config.get_service_endpoint_url("s3") or settings.s3_endpoint,
        credentials=credentials,
        region=hook.conn_config.region_name or "",
    )


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
    """`spark_jobs.release.build_release` (pairs, gates, files, KNN index, manifest, record), its refusals
    turned into Airflow's outcomes. The same inputs on the same day give the same release id, which is
    never written twice: the recorded release is returned instead (so the index task still confirms
    it), or the task is skipped when it was published but never recorded."""
    from altlake.profiles import ProfileError
    from spark_jobs.publish import ReleaseExistsError
    from spark_jobs.quality import QualityGateError
    from spark_jobs.release import IndexerMissingError, MixedModelsError, build_release, recorded_release

    spark = task_spark(settings, "altlake-release")
    try:
        summary = build_release(spark, settings, store_options=store_options(settings, aws_conn_id), run_id=run_id)
    except QualityGateError as error:
        raise AirflowFailException(f"release stopped by a quality gate: {error}") from error
    except (MixedModelsError, ProfileError, IndexerMissingError) as error:
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
    """The publish task's last log line: the release, what it kept of the candidates, what each stage
    dropped and why (the manifest's stages), and the gates."""
    stages = stats.parse(summary["stages"])
    kept = ", ".join(f"{subset} {n}" for subset, n in summary["counts"].items() if n) or "none"
    if summary.get("reused"):
        state = "reused (nothing new: the tables and thresholds are those it was cut from)"
    else:
        state = "published"
    line = (
        f"Summary: release {summary['release_id']} {state} at {summary['location']}: {stages[-1].kept} pair(s) "
        f"kept ({kept}) of {stages[0].taken} candidates; " + stats.summary(summary["stages"])
    )
    if summary.get("gx"):  # a reused release's gates ran when it was published
        line += "; GX: " + ", ".join(
            f"{table} {r['evaluated'] - len(r['failed'])}/{r['evaluated']} expectations passed" for table, r in summary["gx"].items()
        )
    return line


def build_index(settings: Settings, location: str, aws_conn_id: str = DEFAULT_AWS_CONN_ID) -> dict:
    """The release's KNN indices: recorded in its manifest when `publish` built them (nothing to do),
    else (a release published before that, or with --no-index) written beside its files."""
    from spark_jobs.release import index_published_release

    summary = index_published_release(settings, location, store_options(settings, aws_conn_id))
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
