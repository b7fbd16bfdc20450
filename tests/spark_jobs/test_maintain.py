"""Lake maintenance on real Spark + Delta: compaction keeps every row, VACUUM waits for the retention,
statistics missing from the log are recomputed, every run is recorded in `maintenance`."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from altlake.schemas import TAKEDOWNS
from spark_jobs.lake import read_table, table_path
from spark_jobs.maintain import STALE_SCRATCH_HOURS, check_tables, files_without_stats, main, maintain_lake, sweep_merge_scratch
from tests.spark_jobs.lakegen import add_candidates, candidate

TABLES = ["candidates", "takedowns"]


def data_files_on_disk(settings, table: str) -> int:
    """Parquet data files under the table's folder, referenced by the log or not."""
    return sum(1 for p in Path(table_path(settings, table)).rglob("*.parquet") if "_delta_log" not in p.parts)


def rows_of(spark, settings, table: str, version: int | None = None) -> list[tuple]:
    return sorted(tuple(r) for r in read_table(spark, settings, table, version).collect())


@pytest.mark.integration  # three maintenance runs of two tables: minutes on a busy machine
def test_maintenance_compacts_keeps_rows_vacuums_after_the_retention_and_records_each_run(spark, settings):
    for batch in range(4):  # four per-batch appends: at least four small files in one partition
        add_candidates(spark, settings, [candidate(f"https://img.example.org/{batch}/{i}.jpg", f"picture {batch} {i}") for i in range(3)])
    spark.conf.set("spark.databricks.delta.stats.collect", "false")  # a file as another writer might leave it
    try:
        request = ("domain", "example.com", "test", datetime.now(timezone.utc), None, None)
        spark.createDataFrame([request], TAKEDOWNS.spark_ddl()).coalesce(1).write.format("delta").mode("append").save(table_path(settings, "takedowns"))
    finally:
        spark.conf.unset("spark.databricks.delta.stats.collect")
    candidates = rows_of(spark, settings, "candidates")
    assert len(candidates) == 12
    before_version = int(spark.sql(f"DESCRIBE HISTORY delta.`{table_path(settings, 'candidates')}` LIMIT 1").first()["version"])
    assert files_without_stats(spark, table_path(settings, "takedowns")) == 1

    # 1. default retention (720 h): compacted, nothing vacuumed, time travel still reaches the small files
    first = maintain_lake(spark, settings, TABLES)
    assert first["errors"] == {}
    compacted = first["tables"]["candidates"]
    assert compacted["files_before"] >= 4 and compacted["files_after"] == 1
    assert compacted["files_compacted"] == compacted["files_before"] and compacted["vacuumed_files"] == 0
    assert compacted["bytes_after"] > 0 and compacted["checkpointed"] is True
    assert rows_of(spark, settings, "candidates") == candidates
    assert data_files_on_disk(settings, "candidates") == compacted["files_before"] + 1
    assert rows_of(spark, settings, "candidates", before_version) == candidates
    assert first["tables"]["takedowns"]["files_without_stats"] == 1  # a single file: OPTIMIZE leaves it, the stats step fixes it
    assert files_without_stats(spark, table_path(settings, "takedowns")) == 0
    log = Path(table_path(settings, "candidates")) / "_delta_log"
    assert (log / "_last_checkpoint").is_file() and list(log.glob("*.checkpoint.parquet"))

    # 2. a retention of 0 h (Settings allows it with a 0 h takedown grace): the replaced files go
    zero = settings.with_(takedown_grace_hours=0, history_retention_hours=0)
    second = maintain_lake(spark, zero, TABLES)
    assert second["errors"] == {}
    vacuumed = second["tables"]["candidates"]
    assert (vacuumed["files_before"], vacuumed["files_after"], vacuumed["files_compacted"]) == (1, 1, 0)
    assert vacuumed["vacuumed_files"] == compacted["files_before"]
    assert data_files_on_disk(settings, "candidates") == 1
    assert rows_of(spark, settings, "candidates") == candidates
    with pytest.raises(Exception, match="FILE_NOT_EXIST|does not exist|FileNotFound"):
        read_table(spark, settings, "candidates", before_version).collect()

    # 3. nothing left to do: a no-op, still recorded
    third = maintain_lake(spark, settings, TABLES)
    assert third["errors"] == {} and third["vacuumed_files"] == 0
    assert all(t["files_compacted"] == 0 and t["files_before"] == t["files_after"] for t in third["tables"].values())
    assert rows_of(spark, settings, "candidates") == candidates

    recorded = read_table(spark, settings, "maintenance").collect()
    assert sorted((r["run_id"], r["table_name"]) for r in recorded) == sorted(
        (run["run_id"], table) for run in (first, second, third) for table in TABLES
    )
    by_run = {(r["run_id"], r["table_name"]): r for r in recorded}
    row = by_run[(second["run_id"], "candidates")]
    assert (row["retention_hours"], row["vacuumed_files"], row["error"]) == (0, compacted["files_before"], None)
    assert all(r["optimize_s"] >= 0 and r["vacuum_s"] >= 0 and r["finished_at"] >= r["started_at"] for r in recorded)


