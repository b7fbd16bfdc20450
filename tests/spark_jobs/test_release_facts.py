"""The distributions a release's manifest records (spark_jobs.release), counted in one pass."""

from __future__ import annotations

from spark_jobs.release import AESTHETIC_BINS, HISTOGRAM_BINS, SIZE_EDGES, _distributions, _samples

COLUMNS = "similarity float, punsafe float, pwatermark float, aesthetic float, original_width int, original_height int"


def _bin(value: float, bins: int, low: float, high: float) -> int:
    return min(max(int((value - low) * bins // (high - low)), 0), bins - 1)


def _side(value: int) -> int:
    return sum(value >= edge for edge in SIZE_EDGES[1:])


def test_every_histogram_and_size_counts_its_own_column_edges_and_outliers_included_nulls_in_no_bin(spark):
    rows = [
        (0.31, 0.0, 0.99, 5.2, 640, 480),
        (0.05, 1.0, 0.5, 1.0, 128, 127),
        (1.5, -0.2, None, 10.0, 4096, 8000),  # outside [0, 1] and at the top edges: the edge bins
        (-0.1, None, 0.05, None, None, 300),
        (0.999, 0.55, 0.55, 0.4, 0, None),
    ]
    histograms, sizes = _distributions(spark.createDataFrame(rows, COLUMNS))

    for i, name in enumerate(("similarity", "punsafe", "pwatermark")):
        values = [r[i] for r in rows if r[i] is not None]
        assert histograms[name]["edges"] == [round(j / HISTOGRAM_BINS, 6) for j in range(HISTOGRAM_BINS + 1)]
        assert histograms[name]["counts"] == [sum(_bin(v, HISTOGRAM_BINS, 0.0, 1.0) == j for v in values) for j in range(HISTOGRAM_BINS)]
    aesthetic = [r[3] for r in rows if r[3] is not None]
    assert histograms["aesthetic"]["edges"] == [1 + 0.5 * j for j in range(AESTHETIC_BINS + 1)]
    assert histograms["aesthetic"]["counts"] == [sum(_bin(v, AESTHETIC_BINS, 1.0, 10.0) == j for v in aesthetic) for j in range(AESTHETIC_BINS)]
    assert sum(histograms["punsafe"]["counts"]) == 4 and sum(histograms["aesthetic"]["counts"]) == 4  # the nulls in no bin

    assert sizes["edges"] == list(SIZE_EDGES)
    for i, name in ((4, "width"), (5, "height")):
        values = [r[i] for r in rows if r[i] is not None]
        assert sizes[name] == [sum(_side(v) == j for v in values) for j in range(len(SIZE_EDGES))]
    assert sizes["height"][-1] == 1 and sizes["width"][0] == 1  # 8000 px in the last bucket, 0 px in the first


def test_samples_never_show_a_taken_down_row_and_still_show_as_many(spark):
    """Taken-down uids are left out on the driver (each pick takes that many rows more), or, when
    there are more than `hidden_max` of them, joined away: both give the picks of the rows without them."""
    rows = [(f"u{i:02d}", f"https://img.example/{i}.jpg", f"text {i}", "en", round(0.1 + 0.013 * ((i * 7) % 30), 3), 0.28) for i in range(30)]
    ok = spark.createDataFrame(rows, "uid string, url string, text string, language string, similarity double, threshold double")
    deduped = ok.where("similarity >= threshold")
    above = sorted(r[0] for r in rows if r[4] >= r[5])
    below = sorted(r[0] for r in rows if r[4] < r[5])
    nearest = sorted(rows, key=lambda r: (abs(r[4] - r[5]), r[0]))[0][0]
    gone = {above[0], below[1], nearest}
    visible = [r for r in rows if r[0] not in gone]

    for hidden_max in (10, 2):
        got = _samples(deduped, ok, spark.createDataFrame([(u,) for u in sorted(gone)], "uid string"), n=4, hidden_max=hidden_max)
        assert [s["uid"] for s in got["kept"]] == [u for u in above if u not in gone][:4]
        assert [s["uid"] for s in got["rejected"]] == [u for u in below if u not in gone][:4]
        assert [s["uid"] for s in got["near_threshold"]] == [r[0] for r in sorted(visible, key=lambda r: (abs(r[4] - r[5]), r[0]))][:4]
        assert got["kept"][0] == {"uid": above[1], "url": f"https://img.example/{int(above[1][1:])}.jpg", "text": f"text {int(above[1][1:])}",
                                  "language": "en", "similarity": next(r[4] for r in rows if r[0] == above[1]), "threshold": 0.28}  # fmt: skip


def test_ok_rows_without_embeddings_are_read_for_where_scores_lacks_its_check(spark, settings):
    """With the scores check the release reads no embedding to find ok rows without them; a lake from
    before the check is read for them, drops them with their reason, and keeps the same pairs."""
    from altlake.schemas import EMBEDDED_OK_ROWS
    from altlake.stats import by_name
    from spark_jobs.lake import table_path
    from spark_jobs.release import compute_pairs, current_versions, release_models
    from tests.spark_jobs.lakegen import add_candidates, add_scores, candidate, embeddings_for, result, score_row

    rows = [candidate(f"https://img.example.com/kept-{i}.jpg", f"a kept photo number {i}") for i in range(4)]
    add_candidates(spark, settings, rows)
    add_scores(spark, settings, [score_row(result(r["uid"], r["url"], "ok", 0.4, seed=i), *embeddings_for(i)) for i, r in enumerate(rows[:3])])

    def release() -> tuple[list[str], dict[str, int]]:
        versions = current_versions(spark, settings)
        pairs, facts = compute_pairs(spark, settings, versions, release_models(spark, settings, versions)[1])
        uids = sorted(r["uid"] for r in pairs.select("uid").collect())
        pairs.unpersist()
        return uids, dict(by_name(facts["stages"])["downloaded"].dropped)

    checked, dropped = release()
    assert checked == sorted(r["uid"] for r in rows[:3]) and dropped.get("ok_without_embeddings", 0) == 0

    spark.sql(f"ALTER TABLE delta.`{table_path(settings, 'scores')}` DROP CONSTRAINT {EMBEDDED_OK_ROWS}")
    add_scores(spark, settings, [score_row(result(rows[3]["uid"], rows[3]["url"], "ok", 0.4, seed=3), None, None)])
    unchecked, dropped = release()
    assert unchecked == checked and dropped["ok_without_embeddings"] == 1
