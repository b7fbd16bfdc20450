"""Takedowns: request validation, hash lists, idempotent recording, and removal from every layer."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from altlake import perceptual
from altlake.config import Settings
from altlake.schemas import CANDIDATES, PAIRS, TAKEDOWNS
from spark_jobs.lake import read_table
from spark_jobs.takedowns import (
    TakedownRequest,
    add_takedowns,
    apply_takedowns,
    hashes_of_images,
    match_takedowns,
    normalize_value,
    pdq_distance,
    read_hash_list,
)
from tests.altlake.test_urls import CASES
from tests.spark_jobs.lakegen import T0, add_candidates, add_scores, append_rows, candidate, embeddings_for, f16_bytes, result, score_row

SHA = hashlib.sha256(b"listed image").hexdigest()
MD5 = hashlib.md5(b"listed image").hexdigest()


def test_normalize_value_canonicalises_and_explains_rejections():
    assert normalize_value("domain", " *.Example.COM. ") == "example.com"
    assert normalize_value("sha256", SHA.upper()) == SHA
    for kind, value, reason in [
        ("url", "ftp://x.org/a.jpg", "http"),
        ("domain", "http://example.com/x", "host name"),
        ("md5", "abc", "32 hex"),
        ("ip", "1.2.3.4", "unknown takedown kind"),
    ]:
        with pytest.raises(ValueError, match=reason):
            normalize_value(kind, value)


def test_read_hash_list_text_and_parquet(tmp_path):
    text = tmp_path / "list.csv"
    text.write_text(f"sha256,source\n# re-laion list\n{SHA.upper()},ngo\n\n{'b' * 64}\n")
    assert read_hash_list(str(text), "sha256") == [SHA, "b" * 64]
    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"hash": [MD5]}), table)
    assert read_hash_list(str(table), "md5") == [MD5]
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{SHA}\nnot-a-digest-123456789\n{'c' * 63}\n")
    with pytest.raises(ValueError, match=r"2 invalid entries:\n  line 2: .*\n  line 3"):
        read_hash_list(str(bad), "sha256")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    from spark_jobs.session import get_spark

    settings = Settings.from_env(
        lake_dir=str(tmp_path_factory.mktemp("takedowns") / "lake"), spark_master="local[2]", spark_shuffle_partitions=2
    )
    return get_spark(settings, app_name="altlake-tests"), settings


@pytest.mark.parametrize("stored", ["canonical", "as_sent"])
def test_the_tables_match_every_case_as_extraction_does(lake, stored):
    """The shared case table, on the Spark side: candidates carry url_canonical as extraction
    writes it; requests are stored canonical (add_takedowns) or as sent (rows from before)."""
    spark, _ = lake
    rows = [candidate(url, f"case {i}") for i, (_, _, url, _) in enumerate(CASES)]
    candidates = spark.createDataFrame([tuple(r[c] for c in CANDIDATES.column_names) for r in rows], CANDIDATES.spark_ddl())
    requests = sorted({(k, normalize_value(k, v) if stored == "canonical" else v) for k, v, _, _ in CASES})
    takedowns = spark.createDataFrame([(k, v, "case", T0, None, None) for k, v in requests], TAKEDOWNS.spark_ddl())
    found = {(r["uid"], r["kind"], r["value"]) for r in match_takedowns(candidates, takedowns).collect()}
    got = [(row["uid"], kind, normalize_value(kind, value)) in found for row, (kind, value, _, _) in zip(rows, CASES)]
    assert got == [expected for _, _, _, expected in CASES]


def test_takedowns_are_idempotent_and_remove_matches_from_every_layer(lake):
    spark, settings = lake
    rows = {
        "sub": candidate("https://img.example.com/1.jpg", "subdomain of a taken-down domain"),
        "apex": candidate("https://example.com/2.jpg", "the taken-down domain itself"),
        "lookalike": candidate("https://notexample.com/3.jpg", "a different domain that ends alike"),
        "url": candidate("https://other.org/private.jpg", "a url someone asked to remove"),
        "hash": candidate("https://mirror.net/copy.jpg", "an image on a hash list"),
        "keep": candidate("https://other.org/public.jpg", "nothing to remove here"),
    }
    add_candidates(spark, settings, list(rows.values()))
    scores = [score_row(result(r["uid"], r["url"], "ok", 0.3, seed=i), *embeddings_for(i)) for i, r in enumerate(rows.values())]
    scores[4]["sha256"] = SHA  # the hash row's image is on the list
    add_scores(spark, settings, scores)
    pairs = [
        {**r, "subset": "en", "width": 1, "height": 1, "original_width": 1, "original_height": 1,
         "similarity": 0.3, "punsafe": 0.0, "pwatermark": 0.0, "aesthetic": 5.0, "sha256": s["sha256"], "md5": s["md5"], "pdq": s["pdq"],
         "near_duplicate_of": None, "img_emb": f16_bytes([1.0]), "text_emb": f16_bytes([1.0])}
        for r, s in zip(rows.values(), scores)
    ]  # fmt: skip
    append_rows(spark, settings, "pairs", pairs, PAIRS)

    requests = [
        TakedownRequest("domain", "Example.com", "owner request"),
        TakedownRequest("url", rows["url"]["url"], "GDPR erasure"),
        TakedownRequest("sha256", SHA, "hash list 2024-05"),
    ]
    with pytest.raises(ValueError, match="no reason"):
        add_takedowns(spark, settings, [TakedownRequest("url", "https://x.org/a.jpg", " "), *requests])
    assert read_table(spark, settings, "takedowns").count() == 0  # a bad entry writes nothing
    first = add_takedowns(spark, settings, requests)
    assert (first["added"], first["already_present"]) == (3, 0)
    second = add_takedowns(spark, settings, requests + [TakedownRequest("domain", "example.com", "dup")])
    assert (second["added"], second["already_present"]) == (0, 3)
    assert read_table(spark, settings, "takedowns").count() == 3
    assert read_table(spark, settings, "takedowns").where("kind = 'domain'").first()["reason"] == "owner request"

    applied = apply_takedowns(spark, settings)
    removed = {rows[k]["uid"] for k in ("sub", "apex", "url", "hash")}
    assert applied["matched_uids"] == len(removed)
    assert applied["deleted"] == {"candidates": 4, "scores": 4, "pairs": 4}
    assert applied["takedowns_version"] == second["takedowns_version"]
    for table in ("candidates", "scores", "pairs"):
        left = {r["uid"] for r in read_table(spark, settings, table).collect()}
        assert left == {rows["lookalike"]["uid"], rows["keep"]["uid"]}, table

    again = apply_takedowns(spark, settings)
    assert again["matched_uids"] == 0 and again["deleted"] == {"candidates": 0, "scores": 0, "pairs": 0}


# --- perceptual hashes -----------------------------------------------------------------------------


def test_pdq_distance_in_spark_is_the_python_distance(lake):
    from pyspark.sql import functions as F

    spark, _ = lake
    rng = np.random.default_rng(5)
    pairs = [(bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex(), bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex()) for _ in range(50)]
    pairs += [("f" * 64, "0" * 64), ("8" + "0" * 63, "0" * 64), (pairs[0][0], pairs[0][0])]
    df = spark.createDataFrame(pairs, "a string, b string")
    got = [r["d"] for r in df.select(pdq_distance(F.col("a"), F.col("b")).alias("d")).collect()]
    assert got == [perceptual.distance(a, b) for a, b in pairs]


def test_a_maximum_distance_belongs_to_pdq_requests_only_and_is_bounded(lake):
    spark, settings = lake
    for request, message in [
        (TakedownRequest("sha256", SHA, "r", max_distance=4), "only applies to pdq"),
        (TakedownRequest("pdq", "a" * 64, "r", max_distance=200), "not between 0 and 128"),
        (TakedownRequest("pdq", "a" * 63, "r"), "not 64 hex digits"),
    ]:
        with pytest.raises(ValueError, match=message):
            add_takedowns(spark, settings, [request])


def test_an_image_file_becomes_its_digest_or_its_perceptual_hash(tmp_path):
    from tests.altlake.test_perceptual import _photo

    path = tmp_path / "complaint.png"
    _photo("astronaut").save(path)
    assert hashes_of_images([str(path)], "sha256") == [hashlib.sha256(path.read_bytes()).hexdigest()]
    assert hashes_of_images([str(path)], "md5") == [hashlib.md5(path.read_bytes()).hexdigest()]
    assert hashes_of_images([str(path)], "pdq") == [perceptual.pdq_hash(_photo("astronaut"))[0]]
    with pytest.raises(ValueError, match="not url"):
        hashes_of_images([str(path)], "url")
