"""Score merge on real Delta tables: idempotent, newer wins, embeddings joined by uid, nothing lost."""

from __future__ import annotations

import os

import numpy as np
import pytest

from altlake.config import Settings
from altlake.stats import StageStats, chain
from spark_jobs.batches import plan_batches
from spark_jobs.lake import read_table, table_path
from spark_jobs.merge_scores import merge_batch, merge_planned_batches
from spark_jobs.takedowns import TakedownRequest, add_takedowns
from tests.spark_jobs.lakegen import add_candidates, candidate, later, random_unit, result, write_worker_output


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    from spark_jobs.session import get_spark

    settings = Settings.from_env(lake_dir=str(tmp_path_factory.mktemp("merge") / "lake"), spark_master="local[2]", spark_shuffle_partitions=2)
    return get_spark(settings, app_name="altlake-tests"), settings


def _scores(spark, settings) -> list[dict]:
    return sorted((r.asDict() for r in read_table(spark, settings, "scores").collect()), key=lambda r: r["uid"])


def test_merge_is_idempotent_newer_wins_and_counts_attempts(lake):
    spark, settings = lake
    rng = np.random.default_rng(7)
    rows = [candidate(f"https://cdn.example.org/{i}.png", f"caption text {i}") for i in range(5)]
    add_candidates(spark, settings, rows)
    (batch,) = plan_batches(spark, settings, batch_size=10)["batches"]
    vectors = {r["uid"]: (random_unit(rng), random_unit(rng)) for r in rows}
    flaky, listed = rows[0], rows[1]
    first = [result(r["uid"], r["url"], "ok", 0.31, batch_id=batch["batch_id"]) for r in rows[1:4]]
    first += [result(flaky["uid"], flaky["url"], "timeout", batch_id=batch["batch_id"])]
    # rows[4] is missing from the results: it must not be lost (planned again later).

    write_worker_output(batch["output_path"], first, vectors, success=False)
    assert merge_batch(spark, settings, batch["batch_id"])["status"] == "incomplete"
    assert read_table(spark, settings, "scores").count() == 0
    assert read_table(spark, settings, "batches").first()["status"] == "planned"

    add_takedowns(spark, settings, [TakedownRequest("sha256", first[0]["sha256"], "hash list 2024-05")])
    record = {"host": "gpu-7", "started_at": "2026-12-05T01:00:00+00:00", "finished_at": "2026-12-05T01:02:30+00:00",
              "wall_s": 150.5, "images_per_s": 12, "rows_per_s": 20.25, "bytes_downloaded": 123_456}  # fmt: skip
    write_worker_output(batch["output_path"], first, vectors, success=True, record=record)
    merged = merge_batch(spark, settings, batch["batch_id"])
    assert merged["status"] == "merged" and merged["inserted"] == len(first)
    assert merged["missing_from_results"] == 1
    assert merged["statuses"] == {"ok": 2, "opted_out": 1, "timeout": 1}  # the listed image's row is opted out
    assert merged["stages"] == chain([StageStats("results", len(first)), StageStats("merge", len(first))])
    scores = {r["uid"]: r for r in _scores(spark, settings)}
    assert set(scores) == {r["uid"] for r in first}
    for row in first[1:3]:  # ok rows: embeddings are the npy rows of their uid, float16 little-endian
        got = np.frombuffer(scores[row["uid"]]["img_emb"], dtype="<f2")
        assert np.array_equal(got, vectors[row["uid"]][0].astype(np.float16))
        got = np.frombuffer(scores[row["uid"]]["text_emb"], dtype="<f2")
        assert np.array_equal(got, vectors[row["uid"]][1].astype(np.float16))
    taken = scores[listed["uid"]]  # its image hash is listed: recorded, without scores or embeddings
    assert taken["status"] == "opted_out" and taken["img_emb"] is None and taken["similarity"] is None
    assert scores[flaky["uid"]]["status"] == "timeout" and scores[flaky["uid"]]["img_emb"] is None
    assert all(r["attempts"] == 1 for r in scores.values())
    done = read_table(spark, settings, "batches").first()
    assert (done["status"], done["attempts"]) == ("done", 1)
    # The worker's throughput record is the batch's, for SQL (ok rows as the worker counted them).
    assert (done["host"], done["wall_s"], done["images_per_s"], done["rows_per_s"], done["bytes_downloaded"], done["rows_ok"]) == (
        "gpu-7",
        150.5,
        12.0,
        20.25,
        123_456,
        3,
    )
    assert (done["finished_at"] - done["started_at"]).total_seconds() == 150

    # Delivered twice: nothing changes, not even the batch's attempts.
    snapshot = _scores(spark, settings)
    again = merge_batch(spark, settings, batch["batch_id"])
    assert again["unchanged"] == len(first)
    assert again["stages"][1] == StageStats("merge", len(first), {"not_newer_than_scores": len(first)}).to_dict()
    assert _scores(spark, settings) == snapshot
    assert read_table(spark, settings, "batches").first()["attempts"] == 1

    # The retry batch (timeout -> ok, newer) replaces the row and counts a second attempt ...
    plan = plan_batches(spark, settings, batch_size=10)
    (retry,) = plan["batches"]
    assert retry["batch_id"] != batch["batch_id"] and plan["planned_rows"] == 2  # the timeout + the lost uid
    newer = [result(flaky["uid"], flaky["url"], "ok", 0.4, scored_at=later(60), batch_id=retry["batch_id"]),
             result(rows[4]["uid"], rows[4]["url"], "http_4xx", scored_at=later(60), batch_id=retry["batch_id"])]  # fmt: skip
    stray = result("e" * 32, "https://stray.example.org/x.png", "http_4xx", scored_at=later(60), batch_id=retry["batch_id"])
    write_worker_output(retry["output_path"], [*newer, stray], vectors)  # a uid this batch was never given
    summary = merge_planned_batches(spark, settings)
    assert summary["totals"] == {"merged": 1}
    assert summary["batches"][0]["stages"][0] == StageStats("results", 3, {"not_planned_in_this_batch": 1}).to_dict()
    fixed = {r["uid"]: r for r in _scores(spark, settings)}[flaky["uid"]]
    assert (fixed["status"], fixed["attempts"], fixed["batch_id"]) == ("ok", 2, retry["batch_id"])
    assert read_table(spark, settings, "scores").count() == len(rows)  # every candidate has exactly one score

    # ... and the older attempt, delivered late, changes nothing.
    snapshot = _scores(spark, settings)
    late = merge_batch(spark, settings, batch["batch_id"], output_dir=batch["output_path"])
    assert late["status"] == "merged" and late["updated"] == 0
    assert _scores(spark, settings) == snapshot


