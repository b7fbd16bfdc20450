"""
### apply_takedowns: opt-out and takedown requests -> `takedowns` -> removed from the lake

Daily (re-applies every recorded request to rows that arrived since; off where
`ALTLAKE_SCHEDULES=false`), or **Trigger DAG** with the
form: lists of URLs, domains (subdomains included), sha256 / md5 digests, PDQ perceptual hashes
(with the Hamming distance that still matches), or a hash-list file (Re-LAION-5B style: one hex
digest per line, or a parquet column), and the reason. Tasks:

1. **add**: every request is checked first (a bad entry fails the run and writes nothing), then
   MERGEd into `takedowns` on (kind, value): sending a request twice changes nothing.
2. **apply**: deletes every match from candidates, scores and pairs (a hash match also removes the
   candidate, so it is never downloaded again). The next release drops matches again and records
   the `takedowns` version it honoured in its manifest.
3. **amend_releases**: every published release holding a newly matched row gets a removals
   addendum beside its immutable files (`removals/removals-<takedowns version>.parquet`), so
   holders of a copy know what to delete; `releases` records when; `altlake serve` stops
   returning those rows on its next reload.
4. **purge**: rows deleted by applies older than the grace period (`ALTLAKE_TAKEDOWN_GRACE_HOURS`)
   leave the tables' Delta history for good (VACUUM); recorded in the `purges` table.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from altlake.config import Settings
from altlake.perceptual import DEFAULT_MAX_DISTANCE as PDQ_DEFAULT
from altlake.perceptual import MAX_DISTANCE_LIMIT as PDQ_LIMIT
from plugins import takedowns
from plugins.defaults import DEFAULT_ARGS, SPARK_POOL
from plugins.schedules import schedule


def _list(title: str, description: str) -> Param:
    return Param(None, type=["null", "array"], items={"type": "string"}, title=title, description=description)


PARAMS = {
    "url": _list("URLs", "exact image URLs"),
    "domain": _list("Domains", "host names; their subdomains are covered too"),
    "sha256": _list("SHA-256 digests", "hex digests of image bytes"),
    "md5": _list("MD5 digests", "hex digests of image bytes"),
    "pdq": _list("PDQ hashes", "perceptual hashes (64 hex digits): resized, re-encoded and slightly cropped copies match too"),
    "pdq_max_distance": Param(
        PDQ_DEFAULT, type="integer", minimum=0, maximum=PDQ_LIMIT, title="PDQ maximum distance",
        description=f"differing bits (of 256) that still match; {PDQ_DEFAULT} is ThreatExchange's recommendation",
    ),  # fmt: skip
    "hash_list": Param(None, type=["null", "string"], title="Hash-list file", description="path of a file of digests (one per line, or .parquet)"),
    "hash_list_kind": Param("sha256", type="string", enum=["sha256", "md5", "pdq"], title="Hash-list kind"),
    "reason": Param(None, type=["null", "string"], title="Reason", description="required with any request, e.g. 'GDPR request 2024-113'"),
}

DEPLOYMENT = Settings.from_env()  # parse time: whether time-based schedules are on (ALTLAKE_SCHEDULES)


@dag(
    dag_id="apply_takedowns",
    description="opt-out and takedown requests -> removed from every table",
    schedule=schedule("@daily", DEPLOYMENT.schedules),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    default_args=DEFAULT_ARGS,
    tags=["altlake", "takedowns", "spark"],
    doc_md=__doc__,
)
def apply_takedowns():
    @task(pool=SPARK_POOL)
    def add(params=None) -> dict:
        return takedowns.add(Settings.from_env(), params)

    @task(pool=SPARK_POOL)
    def apply(added: dict) -> dict:
        return takedowns.apply(Settings.from_env(), added)

    @task(pool=SPARK_POOL)
    def amend_releases(applied: dict) -> dict:
        return takedowns.amend(Settings.from_env(), applied)

    @task(pool=SPARK_POOL)
    def purge(amended: dict) -> dict:
        return takedowns.purge(Settings.from_env())

    purge(amend_releases(apply(add())))


apply_takedowns_dag = apply_takedowns()
