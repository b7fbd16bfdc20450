"""`altlake sql`: results in three formats, clean stdout, one-line errors."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson

from altlake.paths import LakePaths
from altlake_cli.main import main
from spark_jobs.extract import run_extract
from spark_jobs.sql import write_result


def test_formats_render_the_same_rows():
    columns, rows = ["language", "n", "rejected"], [["en", 3, {"gif": 1}], ["de", 1, None]]
    out = io.StringIO()
    write_result(columns, rows, "json", out)
    assert orjson.loads(out.getvalue()) == [dict(zip(columns, r)) for r in rows]
    out = io.StringIO()
    write_result(columns, rows, "csv", out)
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [columns, ["en", "3", '{"gif":1}'], ["de", "1", ""]]
    out = io.StringIO()
    write_result(columns, rows, "table", out)
    lines = out.getvalue().splitlines()
    assert lines[0].split(" | ")[0].strip() == "language" and "NULL" in lines[3] and lines[-1] == "(2 rows)"


def test_sql_on_the_lake_in_process_and_as_a_command(spark, settings, sample_wat, capsys):
    summary = run_extract(settings, "CC-MAIN-2015-18", [str(sample_wat)], spark=spark)
    assert summary["totals"]["done"] == 1
    expected = Counter(r.language for r in spark.read.format("delta").load(f"{settings.lake_dir}/tables/candidates").collect())
    assert sum(expected.values()) > 0

    query = "SELECT language, count(*) AS n FROM candidates GROUP BY 1 ORDER BY 1"
    assert main(["sql", query, "--lake", settings.lake_dir, "--format", "json"]) == 0
    assert {r["language"]: r["n"] for r in orjson.loads(capsys.readouterr().out)} == expected

    assert main(["sql", "SELECT nope FROM candidates", "--lake", settings.lake_dir]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "nope" in captured.err and len(captured.err.strip().splitlines()) == 1

    # As a separate process: stdout carries the CSV only, whatever Spark logs. Its own lake (the
    # embedded catalog admits one JVM), which must hold a table: a path without one is refused.
    altlake = str(Path(sys.executable).parent / "altlake")
    other_lake = str(Path(settings.lake_dir).parent / "cli-lake")
    assert main(["sql", "SELECT 1", "--lake", other_lake]) == 2
    assert "no lake at" in capsys.readouterr().err and not Path(other_lake).exists()
    spark.range(1).write.format("delta").save(LakePaths(other_lake).table("probe"))
    done = subprocess.run(
        [altlake, "sql", "SELECT 1 AS one, 'a,b' AS two", "--lake", other_lake, "--format", "csv"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == 'one,two\n1,"a,b"\n'