def test_unreadable_output_marks_the_batch_failed_with_the_reason(lake):
    spark, settings = lake
    add_candidates(spark, settings, [candidate("https://cdn.example.org/broken.png", "a broken batch")])
    (batch,) = plan_batches(spark, settings, batch_size=10)["batches"]
    os.makedirs(batch["output_path"])
    with open(os.path.join(batch["output_path"], "results.parquet"), "wb") as f:
        f.write(b"not parquet at all")
    with open(os.path.join(batch["output_path"], "_SUCCESS"), "w") as f:
        f.write("{}")
    before = read_table(spark, settings, "scores").count()
    outcome = merge_batch(spark, settings, batch["batch_id"])
    assert outcome["status"] == "failed" and outcome["error"]
    row = read_table(spark, settings, "batches").where(f"batch_id = '{batch['batch_id']}'").first()
    assert row["status"] == "failed" and row["attempts"] == 1 and "unreadable worker output" in row["error"]
    assert read_table(spark, settings, "scores").count() == before


def test_aesthetic_reaches_scores_and_an_older_workers_output_still_merges(lake, tmp_path):
    """The worker's aesthetic and its model id land in `scores`; a listed image keeps no aesthetic either;
    results.parquet from a worker that predates the column merges with the rating left null."""
    import pyarrow.parquet as pq

    spark, settings = lake
    rng = np.random.default_rng(21)
    rated, listed, failed, old = (candidate(f"https://cdn.example.org/aesthetic-{i}.png", f"rated image {i}") for i in range(4))
    add_candidates(spark, settings, [rated, listed, failed, old])
    rows = [
        result(rated["uid"], rated["url"], "ok", 0.31, seed=40, batch_id="hand-a", aesthetic=7.25),
        result(listed["uid"], listed["url"], "ok", 0.31, seed=41, batch_id="hand-a", aesthetic=3.5),
        result(failed["uid"], failed["url"], "timeout", batch_id="hand-a"),
    ]
    vectors = {r["uid"]: (random_unit(rng), random_unit(rng)) for r in (rated, listed, old)}
    add_takedowns(spark, settings, [TakedownRequest("sha256", rows[1]["sha256"], "hash list 2024-06")])
    write_worker_output(str(tmp_path / "a"), rows, vectors)
    assert merge_batch(spark, settings, "hand-a", output_dir=str(tmp_path / "a"))["status"] == "merged"

    before = [result(old["uid"], old["url"], "ok", 0.3, seed=42, batch_id="hand-b")]
    write_worker_output(str(tmp_path / "b"), before, vectors)
    results = tmp_path / "b" / "results.parquet"
    pq.write_table(pq.read_table(results).drop_columns(["aesthetic", "aesthetic_model"]), results)  # as an older worker wrote it
    assert merge_batch(spark, settings, "hand-b", output_dir=str(tmp_path / "b"))["status"] == "merged"

    scores = {r["uid"]: r for r in _scores(spark, settings)}
    assert (scores[rated["uid"]]["aesthetic"], scores[rated["uid"]]["aesthetic_model"]) == (7.25, "laion-aesthetic-linear")
    assert scores[listed["uid"]]["status"] == "opted_out" and scores[listed["uid"]]["aesthetic"] is None
    assert scores[failed["uid"]]["aesthetic"] is None and scores[failed["uid"]]["aesthetic_model"] is None
    assert scores[old["uid"]]["status"] == "ok" and scores[old["uid"]]["aesthetic"] is None and scores[old["uid"]]["img_emb"]


