"""Lake access every lake-side job shares: a table's path, its Delta version, a read at a version,
the row counts Delta recorded for a commit. Tables are addressed by path (altlake.paths), so
DuckDB, delta-rs and Spark read the same files."""

from __future__ import annotations

from pathlib import Path

from altlake.config import Settings
from altlake.paths import LakePaths


def lake_paths(settings: Settings) -> LakePaths:
    """The lake's layout with an absolute root (a relative lake dir resolves against the working dir)."""
    root = settings.lake_dir if "://" in settings.lake_dir else str(Path(settings.lake_dir).absolute())
    return LakePaths(root)


def table_path(settings: Settings, name: str) -> str:
    return lake_paths(settings).table(name)


def table_version(spark, settings: Settings, name: str) -> int:
    """The table's latest Delta version: what a job reads and a manifest records."""
    return latest_version(spark, table_path(settings, name))


def latest_version(spark, location: str) -> int:
    """The latest Delta version of the table at `location`."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, location).history(1).first()["version"])


def read_table(spark, settings: Settings, name: str, version: int | None = None):
    """A table as of `version` (Delta time travel) or its latest version."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(table_path(settings, name))


def commit_metrics(spark, settings: Settings, name: str, version_before: int) -> dict[str, int]:
    """Row counts Delta recorded for the commit after `version_before` (e.g. numTargetRowsDeleted);
    empty when the operation changed nothing and so committed nothing."""
    from delta.tables import DeltaTable

    latest = DeltaTable.forPath(spark, table_path(settings, name)).history(1).first()
    if int(latest["version"]) == version_before:
        return {}
    return {k: int(v) for k, v in (latest["operationMetrics"] or {}).items() if str(v).isdigit()}


def table_properties(spark, location: str) -> dict[str, str]:
    """The Delta table properties of the table at `location` now (its constraints among them)."""
    from delta.tables import DeltaTable

    return dict(DeltaTable.forPath(spark, location).detail().first()["properties"] or {})


def table_checks(spark, location: str, properties: dict[str, str] | None = None) -> set[str]:
    """The names of the CHECK constraints Delta enforces on the table at `location` now."""
    properties = table_properties(spark, location) if properties is None else properties
    return {key.removeprefix("delta.constraints.") for key in properties if key.startswith("delta.constraints.")}


def check_holds(spark, settings: Settings, name: str, check: str, version: int) -> bool:
    """Whether every row of the table at `version` meets its CHECK constraint `check`: the constraint
    is there now and `version` is the latest (Delta checked the rows as it added the constraint, and
    every write since). An older version may predate it: the caller reads the columns then."""
    return check in table_checks(spark, table_path(settings, name)) and table_version(spark, settings, name) == version
