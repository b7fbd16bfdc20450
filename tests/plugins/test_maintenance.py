"""The maintain_lake task's request to the remote Spark backends, and its refusal of a bad form."""

from __future__ import annotations

import pytest

from altlake.config import Settings
from plugins.jobs import REPO
from plugins.maintenance import maintain, maintain_job
from plugins.spark import spark_submit_command


def test_spark_submit_runs_the_maintain_script_for_the_chosen_tables(tmp_path):
    settings = Settings.from_env(environ={}, lake_dir=str(tmp_path / "lake"), spark_master="spark://10.0.0.5:7077")
    command = spark_submit_command(settings, maintain_job(["candidates", "scores"], settings.lake_dir))
    script = command.index(str(REPO / "spark_jobs" / "maintain.py"))
    assert command[script + 1:] == ["--lake", settings.lake_dir, "--table", "candidates", "--table", "scores"]
    assert maintain_job([], "/lake").args == ("--lake", "/lake")  # no --table: every table


def test_a_form_naming_no_lake_table_fails_without_retries(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="no lake table 'candidate'"):
        maintain(Settings.from_env(environ={}, lake_dir=str(tmp_path / "lake")), ["candidate"])