def _commits(spark, settings) -> int:
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, table_path(settings, "scores")).history().count()


def test_finished_batches_merge_together_each_with_its_own_counts(lake, tmp_path):
    """Batches are merged in groups of about `merge_rows` rows, one `scores` commit per group; each
    batch keeps its own counts, and a uid delivered by two outputs of a group keeps the newer row."""
    from spark_jobs.merge_scores import merge_outputs
    from spark_jobs.session import ensure_tables

    spark, shared = lake
    settings = shared.with_(lake_dir=str(tmp_path / "lake"), merge_rows=5)
    ensure_tables(spark, settings)
    rng = np.random.default_rng(33)
    rows = [candidate(f"https://cdn.example.org/group-{i}.png", f"grouped image {i}") for i in range(9)]
    add_candidates(spark, settings, rows)
    batches = plan_batches(spark, settings, batch_size=3)["batches"]
    vectors = {r["uid"]: (random_unit(rng), random_unit(rng)) for r in rows}
    url = {r["uid"]: r["url"] for r in rows}
    planned = [sorted(r["uid"] for r in spark.read.parquet(b["input_path"]).select("uid").collect()) for b in batches]
    order = [b["batch_id"] for b in batches]
    outputs = [
        [result(u, url[u], "ok", 0.3, batch_id=order[0]) for u in planned[0]],
        # a row for a uid the second batch was never given is not merged from it
        [result(u, url[u], "timeout", batch_id=order[1]) for u in planned[1] + planned[2][:1]],
        [result(u, url[u], "ok", 0.3, batch_id=order[2]) for u in planned[2][:2]],  # one row lost
    ]
    for batch, output in zip(batches, outputs):
        write_worker_output(batch["output_path"], output, vectors)
    commits = _commits(spark, settings)

    summary = merge_planned_batches(spark, settings)

    assert summary["totals"] == {"merged": 3}
    got = summary["batches"]
    assert [o["batch_id"] for o in got] == sorted(order)
    got = sorted(got, key=lambda o: order.index(o["batch_id"]))
    assert [(o["rows"], o["inserted"], o["updated"], o["unchanged"]) for o in got] == [(3, 3, 0, 0), (3, 3, 0, 0), (2, 2, 0, 0)]
    assert [o["statuses"] for o in got] == [{"ok": 3}, {"timeout": 3}, {"ok": 2}]
    assert got[1]["stages"][0] == StageStats("results", 4, {"not_planned_in_this_batch": 1}).to_dict()
    assert [o["missing_from_results"] for o in got] == [0, 0, 1]
    scores = _scores(spark, settings)
    assert len(scores) == 8 and {r["batch_id"] for r in scores} == set(order)
    # 6 result rows reach merge_rows=5 after two batches: the three batches took two scores commits
    assert _commits(spark, settings) - commits == 2
    done = read_table(spark, settings, "batches").collect()
    assert {(r["status"], r["attempts"]) for r in done} == {("done", 1)}

    # Delivered again, all in one group this time: nothing changes, and each batch says so.
    again = merge_planned_batches(spark, settings.with_(merge_rows=100), order)
    assert [o["unchanged"] for o in again["batches"]] == [3, 3, 2]
    assert _scores(spark, settings) == scores and _commits(spark, settings) - commits == 2  # not even a commit

    # Two outputs of one group with the same uid (workers run by hand): one MERGE, the newer row wins.
    uid = planned[0][0]
    older = [result(uid, url[uid], "ok", 0.35, scored_at=later(5), batch_id="hand-old")]
    newer = [result(uid, url[uid], "http_4xx", scored_at=later(10), batch_id="hand-new")]
    write_worker_output(str(tmp_path / "old"), older, vectors)
    write_worker_output(str(tmp_path / "new"), newer, vectors)
    hand = merge_outputs(spark, settings, [("hand-new", str(tmp_path / "new"), None), ("hand-old", str(tmp_path / "old"), None)])
    assert [(o["batch_id"], o["updated"], o["unchanged"]) for o in hand] == [("hand-new", 1, 0), ("hand-old", 0, 1)]
    row = {r["uid"]: r for r in _scores(spark, settings)}[uid]
    assert (row["status"], row["batch_id"], row["attempts"]) == ("http_4xx", "hand-new", 2)
    assert _commits(spark, settings) - commits == 3
    # each group's rows were staged as files for Spark, and every group's staging is gone
    assert (tmp_path / "lake" / "scratch" / "merge").is_dir() and not list((tmp_path / "lake" / "scratch" / "merge").iterdir())


