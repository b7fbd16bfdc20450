"""
### score_candidates: unscored `candidates` -> scoring batches -> workers -> `scores` (Delta)

Runs whenever cc_ingest updates the `altlake://candidates` asset, or **Trigger DAG** with the form
(crawl, batch size, max batches, per-host concurrency and rate). Tasks:

1. **plan**: the Spark planner (`spark_jobs/batches.py`) writes one input parquet per batch and a
   `batches` row; candidates whose download failed for good are never re-queued, retryable
   failures only up to `ALTLAKE_RETRY_LIMITS`. Batches an interrupted run left planned are resumed.
2. **score**: one mapped task per batch on `ALTLAKE_WORKER_BACKEND` (local subprocess | AWS Batch |
   Kubernetes), in the `scoring` pool, retried with exponential backoff.
3. **merge** (runs even when some batches failed): MERGE each finished batch into `scores` on uid
   (repeating it changes nothing); a batch without the worker's `_SUCCESS` is marked failed with
   the reason. Updates the `altlake://scores` asset that build_release is scheduled on.
4. **check**: fails the run, naming each failed batch, when any batch did not finish.

The form's **model profile** picks the models every batch of the run is scored with (and the
thresholds its release applies): one of the deployment's profiles (`ALTLAKE_MODEL_PROFILES`, read
when the DAG is parsed; default `ALTLAKE_MODEL_PROFILE`). The worker backend is a deployment
setting (`ALTLAKE_WORKER_BACKEND`); its form field only confirms it and fails the run on a mismatch.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from altlake.config import Settings
from altlake.names import CRAWL_ID_PATTERN
from plugins import scoring
from plugins.assets import CANDIDATES_ASSET, SCORES_ASSET
from plugins.defaults import DEFAULT_ARGS, SCORING_POOL, SPARK_POOL
from plugins.worker_backends import BACKENDS, score_operator_kwargs

# Parse-time settings: the worker backend, its arguments and retries shape the mapped operator; the
# deployment's model profiles are the form's choices.
DEPLOYMENT = Settings.from_env()
PROFILES = scoring.profile_names(DEPLOYMENT)

PARAMS = {
    "crawl": Param(
        None, type=["null", "string"], pattern=f"^({CRAWL_ID_PATTERN})?$", title="Crawl id",
        description="score only candidates first seen in this crawl; empty: every crawl",
    ),
    "batch_size": Param(None, type=["null", "integer"], minimum=1, title="Batch size", description="uids per batch; empty: ALTLAKE_BATCH_SIZE"),
    "max_batches": Param(None, type=["null", "integer"], minimum=1, title="Max batches", description="plan at most this many new batches"),
    "worker_backend": Param(
        None, type=["null", "string"], enum=[None, *BACKENDS], title="Worker backend",
        values_display={None: "as deployed (ALTLAKE_WORKER_BACKEND)"},
        description="informational: the deployment's ALTLAKE_WORKER_BACKEND decides; a different value fails the run",
    ),
    "profile": Param(
        PROFILES[0], type="string", enum=PROFILES, title="Model profile",
        description="the models every batch is scored with and the thresholds they fit (ALTLAKE_MODEL_PROFILES; 'demo': the demo models)",
    ),
    "rescore": Param(
        False, type="boolean", title="Rescore other profiles' rows",
        description="also score again the rows scored under any other profile (after the deployment moves to this one)",
    ),
    "per_host_concurrency": Param(
        None, type=["null", "integer"], minimum=1, title="Per-host concurrency",
        description="open requests per host at any time; empty: ALTLAKE_PER_HOST_CONCURRENCY (recorded in each batch's _SUCCESS)",
    ),
    "per_host_rate": Param(
        None, type=["null", "number"], minimum=0, title="Per-host rate",
        description="request starts per second per host, 0 = no limit; empty: ALTLAKE_PER_HOST_RATE (recorded in each batch's _SUCCESS)",
    ),
}

SCORE_OPERATOR, SCORE_KWARGS = score_operator_kwargs(DEPLOYMENT, pool=SCORING_POOL)
DEPLOYED_WORKER_ARGS = SCORE_KWARGS.pop("worker_args")  # per batch instead: followed by the run's politeness flags


def score_kwargs(batch: dict) -> dict:
    """One score task's kwargs (a plain function, as XComArg.map needs): ALTLAKE_WORKER_ARGS, then
    the model profile and per-host politeness flags the plan task attached for this run."""
    return scoring.score_kwargs(batch, DEPLOYED_WORKER_ARGS)


@dag(
    dag_id="score_candidates",
    description="new candidates -> download, CLIP and safety scores per batch -> scores (Delta)",
    schedule=[CANDIDATES_ASSET],
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    default_args=DEFAULT_ARGS,
    tags=["altlake", "scoring", "spark", "workers"],
    doc_md=__doc__,
)
def score_candidates():
    @task(pool=SPARK_POOL)
    def plan(params=None, ti=None) -> list[dict]:
        settings = scoring.run_settings(params)
        scoring.check_deployment(settings, params["worker_backend"])
        run_args = [*scoring.profile_args(settings, params["profile"]), *scoring.politeness_args(settings)]
        rescore = params["profile"] if params["rescore"] else None
        planned = scoring.plan(settings, params["crawl"], params["batch_size"], params["max_batches"], rescore)
        ti.xcom_push(key="counts", value=planned["counts"])
        return scoring.with_worker_args(planned["batches"], run_args)

    @task(pool=SPARK_POOL, trigger_rule="all_done", outlets=[SCORES_ASSET])
    def merge(batches: list[dict], params=None, outlet_events=None) -> dict:
        summary = scoring.merge(scoring.run_settings(params), batches)
        outlet_events[SCORES_ASSET].extra = {
            "batches": summary["merged_batches"],
            "rows": summary["rows"],
            "statuses": summary["statuses"],
        }
        return summary

    @task(pool=SPARK_POOL, trigger_rule="all_done")
    def check(batches: list[dict], params=None) -> dict:
        return scoring.check(scoring.run_settings(params), batches)

    batches = plan()
    scored = SCORE_OPERATOR.partial(**SCORE_KWARGS).expand_kwargs(batches.map(score_kwargs))
    scored >> merge(batches) >> check(batches)


score_candidates_dag = score_candidates()
