"""Great Expectations gates for the lake's tables: one data-driven suite per table.

The suites are plain data (`SUITES`: table name -> list of (expectation type, kwargs)), so a new
stage adds its gate by adding an entry, without touching the validation code. GX runs in our own
code on an ephemeral context over the Spark DataFrame (never through Airflow), because this module
also runs as a Spark job on clusters (`spark-submit spark_jobs/quality.py`, EMR Serverless).
Each run renders the GX Data Docs (HTML) into `LakePaths.gx_docs(run_id)` so the evidence stays
with the lake.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit / EMR: make our packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from altlake import storage
from altlake.config import Settings, SettingsError
from altlake.paths import DATABASE, LakePaths
from altlake.names import MIN_TEXT_CHARS, check_crawl_id
from altlake.schemas import CANDIDATES, NO_LANGUAGE, PAIRS, SCORE_STATUSES, SCORES, SUBSETS, Table

# One expectation: its GX type name (snake case) and its keyword arguments.
Expectation = tuple[str, dict]

# ISO 639-1/639-3 codes as fastText's lid.176 emits them ("en", "als", "yue"), or the contract's
# NO_LANGUAGE ("nolang") for unreliable detection (spark_jobs/wat.py).
LANGUAGE_REGEX = rf"^([a-z]{{2,3}}|{NO_LANGUAGE})$"


def contract_expectations(table: Table) -> list[Expectation]:
    """What a table's declaration (altlake.schemas) promises: every non-nullable column not null,
    and its key unique (one column) or unique as a whole (compound). Derived, never written twice."""
    not_null = [("expect_column_values_to_not_be_null", {"column": c.name}) for c in table.columns if not c.nullable]
    if len(table.key) == 1:
        unique = ("expect_column_values_to_be_unique", {"column": table.key[0]})
    else:
        unique = ("expect_compound_columns_to_be_unique", {"column_list": list(table.key)})
    return [*not_null, unique]


SUITES: dict[str, list[Expectation]] = {
    "candidates": [
        ("expect_table_columns_to_match_set", {"column_set": CANDIDATES.column_names, "exact_match": True}),
        ("expect_table_row_count_to_be_between", {"min_value": 1}),
        *contract_expectations(CANDIDATES),
        ("expect_column_values_to_match_regex", {"column": "url", "regex": r"^https?://"}),
        ("expect_column_value_lengths_to_be_between", {"column": "text", "min_value": MIN_TEXT_CHARS}),
        ("expect_column_values_to_match_regex", {"column": "language", "regex": LANGUAGE_REGEX}),
    ],
    # Release gates (spark_jobs/release.py adds the cross-layer row-count checks per build).
    "scores": [
        ("expect_table_columns_to_match_set", {"column_set": SCORES.column_names, "exact_match": True}),
        ("expect_table_row_count_to_be_between", {"min_value": 1}),
        *contract_expectations(SCORES),
        ("expect_column_values_to_be_in_set", {"column": "status", "value_set": list(SCORE_STATUSES)}),
        ("expect_column_values_to_be_between", {"column": "similarity", "min_value": -1, "max_value": 1}),
        ("expect_column_values_to_be_between", {"column": "punsafe", "min_value": 0, "max_value": 1}),
        ("expect_column_values_to_be_between", {"column": "pwatermark", "min_value": 0, "max_value": 1}),
        ("expect_column_values_to_be_between", {"column": "attempts", "min_value": 1}),
        ("expect_column_values_to_match_regex", {"column": "sha256", "regex": r"^[0-9a-f]{64}$"}),
    ],
    "pairs": [
        ("expect_table_columns_to_match_set", {"column_set": PAIRS.column_names, "exact_match": True}),
        *contract_expectations(PAIRS),
        ("expect_compound_columns_to_be_unique", {"column_list": ["url", "text"]}),
        ("expect_column_values_to_be_unique", {"column": "sha256"}),
        ("expect_column_values_to_be_in_set", {"column": "subset", "value_set": list(SUBSETS)}),
        ("expect_column_values_to_match_regex", {"column": "language", "regex": LANGUAGE_REGEX}),
        ("expect_column_values_to_be_between", {"column": "similarity", "min_value": -1, "max_value": 1}),
        ("expect_column_values_to_be_between", {"column": "punsafe", "min_value": 0, "max_value": 1}),
        ("expect_column_values_to_be_between", {"column": "pwatermark", "min_value": 0, "max_value": 1}),
    ],
}

# The column that says which crawl a row belongs to, for gating one crawl's rows only.
CRAWL_COLUMNS: dict[str, str] = {"candidates": "last_seen_crawl"}


# Exit status of the command line when the data failed its suite (1 and 2 mean a crash / bad usage),
# so a scheduler tells "bad data, do not retry" from "the job broke, retry".
GATE_FAILED_EXIT = 3


class QualityGateError(RuntimeError):
    """A table failed its suite; the message names each failing expectation and column."""


@dataclass(frozen=True)
class Outcome:
    expectation: str
    column: str | None
    success: bool
    observed: dict = field(default_factory=dict)  # GX's result summary: counts and examples

    def describe(self) -> str:
        where = f" on column {self.column!r}" if self.column else ""
        return f"{self.expectation}{where}: {json.dumps(self.observed, default=str)}"


@dataclass(frozen=True)
class ValidationReport:
    table: str
    suite: str
    success: bool
    n_rows: int
    outcomes: tuple[Outcome, ...]
    docs_dir: str | None = None

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success]

    def raise_for_failures(self) -> None:
        """Fail loudly with every failing expectation, so the task log says what to fix."""
        if self.success:
            return
        lines = "\n".join(f"  - {o.describe()}" for o in self.failures)
        docs = f"\nData Docs: {self.docs_dir}" if self.docs_dir else ""
        raise QualityGateError(
            f"table {self.table!r} failed {len(self.failures)} of {len(self.outcomes)} expectations "
            f"of suite {self.suite!r}:\n{lines}{docs}"
        )

    def to_dict(self) -> dict:
        """Plain JSON types (lists, not tuples), as XCom and the command line's output want them."""
        return json.loads(json.dumps(asdict(self), default=str))


