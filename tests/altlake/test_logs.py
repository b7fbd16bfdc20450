"""Structured log lines: run, job and batch on every line, JSON or text, and quiet when not asked for."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from altlake import logs

REPO = Path(__file__).resolve().parents[2]
OURS = ("altlake", "altlake_cli", "spark_jobs", "gpu_workers", "explore")


@pytest.fixture
def restored_loggers():
    """configure() changes process-wide loggers: put them back for the tests that follow."""
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).level, logging.getLogger(name).propagate) for name in OURS}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.level, logger.propagate = handlers, level, propagate


def _cli(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (logs.FORMAT_VARIABLE, logs.RUN_ID_VARIABLE, logs.AIRFLOW_RUN_ID_VARIABLE)}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "altlake_cli.main", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_job_ends_with_one_json_line_naming_its_run_job_and_status():
    done = _cli({"ALTLAKE_LOG_FORMAT": "json", "ALTLAKE_RUN_ID": "run-42"}, "config", "check")
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(text) for text in done.stderr.splitlines() if text.startswith("{")]
    assert (line["message"], line["job"], line["run_id"], line["exit_status"], line["level"]) == ("finished", "altlake config", "run-42", 0, "info")
    assert line["batch_id"] is None and line["seconds"] >= 0 and line["ts"].endswith("Z")


def test_the_airflow_run_id_is_taken_when_none_is_given_and_text_lines_carry_it():
    done = _cli({"ALTLAKE_LOG_FORMAT": "text", "AIRFLOW_CTX_DAG_RUN_ID": "manual__2026-12-05"}, "config", "check")
    assert done.returncode == 0, done.stderr
    assert "INFO altlake [run=manual__2026-12-05 job=altlake config] finished" in done.stderr


def test_without_a_log_format_a_terminal_stays_quiet():
    done = _cli({}, "config", "check")
    assert done.returncode == 0 and "finished" not in done.stderr and "{" not in done.stderr, done.stderr


def test_lines_inside_a_batch_carry_its_id_and_extra_fields(monkeypatch, restored_loggers):
    monkeypatch.setenv(logs.FORMAT_VARIABLE, "json")
    monkeypatch.setenv(logs.RUN_ID_VARIABLE, "r-1")
    stream = io.StringIO()
    assert logs.configure("altlake score", stream=stream) == "json"
    log = logging.getLogger("gpu_workers.worker")
    with logs.batch("b-7"):
        log.info("batch scored", extra={"rows": 3, "statuses": {"ok": 2, "timeout": 1}})
    log.warning("after the batch")
    inside, after = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["batch_id"], inside["job"], inside["run_id"], inside["rows"], inside["statuses"]) == ("b-7", "altlake score", "r-1", 3, {"ok": 2, "timeout": 1})
    assert inside["logger"] == "gpu_workers.worker" and after["batch_id"] is None and after["level"] == "warning"


def test_an_unknown_format_logs_as_text_and_says_so(monkeypatch, restored_loggers):
    monkeypatch.setenv(logs.FORMAT_VARIABLE, "xml")
    stream = io.StringIO()
    assert logs.configure("altlake extract", stream=stream) == "text"
    logging.getLogger("spark_jobs.extract").info("extracted")
    first, second = stream.getvalue().splitlines()
    assert "ALTLAKE_LOG_FORMAT='xml' is not one of text, json: logging as text" in first
    assert second.endswith("INFO spark_jobs.extract [job=altlake extract] extracted")


def test_without_a_log_format_a_root_logger_that_prints_info_shows_no_finished_line(monkeypatch, restored_loggers):
    """The demo runs Airflow in-process, whose root logger prints INFO to the person's terminal."""
    from altlake.config import exit_status

    monkeypatch.delenv(logs.FORMAT_VARIABLE, raising=False)
    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    level, root.level = root.level, logging.INFO
    try:
        assert exit_status("altlake demo", lambda: 0) == 0
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert "finished" not in stream.getvalue()
