"""Registers altlake's timetable (plugins.schedules.PresetCron) with Airflow.

Airflow loads this folder's files as plugins under their bare names; the class is imported from its
package here so that it is registered under the import path the DAG files serialize it with.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from plugins.schedules import PresetCron


class AltlakeTimetables(AirflowPlugin):
    name = "altlake_timetables"
    timetables = [PresetCron]