def validate(
    spark,
    table_name: str,
    df=None,
    suite: list[Expectation] | None = None,
    docs_dir: str | None = None,
    store: storage.S3Options | None = None,
) -> ValidationReport:
    """Validate `df` (default: the whole catalog table) against `suite` (default: SUITES[table_name]).

    With `docs_dir`, the GX Data Docs of this validation are written there as a static HTML site: GX
    renders them on local disk, and a docs_dir on object storage (a lake on S3) gets the site's files
    through altlake.storage (`store`: its endpoint and keys), as every other file does.
    """
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    expectations = SUITES[table_name] if suite is None else suite
    if df is None:
        df = spark.table(f"{DATABASE}.{table_name}")
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no bars in task logs
    batch_definition = (
        context.data_sources.add_spark(name="altlake", persist=False)  # GX would cache the frame, and never uncache it
        .add_dataframe_asset(name=table_name)
        .add_batch_definition_whole_dataframe(name=table_name)
    )
    actions = []
    site_dir = tempfile.mkdtemp(prefix="altlake-gx-docs-") if docs_dir and storage.is_object_store(docs_dir) else docs_dir
    if site_dir:
        context.add_data_docs_site(site_name="altlake", site_config=_docs_site_config(site_dir))
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["altlake"]))

    def run(name: str, checks: list[Expectation], result_format: str):
        gx_suite = context.suites.add(gx.ExpectationSuite(name=name))
        for expectation_type, kwargs in checks:
            gx_suite.add_expectation(ExpectationConfiguration(type=expectation_type, kwargs=kwargs).to_domain_obj())
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_definition, suite=gx_suite))
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(name=name, validation_definitions=[definition], actions=actions, result_format=result_format)
        )
        (validation,) = checkpoint.run(batch_parameters={"dataframe": df}).run_results.values()
        return validation

    # GX runs a Spark job per few metrics, each reading only the columns it checks. A table's frame is
    # read that way, never cached: caching it would read every column once, embeddings included (1 GB
    # of scores at 831k rows, spilled past a 2 GB driver), for checks that read a few. A computed frame
    # is cached by its caller, who also owns unpersisting it (the release caches its pairs).
    # First every check for its verdict alone (BOOLEAN_ONLY): GX's default also lists up to 20 offending
    # values per column check, one more Spark job each, which scans the whole column to find none when
    # the check passes. Then, only if some failed, those checks again with their counts and examples
    # (SUMMARY): the values a person acts on, in the error and in the Data Docs beside the verdicts.
    suite_name = f"{table_name}_suite"
    try:
        verdicts = run(suite_name, expectations, "BOOLEAN_ONLY").results
        failed = [_check_of(r) for r in verdicts if not r.success]
        detailed = {_key(_check_of(r)): r for r in run(f"{table_name}_failures", failed, "SUMMARY").results} if failed else {}
        n_rows = df.count()
        if site_dir != docs_dir:
            _upload_site(Path(site_dir), docs_dir, store)
    finally:
        if site_dir != docs_dir:
            shutil.rmtree(site_dir, ignore_errors=True)
    results = [detailed.get(_key(_check_of(r)), r) for r in verdicts]
    outcomes = tuple(
        Outcome(
            expectation=r.expectation_config.type,
            column=r.expectation_config.kwargs.get("column"),
            success=bool(r.success),
            observed=_summary(r.result),
        )
        for r in results
    )
    return ValidationReport(
        table=table_name,
        suite=suite_name,
        success=all(o.success for o in outcomes),
        n_rows=n_rows,
        outcomes=outcomes,
        docs_dir=docs_dir,
    )