def test_a_group_shuffles_its_embeddings_once_in_the_merge_only(lake, tmp_path):
    """Classifying a group's rows against `scores` shuffled them twice, embeddings included: 118 s of
    237 at 4.14M candidates. The classes come from the narrow columns, the planned uids are kept on
    the driver, so the embeddings cross a shuffle once, in the MERGE. Broadcast joins are off, as
    for a `scores` too large to broadcast."""
    from spark_jobs.session import ensure_tables

    spark, shared = lake
    settings = shared.with_(lake_dir=str(tmp_path / "lake"))
    ensure_tables(spark, settings)
    rng = np.random.default_rng(5)
    rows = [candidate(f"https://cdn.example.org/wide-{i}.png", f"wide image {i}") for i in range(600)]
    add_candidates(spark, settings, rows)
    batches = plan_batches(spark, settings, batch_size=200)["batches"]
    vectors = {r["uid"]: (random_unit(rng, 512), random_unit(rng, 512)) for r in rows}
    url = {r["uid"]: r["url"] for r in rows}
    for batch in batches:
        planned = [r["uid"] for r in spark.read.parquet(batch["input_path"]).select("uid").collect()]
        write_worker_output(batch["output_path"], [result(u, url[u], batch_id=batch["batch_id"]) for u in planned], vectors)
    embedding_bytes = len(rows) * 2 * 512 * 2  # img and text, float16
    seen = _shuffle_writes(spark)
    threshold = spark.conf.get("spark.sql.autoBroadcastJoinThreshold")
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    try:
        summary = merge_planned_batches(spark, settings)
    finally:
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", threshold)

    assert summary["totals"] == {"merged": 3} and sum(o["inserted"] for o in summary["batches"]) == len(rows)
    assert read_table(spark, settings, "scores").where("img_emb IS NOT NULL").count() == len(rows)
    shuffled = sum(n for stage, n in _shuffle_writes(spark).items() if stage not in seen)
    assert 0.8 * embedding_bytes < shuffled < 1.5 * embedding_bytes, (shuffled, embedding_bytes)


def _shuffle_writes(spark) -> dict[int, int]:
    """Stage id -> bytes its tasks wrote to shuffles, from the session's status store (kept with the UI off)."""
    gateway = spark.sparkContext._gateway
    stages = spark.sparkContext._jsc.sc().statusStore().stageList(None, False, False, gateway.new_array(gateway.jvm.double, 0), gateway.jvm.java.util.ArrayList())
    return {stages.apply(i).stageId(): stages.apply(i).shuffleWriteBytes() for i in range(stages.size())}
