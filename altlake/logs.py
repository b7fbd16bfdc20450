"""Log lines every runtime writes the same way: which run, which job, which batch, on every line.

A team greps one run's lines out of Spark drivers, workers and Airflow task logs (ALTLAKE_LOG_FORMAT=text),
or ships them to a log store as JSON (ALTLAKE_LOG_FORMAT=json: one object per line). The run id is ALTLAKE_RUN_ID, else
the Airflow run a task process belongs to (AIRFLOW_CTX_DAG_RUN_ID, which Airflow puts in every task's
environment and its subprocesses inherit); the batch id is set while a worker scores a batch.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator

FORMAT_VARIABLE = "ALTLAKE_LOG_FORMAT"  # text | json; unset: Python's defaults (warnings only, bare)
RUN_ID_VARIABLE = "ALTLAKE_RUN_ID"
AIRFLOW_RUN_ID_VARIABLE = "AIRFLOW_CTX_DAG_RUN_ID"
FORMATS = ("text", "json")
# The fields every line carries, beside the time, level, logger and message.
CONTEXT_FIELDS = ("run_id", "job", "batch_id")

_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("altlake_job", default=None)
_batch_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("altlake_batch_id", default=None)
# Attributes every LogRecord has: anything else on a record came from `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", *CONTEXT_FIELDS}


def run_id() -> str | None:
    return os.environ.get(RUN_ID_VARIABLE) or os.environ.get(AIRFLOW_RUN_ID_VARIABLE) or None


@contextlib.contextmanager
def batch(batch_id: str) -> Iterator[None]:
    """Every line logged inside carries this batch id (threads started inside copy it only when
    started with contextvars.copy_context; the worker logs from its own thread)."""
    token = _batch_id.set(batch_id)
    try:
        yield
    finally:
        _batch_id.reset(token)


class ContextFilter(logging.Filter):
    """Puts run_id, job and batch_id on every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = run_id()
        record.job = _job.get()
        record.batch_id = _batch_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the context fields, any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **{name: getattr(record, name, None) for name in CONTEXT_FIELDS},
            **{k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")},
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """A person's line, with the context in brackets: `... INFO gpu_workers.worker [run=r job=score batch=b] message`."""

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{k.removesuffix('_id')}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
        text = f"{stamp} {record.levelname} {record.name}{f' [{context}]' if context else ''} {record.getMessage()}"
        return text + (f": {self.formatException(record.exc_info).splitlines()[-1]}" if record.exc_info else "")


def configure(job: str, level: int = logging.INFO, stream=None) -> str | None:
    """With ALTLAKE_LOG_FORMAT set (a deployment sets it; a terminal stays as quiet as before), route
    our packages' log lines (altlake, altlake_cli, spark_jobs, gpu_workers, explore) through one handler
    in that format, tagged with `job`; returns the format used, None when unset. An unknown format
    falls back to text, with a warning line, rather than stopping a job over its logs."""
    _job.set(job)
    chosen = os.environ.get(FORMAT_VARIABLE, "").strip().lower()
    if not chosen:
        return None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    for name in ("altlake", "altlake_cli", "spark_jobs", "gpu_workers", "explore"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_altlake", False)]
        handler._altlake = True  # type: ignore[attr-defined]  # ours, replaced by the next configure
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # one line per record, not one more from a root handler
    if chosen not in FORMATS:
        logging.getLogger("altlake").warning("%s=%r is not one of %s: logging as text", FORMAT_VARIABLE, chosen, ", ".join(FORMATS))
        return "text"
    return chosen
