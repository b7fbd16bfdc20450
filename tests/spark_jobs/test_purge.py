"""Takedown purge: after the grace period the removed rows leave every table's history on disk."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import spark_jobs.takedowns as takedowns
from altlake.config import Settings
from altlake.paths import DATABASE
from altlake.schemas import PAIRS
from spark_jobs.lake import read_table, table_path, table_version
from spark_jobs.takedowns import PURGED_TABLES, TakedownRequest, add_takedowns, apply_takedowns, checkpoint_table, purge_takedowns, retention_properties
from tests.spark_jobs.lakegen import add_candidates, add_scores, append_rows, candidate, embeddings_for, f16_bytes, result, score_row

pytestmark = pytest.mark.integration


def test_settings_refuse_a_history_shorter_than_the_grace_period():
    s = Settings.from_env({})
    assert (s.takedown_grace_hours, s.history_retention_hours) == (168, 720)
    env = {"ALTLAKE_TAKEDOWN_GRACE_HOURS": "48", "ALTLAKE_HISTORY_RETENTION_HOURS": "96"}
    assert Settings.from_env(env).history_retention_hours == 96
    with pytest.raises(ValueError, match="ALTLAKE_HISTORY_RETENTION_HOURS \\(24\\) must be at least ALTLAKE_TAKEDOWN_GRACE_HOURS"):
        Settings.from_env({**env, "ALTLAKE_HISTORY_RETENTION_HOURS": "24"})
    with pytest.raises(ValueError, match="ALTLAKE_TAKEDOWN_GRACE_HOURS"):
        Settings.from_env({}, takedown_grace_hours=-1)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    from spark_jobs.session import get_spark

    settings = Settings.from_env(
        lake_dir=str(tmp_path_factory.mktemp("purge") / "lake"), spark_master="local[2]", spark_shuffle_partitions=2
    )
    return get_spark(settings, app_name="altlake-tests"), settings


def fill(spark, settings, rows: list[dict]) -> None:
    """The rows in candidates, scores and pairs (as the upstream stages would write them)."""
    add_candidates(spark, settings, rows)
    scores = [score_row(result(r["uid"], r["url"], "ok", 0.3, seed=i), *embeddings_for(i)) for i, r in enumerate(rows)]
    add_scores(spark, settings, scores)
    pairs = [
        {**r, "subset": "en", "width": 1, "height": 1, "original_width": 1, "original_height": 1,
         "similarity": 0.3, "punsafe": 0.0, "pwatermark": 0.0, "aesthetic": 5.0, "sha256": s["sha256"], "md5": s["md5"], "pdq": s["pdq"],
         "near_duplicate_of": None, "img_emb": f16_bytes([1.0]), "text_emb": f16_bytes([1.0])}
        for r, s in zip(rows, scores)
    ]  # fmt: skip
    append_rows(spark, settings, "pairs", pairs, PAIRS)


def snapshot(spark, settings) -> dict[str, list]:
    """Every table's current rows, sorted: to show a purge changes no row."""
    return {t: sorted(tuple(r) for r in read_table(spark, settings, t).drop("img_emb", "text_emb").collect()) for t in PURGED_TABLES}


def uids_on_disk(settings, table: str) -> set[str]:
    """The uids of every parquet data file under the table's directory, referenced or not."""
    found = set()
    for parquet in Path(table_path(settings, table)).rglob("*.parquet"):
        if "_delta_log" not in parquet.parts:
            found |= set(pq.read_table(parquet, columns=["uid"]).column("uid").to_pylist())
    return found


def log_files_mentioning(settings, table: str, needle: str) -> list[str]:
    log = Path(table_path(settings, table)) / "_delta_log"
    return sorted(p.name for p in log.rglob("*") if p.is_file() and needle.encode() in p.read_bytes())


def later(settings, hours: float = 1) -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=settings.takedown_grace_hours + hours)


