"""The backend switch and the spark-submit request (the EMR one is in test_emr.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from altlake.config import Settings
from plugins.jobs import REPO, extract_job
from plugins.spark import check_backend, json_output, settings_env, spark_submit_command


def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="local, submit, emr_serverless"):
        check_backend(Settings.from_env(environ={}, spark_backend="yarn"))
    assert check_backend(Settings.from_env(environ={"ALTLAKE_SPARK_BACKEND": "submit"})) == "submit"


def test_spark_submit_command_carries_the_session_conf_and_the_job(tmp_path):
    settings = Settings.from_env(environ={}, lake_dir=str(tmp_path / "lake"), spark_master="spark://10.0.0.5:7077")
    command = spark_submit_command(settings, extract_job("CC-MAIN-2024-10", ["/data/a.wat.gz"], settings.lake_dir))

    assert Path(command[0]).name == "spark-submit" and Path(command[0]).is_file()
    assert command[1:3] == ["--master", "spark://10.0.0.5:7077"]
    conf = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "--conf")
    assert "spark.master" not in conf  # given once, by --master
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert any("delta-spark" in jar for jar in conf["spark.jars"].split(","))
    script = command.index(str(REPO / "spark_jobs" / "extract.py"))
    assert command[script + 1:] == ["--crawl", "CC-MAIN-2024-10", "--lake", settings.lake_dir, "--wat", "/data/a.wat.gz"]


def test_settings_env_round_trips():
    settings = Settings.from_env(environ={}, spark_backend="submit", spark_shuffle_partitions=3, lake_dir="s3a://b/lake")
    assert settings.threshold_en is None  # unset: left to the scoring profiles, and it stays unset in the job
    assert Settings.from_env(environ=settings_env(settings)) == settings
    explicit = settings.with_(threshold_en=0.31, allow_mixed_models=True)
    assert Settings.from_env(environ=settings_env(explicit)) == explicit


def test_json_output_finds_the_summary_after_other_lines():
    stdout = 'starting\n{\n  "totals": {"done": 1},\n  "files": []\n}\n'
    assert json_output(stdout) == {"totals": {"done": 1}, "files": []}
    assert json_output("no json here\n") is None
