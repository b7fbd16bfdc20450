"""Batch planning on real Delta tables: what gets planned, retried, skipped, and never duplicated."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from altlake.config import Settings
from altlake.schemas import CANDIDATES, RETRYABLE_STATUSES
from spark_jobs.batches import parse_retry_limits, plan_batches
from spark_jobs.lake import read_table, table_path
from spark_jobs.merge_scores import mark_batch_failed
from tests.spark_jobs.lakegen import add_candidates, add_scores, candidate, embeddings_for, result, score_row


def test_parse_retry_limits_fills_defaults_and_rejects_unknown_classes():
    limits = parse_retry_limits("dns=1, timeout=4")
    assert limits["dns"] == 1 and limits["timeout"] == 4
    assert set(limits) == set(RETRYABLE_STATUSES)
    with pytest.raises(ValueError, match="http_4xx"):
        parse_retry_limits("http_4xx=3")  # a permanent failure class can never be retried
    with pytest.raises(ValueError, match="CLASS=N"):
        parse_retry_limits("dns")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    from spark_jobs.session import get_spark

    settings = Settings.from_env(
        lake_dir=str(tmp_path_factory.mktemp("batches") / "lake"), spark_master="local[2]", spark_shuffle_partitions=2
    ).with_(retry_limits="dns=2,timeout=3")
    return get_spark(settings, app_name="altlake-tests"), settings


def test_plan_batches_queues_unscored_and_retryable_only_once(lake):
    spark, settings = lake
    crawl, other = "CC-MAIN-2024-10", "CC-MAIN-2024-18"
    rows = [candidate(f"https://img.example.com/{i}.jpg", f"a photo number {i}", crawl=crawl) for i in range(7)]
    rows += [candidate(f"https://img.example.com/o{i}.jpg", f"another crawl {i}", crawl=other) for i in range(2)]
    add_candidates(spark, settings, rows)
    ok, timeout, gone, dns_spent, dns_retry = rows[:5]
    add_scores(spark, settings, [
        score_row(result(ok["uid"], ok["url"]), *embeddings_for(0)),
        score_row(result(timeout["uid"], timeout["url"], "timeout"), None, None, attempts=1),
        score_row(result(gone["uid"], gone["url"], "http_4xx"), None, None),
        score_row(result(dns_spent["uid"], dns_spent["url"], "dns"), None, None, attempts=2),
        score_row(result(dns_retry["uid"], dns_retry["url"], "dns"), None, None, attempts=1),
    ])  # fmt: skip
    unscored = {r["uid"] for r in rows[5:7]}
    expected = unscored | {timeout["uid"], dns_retry["uid"]}

    summary = plan_batches(spark, settings, crawl=crawl, batch_size=3)

    assert summary["planned_rows"] == len(expected)
    assert len(summary["batches"]) == 2  # 4 uids in batches of 3
    planned = set()
    for batch in summary["batches"]:
        table = pq.read_table(batch["input_path"])
        assert table.schema.names == CANDIDATES.column_names
        uids = table.column("uid").to_pylist()
        assert uids == sorted(uids) and len(uids) == batch["n_rows"]
        planned |= set(uids)
    assert planned == expected  # never the ok, the permanent failure, the exhausted dns, other crawl
    batches = read_table(spark, settings, "batches").collect()
    assert {b["batch_id"] for b in batches} == {b["batch_id"] for b in summary["batches"]}
    assert all(b["status"] == "planned" and b["attempts"] == 0 and b["crawl"] == crawl for b in batches)

    # Planning again hands nothing out twice: the uids are in flight.
    again = plan_batches(spark, settings, crawl=crawl, batch_size=3)
    assert again["planned_rows"] == 0 and again["already_planned"] == len(expected)
    assert read_table(spark, settings, "batches").count() == 2

    # A crash after writing the inputs but before recording them: re-planning gives the same ids.
    spark.sql(f"DELETE FROM delta.`{table_path(settings, 'batches')}`")
    replanned = plan_batches(spark, settings, crawl=crawl, batch_size=3)
    assert [b["batch_id"] for b in replanned["batches"]] == [b["batch_id"] for b in summary["batches"]]

    # A failed batch is planned again under the same id (same uids, same attempts), not duplicated.
    failed = summary["batches"][0]["batch_id"]
    mark_batch_failed(spark, settings, failed, "worker container was OOM-killed")
    row = read_table(spark, settings, "batches").where(f"batch_id = '{failed}'").first()
    assert (row["status"], row["attempts"], row["error"]) == ("failed", 1, "worker container was OOM-killed")
    retry = plan_batches(spark, settings, crawl=crawl, batch_size=3)
    assert [b["batch_id"] for b in retry["batches"]] == [failed]
    row = read_table(spark, settings, "batches").where(f"batch_id = '{failed}'").first()
    assert (row["status"], row["attempts"], row["error"]) == ("planned", 1, None)
    assert read_table(spark, settings, "batches").count() == 2

    # Without a crawl filter the other crawl's candidates are planned too, capped by max_batches.
    capped = plan_batches(spark, settings, batch_size=1, max_batches=1)
    assert capped["planned_rows"] == 1 and capped["left_for_later"] == 1


def test_plan_batches_never_plans_an_opted_out_candidate(lake):
    spark, settings = lake
    crawl = "CC-MAIN-2024-22"
    rows = [candidate(f"https://img.optout.example/{i}.jpg", f"an opted-out photo {i}", crawl=crawl) for i in range(4)]
    for row in rows[:3]:
        row["opt_out"] = "meta_robots"  # as extraction marks them (OPT_OUT_SIGNALS key)
    add_candidates(spark, settings, rows)
    retry = rows[0]  # even a retryable failure of an uid opted out since is not retried
    add_scores(spark, settings, [score_row(result(retry["uid"], retry["url"], "timeout"), None, None, attempts=1)])

    summary = plan_batches(spark, settings, crawl=crawl, batch_size=10)

    assert summary["candidates"] == 4 and summary["opted_out"] == 3
    assert summary["unscored"] == 1 and summary["retryable"] == 0 and summary["eligible"] == 1
    planned = {uid for batch in summary["batches"] for uid in pq.read_table(batch["input_path"]).column("uid").to_pylist()}
    assert planned == {rows[3]["uid"]}
    table = pq.read_table(summary["batches"][0]["input_path"])
    assert table.schema.names == CANDIDATES.column_names and table.column("opt_out").to_pylist() == [None]


def test_rescoring_plans_the_rows_scored_under_other_profiles_only_when_asked(lake):
    """After a deployment moves to profile `new`: its ok rows stay, other profiles' ok rows (and rows
    from before profiles were recorded) are planned again, failures follow their own retry rules."""
    spark, settings = lake
    crawl = "CC-MAIN-2024-33"
    rows = {name: candidate(f"https://img.example.com/rescore/{name}.jpg", f"a photo of {name}", crawl=crawl)
            for name in ("old", "unrecorded", "new", "old_gone")}  # fmt: skip
    add_candidates(spark, settings, list(rows.values()))
    scored = {"old": ("ok", "old"), "unrecorded": ("ok", None), "new": ("ok", "new"), "old_gone": ("http_4xx", "old")}
    add_scores(spark, settings, [
        score_row({**result(rows[name]["uid"], rows[name]["url"], status), "profile": profile}, *(embeddings_for(i) if status == "ok" else (None, None)))
        for i, (name, (status, profile)) in enumerate(scored.items())
    ])  # fmt: skip

    untouched = plan_batches(spark, settings, crawl=crawl)
    assert (untouched["eligible"], untouched["rescore"], untouched["batches"]) == (0, 0, [])

    summary = plan_batches(spark, settings, crawl=crawl, rescore_profile="new")
    assert summary["rescore"] == 2 and summary["eligible"] == 2
    (batch,) = summary["batches"]
    planned = set(pq.read_table(batch["input_path"]).column("uid").to_pylist())
    assert planned == {rows["old"]["uid"], rows["unrecorded"]["uid"]}
    again = plan_batches(spark, settings, crawl=crawl, rescore_profile="new")
    assert again["batches"] == [] and again["already_planned"] == 2  # handed out once
