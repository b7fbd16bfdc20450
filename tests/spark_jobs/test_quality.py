"""The GX gate on real data (the real WAT sample, extracted) and on deliberately bad rows."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from altlake.schemas import CANDIDATES, TABLES
from altlake.urls import canonical_url
from spark_jobs.quality import SUITES, QualityGateError, contract_expectations, validate, validate_table

CRAWL = "CC-MAIN-2015-18"


def _candidate(uid: str, url: str, text: str, language: str) -> tuple:
    now = datetime.now(timezone.utc)
    return (uid, url, canonical_url(url), text, "http://example.org/page", "wat", language, 0.9, None, None, CRAWL, CRAWL, now)


def test_real_candidates_pass_and_leave_data_docs(spark, settings, sample_wat):
    from spark_jobs.extract import run_extract

    summary = run_extract(settings, CRAWL, [str(sample_wat)], spark=spark)
    report = validate_table(settings, "candidates", run_id="manual__2026-01-01T00:00:00+00:00", crawl=CRAWL, spark=spark)

    assert report.success, [o.describe() for o in report.failures]
    assert report.n_rows == summary["totals"]["new_candidates"] > 0
    assert len(report.outcomes) == len(SUITES["candidates"])
    report.raise_for_failures()  # a passing report does not raise
    docs = Path(report.docs_dir)
    assert docs.name == "manual__2026-01-01T00_00_00_00_00"  # safe for object stores and browsers
    assert (docs / "index.html").is_file()
    pages = list(docs.glob("validations/**/*.html"))
    assert pages and "candidates_suite" in pages[0].read_text()


def test_bad_rows_fail_naming_the_expectation_and_column(spark, settings, tmp_path):
    rows = [
        _candidate("u1", "http://example.org/a.jpg", "a red bicycle", "en"),
        _candidate("u1", "http://example.org/b.jpg", "a blue bicycle", "en"),  # duplicate uid
        _candidate("u3", "ftp://example.org/c.jpg", "a green bicycle", "en"),  # not http
        _candidate("u4", "http://example.org/d.jpg", "abc", "english!"),  # short text, odd language
    ]
    report = validate(spark, "candidates", spark.createDataFrame(rows, CANDIDATES.spark_ddl()), docs_dir=str(tmp_path / "docs"))

    assert not report.success
    failing = {(o.expectation, o.column) for o in report.failures}
    assert failing == {
        ("expect_column_values_to_be_unique", "uid"),
        ("expect_column_values_to_match_regex", "url"),
        ("expect_column_value_lengths_to_be_between", "text"),
        ("expect_column_values_to_match_regex", "language"),
    }
    with pytest.raises(QualityGateError) as raised:
        report.raise_for_failures()
    message = str(raised.value)
    assert "expect_column_values_to_be_unique on column 'uid'" in message
    assert "ftp://example.org/c.jpg" in message  # the offending value, to act on
    assert "failed 4 of" in message
    # Passing checks are run for their verdict alone; only the failing ones are run again for their
    # counts and examples, each with its own (not another check's) values.
    by_check = {(o.expectation, o.column): o.observed for o in report.outcomes}
    assert by_check[("expect_column_values_to_match_regex", "url")]["partial_unexpected_list"] == ["ftp://example.org/c.jpg"]
    assert by_check[("expect_column_values_to_match_regex", "language")]["partial_unexpected_list"] == ["english!"]
    assert by_check[("expect_column_values_to_be_unique", "uid")]["unexpected_count"] == 2
    assert by_check[("expect_column_values_to_not_be_null", "url")] == {}
    pages = " ".join(page.read_text() for page in (tmp_path / "docs").glob("validations/**/*.html"))
    assert "candidates_suite" in pages and "candidates_failures" in pages  # the verdicts, and the failures in detail


def test_an_empty_table_fails_the_row_count_expectation(spark, settings):
    empty = spark.createDataFrame([], CANDIDATES.spark_ddl())
    report = validate(spark, "candidates", empty, suite=[("expect_table_row_count_to_be_between", {"min_value": 1})])
    assert [(o.expectation, o.success) for o in report.outcomes] == [("expect_table_row_count_to_be_between", False)]


@pytest.mark.parametrize("table_name", sorted(SUITES))
def test_every_suite_holds_what_its_table_declaration_promises(table_name):
    """Not-null for each non-nullable column, uniqueness for the key: derived from altlake.schemas,
    so a column declared NOT NULL tomorrow is gated without anyone editing a suite."""
    table = TABLES[table_name]
    suite = SUITES[table_name]
    not_null = {kwargs["column"] for kind, kwargs in suite if kind == "expect_column_values_to_not_be_null"}
    assert not_null == {c.name for c in table.columns if not c.nullable}
    if len(table.key) == 1:
        assert ("expect_column_values_to_be_unique", {"column": table.key[0]}) in suite
    else:
        assert ("expect_compound_columns_to_be_unique", {"column_list": list(table.key)}) in suite
    for expectation in contract_expectations(table):
        assert suite.count(expectation) == 1, expectation  # derived, and written nowhere else
    assert len({repr(e) for e in suite}) == len(suite), "an expectation is listed twice"


def test_contract_expectations_follow_the_declaration():
    from altlake.schemas import Column, Table

    table = Table("t", (Column("a", "string", False), Column("b", "string"), Column("c", "int", False)), key=("a", "c"))
    assert contract_expectations(table) == [
        ("expect_column_values_to_not_be_null", {"column": "a"}),
        ("expect_column_values_to_not_be_null", {"column": "c"}),
        ("expect_compound_columns_to_be_unique", {"column_list": ["a", "c"]}),
    ]


def test_validation_caches_nothing_and_leaves_a_callers_cache_alone(spark, settings):
    """A release caches its pairs, gates them, then writes them: the gate must not drop that cache.
    A table's frame is read column by column, never cached whole (embeddings and all)."""
    rows = [_candidate(f"u{i}", f"http://example.org/{i}.jpg", f"a red bicycle {i}", "en") for i in range(3)]
    suite = [("expect_table_row_count_to_be_between", {"min_value": 1}), ("expect_column_values_to_not_be_null", {"column": "url"})]
    cache = spark._jsparkSession.sharedState().cacheManager()  # noqa: SLF001 - what Spark holds cached

    spark.catalog.clearCache()
    theirs = spark.createDataFrame(rows, CANDIDATES.spark_ddl())
    assert validate(spark, "candidates", theirs, suite=suite).n_rows == 3
    assert not theirs.is_cached and cache.isEmpty()

    mine = spark.createDataFrame(rows, CANDIDATES.spark_ddl()).cache()
    mine.count()
    assert validate(spark, "candidates", mine, suite=suite).success
    assert mine.is_cached and not cache.isEmpty()
    mine.unpersist()


def test_preloading_gx_on_a_thread_imports_it_and_leaves_a_missing_gx_to_the_validation(monkeypatch):
    """The release preloads GX on a thread at its start: done, GX is imported; without GX the thread
    ends quietly (no traceback in a task log) and the validation's own import says what is missing."""
    import sys
    import threading

    from spark_jobs.quality import preload_gx

    thread = threading.Thread(target=preload_gx)
    thread.start()
    thread.join()
    assert "great_expectations" in sys.modules
    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    monkeypatch.setitem(sys.modules, "great_expectations", None)  # what an environment without GX imports
    thread = threading.Thread(target=preload_gx)
    thread.start()
    thread.join()
    assert errors == []
    with pytest.raises(ImportError):
        validate(None, "pairs", df=object())