def validate_table(
    settings: Settings, table_name: str, run_id: str, crawl: str | None = None, spark=None
) -> ValidationReport:
    """Gate one table of the lake (only `crawl`'s rows when given); Data Docs go under the run's id."""
    from pyspark.sql import functions as F

    from spark_jobs.session import get_spark

    spark = spark or get_spark(settings, app_name=f"altlake-quality-{table_name}")
    df = spark.read.format("delta").load(_absolute(LakePaths(settings.lake_dir).table(table_name)))
    if crawl is not None:
        df = df.where(F.col(CRAWL_COLUMNS[table_name]) == F.lit(crawl))
    docs_dir = LakePaths(_absolute(settings.lake_dir)).gx_docs(_safe_run_id(run_id))
    return validate(spark, table_name, df, docs_dir=docs_dir, store=storage.S3Options.of(settings))


def _docs_site_config(docs_dir: str) -> dict:
    """A static Data Docs site in a local folder."""
    return {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }


def _upload_site(site: Path, docs_dir: str, store: storage.S3Options | None) -> None:
    """Every file of a rendered Data Docs site to its place on object storage, the index last (a
    reader who finds the index finds what it links to)."""
    files = sorted((p for p in site.rglob("*") if p.is_file()), key=lambda p: (p.name == "index.html" and p.parent == site, str(p)))
    for path in files:
        storage.upload_file(path, storage.join(docs_dir, *path.relative_to(site).parts), store)


def _check_of(result) -> Expectation:
    """The check a GX result is for, as the suite lists it: GX orders a run's results its own way."""
    config = result.expectation_config
    return config.type, {k: v for k, v in config.kwargs.items() if k != "batch_id"}


def _key(check: Expectation) -> str:
    return json.dumps(check, sort_keys=True, default=str)


def _summary(result: dict) -> dict:
    """The parts of a GX result a person needs to act: counts, observed value, a few bad values."""
    keys = ("observed_value", "element_count", "unexpected_count", "unexpected_percent", "partial_unexpected_list")
    return {k: result[k] for k in keys if k in result and result[k] not in (None, [])}


def _safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+', which object stores and browsers handle badly."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).absolute())


def preload_gx() -> None:
    """Import GX ahead of a validation, on a thread started where the driver mostly waits for Spark
    (the release's start): its import is 3-4 s of Python that the gate would otherwise wait for. A
    failure is left for `validate`, whose own import reports it."""
    _quiet_gx()
    try:
        import great_expectations  # noqa: F401
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration  # noqa: F401
    except Exception:  # noqa: S110 - validate() imports again and says what is missing
        pass


def _quiet_gx() -> None:
    """GX logs every API registration at INFO when imported; task logs need only its warnings."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Cluster entry point: validate one table, print the report as JSON, exit 3 when the data fails."""
    parser = argparse.ArgumentParser(description="Validate a lake table against its GX suite")
    parser.add_argument("--table", required=True, choices=sorted(SUITES))
    parser.add_argument("--run-id", required=True, help="names the Data Docs folder under the lake's gx/")
    parser.add_argument("--crawl", help="validate only this crawl's rows")
    parser.add_argument("--lake", help="lake root (default: ALTLAKE_LAKE_DIR)")
    args = parser.parse_args(argv)
    if args.crawl is not None:
        try:
            check_crawl_id(args.crawl)
        except ValueError as error:
            print(f"quality: {error}", file=sys.stderr)
            return 2

    try:
        settings = Settings.from_env(lake_dir=args.lake)
    except SettingsError as error:
        print(error.report("quality"), file=sys.stderr)
        return 2
    report = validate_table(settings, args.table, args.run_id, crawl=args.crawl)
    print(json.dumps(report.to_dict(), default=str))
    try:
        report.raise_for_failures()
    except QualityGateError as error:
        print(error, file=sys.stderr)
        return GATE_FAILED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
