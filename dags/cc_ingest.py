"""
### cc_ingest: Common Crawl WAT files -> `candidates` (Delta), gated by Great Expectations

Monthly, for the newest crawl in Common Crawl's crawl list (`ALTLAKE_CRAWL_LIST_URL`; off where
`ALTLAKE_SCHEDULES=false`, as under `altlake airflow`); or
**Trigger DAG** with the form to pick a crawl, explicit WAT paths or a WAT limit, and where Spark
runs. Tasks:

1. **resolve_inputs**: the crawl id and its WAT files.
2. **extract**: the Spark extraction (`spark_jobs/extract.py`), MERGE into `candidates` and
   `crawl_files`: re-running is safe, failed WATs are recorded with their reason and retried.
3. **validate_candidates**: the `candidates` suite of `spark_jobs/quality.py` on this crawl's
   rows; Data Docs under `<lake>/gx/<run id>/index.html`. Success updates the
   `altlake://candidates` asset that the scoring DAG is scheduled on.

Spark backend: `ALTLAKE_SPARK_BACKEND` = local (in the task) | submit (spark-submit to
`ALTLAKE_SPARK_MASTER`) | emr_serverless (see infra/aws/README.md); the form can override it.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from altlake.config import Settings
from altlake.names import COMMONCRAWL_S3, CRAWL_ID_PATTERN
from plugins.assets import CANDIDATES_ASSET
from plugins.defaults import DEFAULT_ARGS, SPARK_POOL
from plugins import ingest
from plugins.spark import BACKENDS
from plugins.schedules import schedule

PARAMS = {
    "crawl": Param(
        None, type=["null", "string"], pattern=f"^({CRAWL_ID_PATTERN})?$", title="Crawl id",
        description="e.g. CC-MAIN-2024-10; empty: the newest crawl in the crawl list",
    ),
    "wat_paths": Param(
        None, type=["null", "array"], items={"type": "string"}, title="WAT files",
        description="local paths, globs, s3a:// or https:// URLs, or a wat.paths.gz listing; empty: the crawl's listing",
    ),
    "wat_limit": Param(None, type=["null", "integer"], minimum=1, title="WAT limit", description="take only the first N WAT files"),
    "wat_prefix": Param(
        ingest.DEFAULT_WAT_PREFIX, type="string", title="WAT prefix",
        description=f"prefix of the entries of a wat.paths.gz listing ({COMMONCRAWL_S3} on AWS)",
    ),
    "backend": Param(
        None, type=["null", "string"], enum=[None, *BACKENDS], title="Spark backend",
        values_display={None: "as deployed (ALTLAKE_SPARK_BACKEND)"}, description="where Spark runs; default: ALTLAKE_SPARK_BACKEND",
    ),
    "spark_master": Param(None, type=["null", "string"], title="Spark master", description="e.g. spark://host:7077; empty: ALTLAKE_SPARK_MASTER"),
}

DEPLOYMENT = Settings.from_env()  # parse time: whether time-based schedules are on (ALTLAKE_SCHEDULES)


@dag(
    dag_id="cc_ingest",
    description="Common Crawl WAT files -> image/alt-text candidates (Spark, Delta), gated by GX",
    schedule=schedule("@monthly", DEPLOYMENT.schedules),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    default_args=DEFAULT_ARGS,
    tags=["altlake", "ingest", "spark", "gx"],
    doc_md=__doc__,
)
def cc_ingest():
    @task
    def resolve_inputs(params=None) -> dict:
        settings = ingest.run_settings(params)
        return ingest.resolve_inputs(settings, params["crawl"], params["wat_paths"], params["wat_limit"], params["wat_prefix"])

    @task(pool=SPARK_POOL)
    def extract(inputs: dict, params=None, **context) -> dict:
        return ingest.extract(ingest.run_settings(params), inputs["crawl"], inputs["wat_paths"], context)

    @task(pool=SPARK_POOL, outlets=[CANDIDATES_ASSET])
    def validate_candidates(extracted: dict, params=None, run_id=None, outlet_events=None, **context) -> dict:
        report = ingest.validate_candidates(ingest.run_settings(params), extracted["crawl"], run_id, context)
        outlet_events[CANDIDATES_ASSET].extra = {
            "crawl": extracted["crawl"],
            "rows": report.get("n_rows"),
            "docs_dir": report.get("docs_dir"),
            "run_id": run_id,
        }
        return report

    validate_candidates(extract(resolve_inputs()))


cc_ingest_dag = cc_ingest()
