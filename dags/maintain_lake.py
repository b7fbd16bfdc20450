"""
### maintain_lake: compact, vacuum and checkpoint the lake's Delta tables

Weekly (off where `ALTLAKE_SCHEDULES=false`), or **Trigger DAG** with the tables to maintain
(empty: all). Per-batch MERGEs and appends leave many small files; per table the task runs

1. **OPTIMIZE**: small files become few large ones (rows unchanged);
2. **statistics**: data files lacking Delta's min/max statistics get them recomputed;
3. **VACUUM** with `ALTLAKE_HISTORY_RETENTION_HOURS`: files unreferenced for longer are deleted
   (never sooner than the takedown grace period, which the retention is at least);
4. a **checkpoint** of the Delta log.

Every table's effect (files and bytes before and after, files vacuumed, seconds per step, error)
is a row of the `maintenance` table: `altlake sql "SELECT * FROM maintenance ORDER BY started_at DESC"`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from altlake.config import Settings
from altlake.schemas import TABLES
from plugins import maintenance
from plugins.defaults import DEFAULT_ARGS, SPARK_POOL
from plugins.schedules import schedule
from plugins.spark import BACKENDS

PARAMS = {
    "tables": Param(
        None, type=["null", "array"], items={"type": "string", "enum": list(TABLES)}, title="Tables",
        description="the lake tables to maintain; empty: all",
    ),
    "backend": Param(
        None, type=["null", "string"], enum=[None, *BACKENDS], title="Spark backend",
        values_display={None: "as deployed (ALTLAKE_SPARK_BACKEND)"}, description="where Spark runs; default: ALTLAKE_SPARK_BACKEND",
    ),
}

DEPLOYMENT = Settings.from_env()  # parse time: whether time-based schedules are on (ALTLAKE_SCHEDULES)


@dag(
    dag_id="maintain_lake",
    description="lake maintenance: compact small files, vacuum old ones, checkpoint the Delta logs",
    schedule=schedule("@weekly", DEPLOYMENT.schedules),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    default_args=DEFAULT_ARGS,
    tags=["altlake", "maintenance", "spark"],
    doc_md=__doc__,
)
def maintain_lake():
    @task(pool=SPARK_POOL)
    def maintain(params=None, **context) -> dict:
        settings = Settings.from_env(spark_backend=params.get("backend") or None)
        return maintenance.maintain(settings, params.get("tables"), context)

    maintain()


maintain_lake_dag = maintain_lake()
