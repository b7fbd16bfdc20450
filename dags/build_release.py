"""
### build_release: `candidates` + `scores` -> gated `pairs` -> a published, indexed release

Runs whenever score_candidates updates the `altlake://scores` asset, or **Trigger DAG** with the
form (release store, threshold overrides, AWS connection). Tasks:

1. **validate_candidates**: the Great Expectations `candidates` suite over the whole table.
2. **publish**: pairs at pinned Delta versions (thresholds, exact dedup, takedowns, near-duplicate
   marks), the `scores` and `pairs` gates (a failing expectation stops the release and is named in
   the log; Data Docs under `<lake>/gx/<run id>/`), then the LAION-compatible parquet, embeddings,
   report and manifest to the release store (a local directory, or s3:// through the Amazon
   provider's S3Hook), and a row in `releases`. The manifest records the takedowns version honoured
   and the KNN index (`explore/index.py`), built from the staged files before publishing: kind,
   parameters, recall@10 against exact search, checksums.
   Same inputs on the same day = same release id, never written twice: the recorded one is reused.
3. **build_index**: confirms the index in the manifest; a release published before indices were
   part of publishing gets `index/` written beside its files (the manifest stays untouched).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from plugins import release
from plugins.assets import SCORES_ASSET
from plugins.defaults import DEFAULT_ARGS, SPARK_POOL

PARAMS = {
    "release_store": Param(
        None, type=["null", "string"], title="Release store",
        description="a directory or s3://bucket/prefix; empty: ALTLAKE_RELEASE_STORE (default <lake>/releases)",
    ),
    "thresholds": Param(
        None, type=["null", "object"], title="Threshold overrides",
        description='e.g. {"en": 0.3, "other": 0.28, "near_duplicate_cosine": 0.95}, for every row; empty: the thresholds of the model profile that scored each row (or ALTLAKE_THRESHOLD_*)',
        properties={name: {"type": "number", "minimum": -1, "maximum": 1} for name in release.THRESHOLD_FIELDS},
        additionalProperties=False,
    ),
    "aws_conn_id": Param(release.DEFAULT_AWS_CONN_ID, type="string", title="AWS connection", description="used for s3:// release stores"),
}


@dag(
    dag_id="build_release",
    description="scores -> gated, deduplicated pairs -> a versioned release with its KNN index",
    schedule=[SCORES_ASSET],
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    default_args=DEFAULT_ARGS,
    tags=["altlake", "release", "spark", "gx"],
    doc_md=__doc__,
)
def build_release():
    @task(pool=SPARK_POOL)
    def validate_candidates(params=None, run_id=None) -> dict:
        return release.validate_candidates(release.run_settings(params), run_id)

    @task(pool=SPARK_POOL)
    def publish(gate: dict, params=None, run_id=None) -> dict:
        return release.publish(release.run_settings(params), run_id, params["aws_conn_id"])

    @task
    def build_index(published: dict, params=None) -> dict:
        return release.build_index(release.run_settings(params), published["location"], params["aws_conn_id"])

    build_index(publish(validate_candidates()))


build_release_dag = build_release()
