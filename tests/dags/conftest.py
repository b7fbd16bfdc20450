"""An Airflow metadata database (SQLite, in the run's private AIRFLOW_HOME) with our pools."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def airflow_db():
    """Migrate the test run's SQLite metadata DB once and create the `spark` pool."""
    from airflow import settings as airflow_settings
    from airflow.models.pool import Pool
    from airflow.utils import db

    from plugins.defaults import SCORING_POOL, SCORING_POOL_DESCRIPTION, SCORING_POOL_SLOTS
    from plugins.defaults import SPARK_POOL, SPARK_POOL_DESCRIPTION, SPARK_POOL_SLOTS

    assert "altlake-airflow-" in airflow_settings.SQL_ALCHEMY_CONN, "tests must never touch a real Airflow DB"
    db.initdb()
    Pool.create_or_update_pool(SPARK_POOL, SPARK_POOL_SLOTS, SPARK_POOL_DESCRIPTION, include_deferred=False)
    Pool.create_or_update_pool(SCORING_POOL, SCORING_POOL_SLOTS, SCORING_POOL_DESCRIPTION, include_deferred=True)
    return airflow_settings.SQL_ALCHEMY_CONN
