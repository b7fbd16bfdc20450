"""What the UI's Schedule column shows for each DAG, read as the DAG processor stores it.

Airflow 3 serves `timetable_summary` (the column's text), `timetable_description` (its tooltip)
and `asset_expression` (the asset list of an asset-triggered DAG) from the serialized DAG.
A cron preset would be stored expanded ("@monthly" read "0 0 1 * *"): the DAGs' PresetCron keeps it,
with the human description in the tooltip, through the serialization every Airflow process reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def served():
    """Each DAG as the DAG processor serializes it, parsed with time-based schedules on."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("ALTLAKE_SCHEDULES", "true")
        bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    return {dag_id: LazyDeserializedDAG.from_dag(dag) for dag_id, dag in bag.dags.items()}


def test_time_based_schedules_read_as_their_preset_with_a_human_description(served):
    ingest, takedowns = served["cc_ingest"].timetable, served["apply_takedowns"].timetable
    assert (ingest.summary, ingest.description) == ("@monthly", "At 00:00, on day 1 of the month")
    assert (takedowns.summary, takedowns.description) == ("@daily", "At 00:00")
    maintenance = served["maintain_lake"].timetable
    assert (maintenance.summary, maintenance.description) == ("@weekly", "At 00:00, only on Sunday")


def test_the_preset_schedule_runs_as_airflow_s_own_cron_trigger(served):
    """Same runs as a plain schedule="@monthly": the next run after a date, from the stored DAG."""
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable
    from pendulum import datetime as dt

    ingest = served["cc_ingest"].timetable
    plain = CronTriggerTimetable("@monthly", timezone="UTC")
    restriction = TimeRestriction(earliest=dt(2025, 1, 1), latest=None, catchup=False)
    last = DataInterval(dt(2026, 11, 1), dt(2026, 11, 1))
    ours = ingest.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
    assert ours == plain.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
    assert ours.run_after == dt(2026, 12, 1)


def test_asset_triggered_dags_list_the_assets_the_docs_name(served):
    from plugins.assets import CANDIDATES_ASSET, SCORES_ASSET

    readme = README.read_text()
    for dag_id, asset in (("score_candidates", CANDIDATES_ASSET), ("build_release", SCORES_ASSET)):
        timetable = served[dag_id].timetable
        assert timetable.summary == "Asset"
        (listed,) = timetable.asset_condition.as_expression()["all"]
        assert (listed["asset"]["name"], listed["asset"]["uri"]) == (asset.name, asset.uri)
        documented = f"`{asset.uri.rstrip('/')}`"  # Airflow stores altlake://candidates as altlake://candidates/
        assert documented in readme and documented in (DAGS_DIR / f"{dag_id}.py").read_text(), f"{documented} is not in the docs"
