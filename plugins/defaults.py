"""Defaults every altlake DAG shares: ownership, retries with exponential backoff, the Spark pool."""

from __future__ import annotations

from datetime import timedelta

# Spark tasks take a slot here. One slot locally, because the embedded Derby catalog under the
# lake admits a single JVM; raise it on a cluster with a network metastore (ALTLAKE_METASTORE_URL).
SPARK_POOL = "spark"
SPARK_POOL_SLOTS = 1
SPARK_POOL_DESCRIPTION = "altlake Spark jobs (1 slot: the embedded Derby catalog admits one JVM)"
# Scoring workers (one slot per batch in flight): 2 locally, where each worker loads its own model;
# raise it to the number of GPUs (or Batch / Kubernetes capacity) a deployment can use at once.
SCORING_POOL = "scoring"
SCORING_POOL_SLOTS = 2
SCORING_POOL_DESCRIPTION = "altlake scoring workers (one batch per slot)"

# Where the API server shows the GX Data Docs (plugins/data_docs.py): <airflow>/altlake/gx/<run id>/.
DATA_DOCS_PREFIX = "/altlake"
DATA_DOCS_ROUTE = "gx"


def data_docs_url(base_url: str, run_id: str) -> str:
    """Where a run's Data Docs open in the Airflow UI."""
    return f"{base_url.rstrip('/')}{DATA_DOCS_PREFIX}/{DATA_DOCS_ROUTE}/{run_id}/index.html"


DEFAULT_ARGS = {
    "owner": "altlake-data-eng",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
}
