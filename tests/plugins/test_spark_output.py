"""Spark's console output in the task log: each line at the level Spark gave it, never as stderr.

An Airflow 3 task shows whatever it writes to stderr as ERROR lines, and Spark writes every log4j
record there, harmless WARNs included; plugins.spark relays it through a logger instead.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from altlake.config import Settings
from altlake.schemas import TABLES
from plugins import spark
from plugins.jobs import extract_job
from plugins.spark import SparkJobError, SparkOutput, run_spark_submit

REPO = Path(__file__).resolve().parents[2]

# What spark-submit printed on stderr for a job that succeeded, abridged from a real run (the
# first lines are the JVM's and Spark's startup notes, as a local session also prints them).
SUBMIT_STDERR = f"""\
WARNING: Using incubator modules: jdk.incubator.vector
Using Spark's default log4j profile: org/apache/spark/log4j2-defaults.properties
26/11/27 15:52:17 WARN Utils: Your hostname, vm, resolves to a loopback address: 127.0.0.1; using 192.0.2.2 instead (on interface eth0)
26/11/27 15:52:17 WARN NativeCodeLoader: Unable to load native-hadoop library for your platform... using builtin-java classes where applicable
26/11/27 15:52:18 INFO SparkContext: Running Spark version 4.0.1
Setting default log level to "WARN".
{REPO}/spark_jobs/extract.py:40: FutureWarning: a pandas deprecation
  frame = frame.groupby("k").apply(f)
26/11/27 15:52:30 ERROR Executor: Exception in task 0.0 in stage 3.0 (TID 7)
java.io.FileNotFoundException: /data/gone.wat.gz (No such file or directory)
\tat java.base/java.io.FileInputStream.open0(Native Method)
Caused by: java.io.IOException: gone
\t... 12 more
26/11/27 15:52:31 INFO DAGScheduler: Job 3 finished
"""
EXPECTED_LEVELS = [
    logging.WARNING, logging.INFO, logging.WARNING, logging.WARNING, logging.INFO, logging.INFO,
    logging.WARNING, logging.WARNING,  # a Python warning and its source line
    logging.ERROR, logging.ERROR, logging.ERROR, logging.ERROR, logging.ERROR,  # an ERROR record and its stack trace
    logging.INFO,
]  # fmt: skip


def output_records(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == spark.output_log.name]


def test_each_line_keeps_the_level_spark_gave_it(caplog):
    caplog.set_level(logging.DEBUG, logger=spark.output_log.name)
    output = SparkOutput()
    output.feed(SUBMIT_STDERR.encode().splitlines(keepends=True))
    records = output_records(caplog)
    assert [message for _, message in records] == SUBMIT_STDERR.splitlines()
    assert [level for level, _ in records] == EXPECTED_LEVELS
    assert output.tail(60) == SUBMIT_STDERR.rstrip()[-60:]
    python_failure = ["Traceback (most recent call last):", '  File "job.py", line 3, in <module>', "ValueError: no WAT"]
    assert [spark.line_level(line, logging.ERROR) for line in python_failure] == [logging.ERROR] * 3
    assert spark.line_level("spark-submit's own note") == logging.INFO


def fake_spark_submit(monkeypatch, tmp_path: Path, stderr: str, stdout: str, status: int) -> None:
    """spark-submit replaced by a script that prints what a real one would."""
    script = tmp_path / "fake_submit.py"
    script.write_text(f"import sys\nsys.stderr.write({stderr!r})\nsys.stdout.write({stdout!r})\nsys.exit({status})\n")
    monkeypatch.setattr(spark, "spark_submit_command", lambda settings, job: [sys.executable, str(script)])


def test_spark_submit_output_reaches_the_log_at_its_levels_and_the_summary_is_returned(monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=spark.output_log.name)
    summary = {"totals": {"done": 1, "failed": 0, "skipped": 0}, "files": []}
    fake_spark_submit(monkeypatch, tmp_path, SUBMIT_STDERR, "starting\n" + json.dumps(summary, indent=2) + "\n", 0)
    settings = Settings.from_env(environ={}, spark_backend="submit", lake_dir=str(tmp_path / "lake"))

    assert run_spark_submit(settings, extract_job("CC-MAIN-2024-10", ["/data/a.wat.gz"], settings.lake_dir)) == summary
    assert [level for level, _ in output_records(caplog)] == EXPECTED_LEVELS


def test_a_failed_spark_submit_raises_with_the_end_of_its_output(monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=spark.output_log.name)
    stderr = SUBMIT_STDERR + "Traceback (most recent call last):\n  File \"extract.py\", line 9\nValueError: no WAT\n"
    fake_spark_submit(monkeypatch, tmp_path, stderr, "", 1)
    settings = Settings.from_env(environ={}, spark_backend="submit", lake_dir=str(tmp_path / "lake"))

    with pytest.raises(SparkJobError, match=r"exited with status 1 .*\n(.|\n)*ValueError: no WAT"):
        run_spark_submit(settings, extract_job("CC-MAIN-2024-10", ["/data/a.wat.gz"], settings.lake_dir))
    assert output_records(caplog)[-1] == (logging.ERROR, "ValueError: no WAT")


def test_a_local_session_started_by_start_jvm_writes_nothing_to_stderr(tmp_path):
    """A fresh process (this one may already run a JVM): the local backend's session, its startup
    WARNs logged as warnings, and not one line on the stderr Airflow would show as ERROR."""
    probe = textwrap.dedent(
        """
        import logging, os, sys
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s| %(message)s")
        from altlake.config import Settings
        from plugins.spark import start_jvm
        from spark_jobs.session import get_spark
        settings = Settings.from_env(lake_dir=sys.argv[1], spark_master="local[1]", spark_shuffle_partitions=1)
        start_jvm(settings)
        print("ROWS", get_spark(settings, "probe").sql("SHOW TABLES IN altlake").count(), flush=True)
        os._exit(0)  # as the Airflow task runner ends a task's process
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_GATEWAY_PORT"}
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "lake")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == "", done.stderr[-3000:]
    relayed = [line.split("| ", 1) for line in done.stdout.splitlines() if line.split("| ", 1)[0].endswith(" plugins.spark.output")]
    assert ["INFO plugins.spark.output", "Using Spark's default log4j profile: org/apache/spark/log4j2-defaults.properties"] in relayed
    warns = [(level, line) for level, line in relayed if " WARN " in line]
    assert warns and all(level == "WARNING plugins.spark.output" for level, _ in warns), relayed
    assert not any(level.startswith("ERROR") for level, _ in relayed), relayed
    assert f"ROWS {len(TABLES)}" in done.stdout  # the Delta tables exist: the jars and catalog settings reached the JVM