def test_an_unknown_table_is_one_line_before_spark_starts(tmp_path, capsys):
    with pytest.raises(ValueError, match="no lake table 'candidate'"):
        check_tables(["candidates", "candidate"])
    assert check_tables(None)[0] == "crawl_files" and "maintenance" in check_tables([])
    assert main(["--table", "nope", "--lake", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"altlake maintain: no lake table 'nope': choose from {', '.join(check_tables(None))}"
    ]


@pytest.mark.integration  # a Spark session and two tables: over a minute on a busy machine
def test_a_table_that_fails_is_recorded_with_its_error_and_the_others_are_still_maintained(spark, settings):
    path = table_path(settings, "takedowns")
    for value in ("a.example.com", "b.example.com"):  # two small files, so OPTIMIZE reads both
        request = ("domain", value, "test", datetime.now(timezone.utc), None, None)
        spark.createDataFrame([request], TAKEDOWNS.spark_ddl()).coalesce(1).write.format("delta").mode("append").save(path)
    next(p for p in Path(path).glob("*.parquet")).unlink()  # storage lost a file the log still references

    summary = maintain_lake(spark, settings, ["takedowns", "batches"])
    assert list(summary["errors"]) == ["takedowns"] and summary["errors"]["takedowns"]
    assert summary["tables"]["batches"]["error"] is None and summary["tables"]["batches"]["checkpointed"] is True
    recorded = {r["table_name"]: r for r in read_table(spark, settings, "maintenance").collect()}
    assert set(recorded) == {"takedowns", "batches"}
    assert recorded["takedowns"]["error"] == summary["errors"]["takedowns"] and recorded["takedowns"]["files_before"] == 2
    assert recorded["takedowns"]["files_after"] is None and recorded["batches"]["error"] is None


def test_vacuum_lists_a_table_in_as_many_tasks_as_the_lake_has_partitions(spark, settings):
    """Spark's default listing parallelism (10,000 tasks) made every VACUUM cost 23-35 s on two cores,
    even of a table with one file: the session sets it to the shuffle partitions."""
    add_candidates(spark, settings, [candidate("https://img.example.org/v.jpg", "one picture")])
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("vacuum-listing", "VACUUM of candidates")
    try:
        maintain_lake(spark, settings, ["candidates"])
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    stages = [tracker.getStageInfo(s) for j in tracker.getJobIdsForGroup("vacuum-listing") for s in tracker.getJobInfo(j).stageIds]
    tasks = [s.numTasks for s in stages if s is not None]
    assert tasks, "the maintenance ran no Spark jobs in its group"
    # Delta reads its log in 50 tasks (spark.databricks.delta.snapshotPartitions); the listing was 10,000
    assert max(tasks) <= max(50, settings.spark_shuffle_partitions), sorted(set(tasks))


def test_a_killed_merges_staging_is_swept_and_a_running_ones_is_kept(tmp_path):
    """merge-scores removes its staging in a finally; a killed process cannot, so maintain does."""
    import os
    from datetime import timedelta

    from altlake.config import Settings
    from altlake.paths import LakePaths

    settings = Settings.from_env(lake_dir=str(tmp_path / "lake"))
    scratch = Path(LakePaths(str(tmp_path / "lake")).merge_scratch_dir)
    for run in ("killed", "running"):
        (scratch / run / "parts").mkdir(parents=True)
        (scratch / run / "parts" / "part-00000.parquet").write_bytes(b"rows")
    now = datetime.now(timezone.utc)
    old = (now - timedelta(hours=STALE_SCRATCH_HOURS + 1)).timestamp()
    os.utime(scratch / "killed" / "parts" / "part-00000.parquet", (old, old))

    assert sweep_merge_scratch(settings, now) == ["killed"]
    assert sorted(p.name for p in scratch.iterdir()) == ["running"]
    assert sweep_merge_scratch(settings, now) == []  # nothing stale left
