"""Time-based schedules that read in the UI as they were written.

Airflow stores a cron preset expanded, so the DAG list would show `@monthly` as `0 0 1 * *`.
`PresetCron` is Airflow's own cron trigger (the timetable a plain `schedule="@monthly"` gets in
Airflow 3: same runs, same data intervals) that keeps the preset as its summary. A serialized DAG
names its timetable by import path, so every Airflow process that reads one (DAG processor,
scheduler, API server, `dag.test()`) must have it registered: `plugins/timetable_plugin.py` does,
for any process whose plugins folder is this one.
"""

from __future__ import annotations

from typing import Any

from airflow.timetables._cron import cron_presets
from airflow.timetables.trigger import CronTriggerTimetable


class PresetCron(CronTriggerTimetable):
    """A cron trigger whose UI summary is the preset it was given ("@monthly"), not its expansion."""

    def __init__(self, cron: str, **kwargs: Any) -> None:
        super().__init__(cron, **kwargs)
        self._preset = cron if cron in cron_presets else None

    @property
    def summary(self) -> str:
        return self._preset or super().summary

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), "preset": self._preset}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> PresetCron:
        timetable = super().deserialize(data)  # built from the expanded expression
        timetable._preset = data.get("preset")
        return timetable


def schedule(preset: str, enabled: bool) -> PresetCron | None:
    """A DAG's time-based schedule, or none where the deployment turned them off (ALTLAKE_SCHEDULES)."""
    return PresetCron(preset, timezone="UTC") if enabled else None