def test_purge_waits_for_the_grace_period_then_removes_the_rows_from_every_version_on_disk(lake):
    spark, settings = lake
    gone = candidate("https://private.example.org/photo.jpg", "a photo someone asked us to remove")
    kept = [candidate(f"https://public.example.net/{i}.jpg", f"public image {i}") for i in range(4)]
    fill(spark, settings, [gone, *kept])
    add_takedowns(spark, settings, [TakedownRequest("url", gone["url"], "GDPR erasure 2025-1")])
    applied = apply_takedowns(spark, settings)
    assert applied["deleted"] == {"candidates": 1, "scores": 1, "pairs": 1}
    before = snapshot(spark, settings)
    delete_versions = {t: table_version(spark, settings, t) for t in PURGED_TABLES}

    # inside the grace period: nothing is vacuumed, time travel still finds the row
    waiting = purge_takedowns(spark, settings)
    assert waiting["purged"] == {} and waiting["waiting"] == dict.fromkeys(PURGED_TABLES, 1)
    for table in PURGED_TABLES:
        old = read_table(spark, settings, table, delete_versions[table] - 1)
        assert old.where(f"uid = '{gone['uid']}'").count() == 1, table
        assert gone["uid"] in uids_on_disk(settings, table)

    purged = purge_takedowns(spark, settings, now=later(settings))
    assert set(purged["purged"]) == set(PURGED_TABLES)
    assert purged["waiting"] == {}
    for table in PURGED_TABLES:
        assert purged["purged"][table]["files_removed"] >= 1, table
        on_disk = uids_on_disk(settings, table)
        assert gone["uid"] not in on_disk, table
        assert {r["uid"] for r in kept} <= on_disk, table
        with pytest.raises(Exception, match="FILE_NOT_EXIST|does not exist|FileNotFound"):
            read_table(spark, settings, table, delete_versions[table] - 1).collect()
    assert snapshot(spark, settings) == before  # no other row changed

    record = spark.sql(
        f"SELECT table_name, rows_deleted, grace_hours, retention_hours, files_removed, purged_at, applied_at, purge_after "
        f"FROM {DATABASE}.purges WHERE apply_id = '{applied['apply_id']}'"
    ).collect()
    assert sorted(r["table_name"] for r in record) == sorted(PURGED_TABLES)
    for row in record:
        assert (row["rows_deleted"], row["grace_hours"], row["retention_hours"]) == (1, 168, 720)
        assert row["files_removed"] >= 1 and row["purged_at"] is not None
        assert row["purge_after"] - row["applied_at"] == timedelta(hours=168)
    properties = spark.sql(f"DESCRIBE DETAIL delta.`{table_path(settings, 'candidates')}`").first()["properties"]
    assert retention_properties(settings).items() <= properties.items()

    # a second purge finds nothing to do and commits nothing
    versions = {t: table_version(spark, settings, t) for t in (*PURGED_TABLES, "purges")}
    again = purge_takedowns(spark, settings, now=later(settings, 2))
    assert (again["purged"], again["retention_set_on"]) == ({}, [])
    assert {t: table_version(spark, settings, t) for t in versions} == versions

    # The Delta log: the newest checkpoint holds no trace of the removed URL; the JSON commit that
    # once added its file (and that commit's .crc) still holds it as a column statistic until the
    # entry passes delta.logRetentionDuration and a checkpoint expires it. Shown by aging the log.
    for table in ("candidates", "pairs"):
        mentions = log_files_mentioning(settings, table, gone["url"])
        assert not [m for m in mentions if "checkpoint" in m], (table, mentions)
        assert all(int(m.split(".")[0]) < delete_versions[table] for m in mentions), (table, mentions)
        log = Path(table_path(settings, table)) / "_delta_log"
        aged = (datetime.now(timezone.utc) - timedelta(hours=settings.history_retention_hours + 24)).timestamp()
        for entry in log.iterdir():
            if entry.is_file():
                os.utime(entry, (aged, aged))
        assert checkpoint_table(spark, settings, table)
        assert log_files_mentioning(settings, table, gone["url"]) == [], table
        assert snapshot(spark, settings)[table] == before[table]


def test_an_interrupted_purge_resumes_and_completes_the_record(lake, monkeypatch):
    spark, settings = lake
    gone = candidate("https://resume.example.org/x.jpg", "interrupted purge")
    kept = candidate("https://resume.example.net/y.jpg", "stays")
    fill(spark, settings, [gone, kept])
    add_takedowns(spark, settings, [TakedownRequest("url", gone["url"], "owner request")])
    applied = apply_takedowns(spark, settings)
    before = snapshot(spark, settings)

    real_purge_table, calls = takedowns.purge_table, []

    def dies_after_one_table(spark_, settings_, name, applies):
        if calls:
            raise RuntimeError("killed mid-purge")
        calls.append(name)
        return real_purge_table(spark_, settings_, name, applies)

    monkeypatch.setattr(takedowns, "purge_table", dies_after_one_table)
    with pytest.raises(RuntimeError, match="killed mid-purge"):
        purge_takedowns(spark, settings, now=later(settings))
    monkeypatch.undo()
    state = {
        r["table_name"]: r["purged_at"] is not None
        for r in spark.sql(f"SELECT * FROM {DATABASE}.purges WHERE apply_id = '{applied['apply_id']}'").collect()
    }
    assert state == {"candidates": True, "scores": False, "pairs": False}
    assert gone["uid"] not in uids_on_disk(settings, "candidates") and gone["uid"] in uids_on_disk(settings, "scores")

    resumed = purge_takedowns(spark, settings, now=later(settings))
    assert set(resumed["purged"]) == {"scores", "pairs"}
    record = spark.sql(f"SELECT * FROM {DATABASE}.purges WHERE apply_id = '{applied['apply_id']}'").collect()
    assert len(record) == 3
    assert all(r["purged_at"] is not None and r["files_removed"] >= 1 and r["vacuum_version"] is not None for r in record)
    for table in PURGED_TABLES:
        assert gone["uid"] not in uids_on_disk(settings, table), table
    assert snapshot(spark, settings) == before
