"""`altlake sql "SELECT ..."`: Spark SQL on the lake's Delta tables, printed as a table, JSON or CSV.

The `altlake` database is current, so tables are addressed by name (candidates, crawl_files, ...).
Only the result goes to stdout (Spark logs to stderr); a bad query prints Spark's one-line reason
to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import csv
import logging
import sys
from datetime import date, datetime
from decimal import Decimal

import orjson

from altlake.config import Settings

FORMATS = ("table", "json", "csv")
_PYSPARK_ERROR_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")
MAX_CELL = 80


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help='e.g. "SELECT language, count(*) FROM candidates GROUP BY 1"')
    parser.add_argument("--lake", help="lake directory or s3a:// URL (default: $ALTLAKE_LAKE_DIR or ./lake)")
    parser.add_argument("--format", choices=FORMATS, default="table")


def run(args: argparse.Namespace) -> int:
    from pyspark.errors import PySparkException

    from spark_jobs.session import get_spark, require_lake

    settings = Settings.from_env(lake_dir=args.lake)
    require_lake(settings)
    spark = get_spark(settings, app_name="altlake-sql")
    for name in _PYSPARK_ERROR_LOGGERS:  # they log the error as JSON on stderr; we print it once, plainly
        logging.getLogger(name).disabled = True
    try:
        frame = spark.sql(args.query)
        columns = frame.columns
        rows = [[_plain(v) for v in row] for row in frame.collect()]
    except PySparkException as exc:
        print(f"altlake sql: {_first_line(exc)}", file=sys.stderr)
        return 1
    write_result(columns, rows, args.format, sys.stdout)
    return 0


def write_result(columns: list[str], rows: list[list], fmt: str, out) -> None:
    """Print rows of plain Python values in one of FORMATS."""
    if fmt == "json":
        records = [dict(zip(columns, row)) for row in rows]
        out.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_csv_cell(v) for v in row] for row in rows])
    else:
        _write_table(columns, rows, out)


def _write_table(columns: list[str], rows: list[list], out) -> None:
    cells = [[_table_cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    line = lambda values: " | ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    out.write(line(columns) + "\n")
    out.write("-+-".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write(line(row) + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def _plain(value):
    """Spark values as JSON-able Python: Rows to dicts, decimals to float, binary to base64."""
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def _table_cell(value) -> str:
    text = "NULL" if value is None else _csv_cell(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _first_line(exc: Exception) -> str:
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__
