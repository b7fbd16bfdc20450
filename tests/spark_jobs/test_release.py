"""Release build end to end on real Delta tables: filters, gates, publishing, report, rebuild."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from delta.tables import DeltaTable

from altlake.config import Settings
from altlake.paths import DEPRECATION, derived_subset_file, removals_file
from altlake.schemas import DERIVED_SUBSETS, STATUS_MEANINGS
from altlake.stats import RELEASE_STAGES
from altlake.storage import Credentials, S3Options
from altlake_cli.main import main as altlake_main
from explore.index import IndexRecordedError, build_index
from explore.release import open_release
from explore.search import Explorer, SearchOptions
from explore.service import create_app
from spark_jobs.lake import read_table, table_path, table_version
from spark_jobs.publish import FORMAT_VERSION, LAION_COLUMNS, ReleaseExistsError, file_checksums
from spark_jobs.quality import QualityGateError
from spark_jobs.release import HistoryPurgedError, build_release, index_published_release, rebuild_release
from spark_jobs.removals import UnknownReleaseError, amend_releases, deprecate_release
from spark_jobs.takedowns import TakedownRequest, add_takedowns, apply_takedowns, purge_takedowns
from tests.spark_jobs.lakegen import (
    add_candidates,
    add_scores,
    candidate,
    random_unit,
    result,
    score_row,
    unit,
)

LISTED_SHA = hashlib.sha256(b"on a hash list").hexdigest()
# Original sizes and punsafe that put kept rows on either side of the derived subsets' limits, at them
# and unknown (every other ok row: 640x480, punsafe 0.1).
SIZES = {"en_hi": (2048, 1536), "de_mid": (1024, 4000), "sha_a": (4000, 1023)}
PUNSAFE = {"near_a": 0.9, "nolang_mid": 0.5, "far": None}
FAR_PDQ = "c3" * 32  # the worker's perceptual hash of "far": it travels to the release and its removals addendum

# One built lake and release shared by every test: ten minutes and more on a 2-core machine, so the
# release tests run in the integration target (`make test-integration`, which .ci/run runs too). The
# rebuild test cuts three releases and a rebuild: on a busy machine more than the default 15 minutes.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]


def _aesthetic(uid: str) -> float:
    """Each scenario row's own rating on LAION-Aesthetics' 1-10 scale (so a mixed-up row shows)."""
    return 1 + 9 * int(uid[:4], 16) / 0xFFFF


def _scenario(rng):
    """Named rows, each exercising one rule; returns (candidates, scores, embeddings by uid)."""
    c = {
        "en_hi": candidate("https://a.org/1.jpg", "an english caption above 0.28"),
        "en_low": candidate("https://a.org/2.jpg", "an english caption at 0.27"),
        "de_mid": candidate("https://b.de/3.jpg", "eine deutsche Beschriftung", "de"),
        "nolang_mid": candidate("https://c.net/4.jpg", "zzkx qqv 3311", "nolang"),
        "sha_a": candidate("https://d.org/5.jpg", "same image, better caption"),
        "sha_b": candidate("https://mirror.d.org/5.jpg", "same image, worse caption"),
        "ut_a": candidate("https://e.org/6.jpg", "same url and text", uid="0" * 31 + "a"),
        "ut_b": candidate("https://e.org/6.jpg", "same url and text", uid="0" * 31 + "b"),
        "near_a": candidate("https://f.org/7.jpg", "a near duplicate, the better one"),
        "near_b": candidate("https://g.org/7-resized.jpg", "a near duplicate, the worse one"),
        "far": candidate("https://h.org/8.jpg", "an unrelated image"),
        "failed": candidate("https://i.org/9.jpg", "a download that timed out"),
        "listed": candidate("https://j.org/10.jpg", "an image on a hash takedown list"),
        "unscored": candidate("https://k.org/11.jpg", "not scored yet"),
    }
    similarity = {"en_hi": 0.35, "en_low": 0.27, "de_mid": 0.27, "nolang_mid": 0.265, "sha_a": 0.40, "sha_b": 0.33,
                  "ut_a": 0.5, "ut_b": 0.3, "near_a": 0.45, "near_b": 0.36, "far": 0.3, "listed": 0.5}  # fmt: skip
    emb = {c[k]["uid"]: (random_unit(rng), random_unit(rng)) for k in c}
    base = emb[c["near_a"]["uid"]][0]
    emb[c["near_b"]["uid"]] = (unit(base + 0.03 * rng.standard_normal(base.shape)), random_unit(rng))
    scores = []
    for i, (name, row) in enumerate(c.items()):
        if name == "unscored":
            continue
        status = "timeout" if name == "failed" else "ok"
        res = result(row["uid"], row["url"], status, similarity.get(name), seed=i, aesthetic=_aesthetic(row["uid"]), pdq=FAR_PDQ if name == "far" else None)
        if name in SIZES:
            res["original_width"], res["original_height"] = SIZES[name]
        if name in PUNSAFE:
            res["punsafe"] = PUNSAFE[name]
        if name == "sha_b":
            res["sha256"] = scores[-1]["sha256"]  # the same image bytes as sha_a
        if name == "listed":
            res["sha256"] = LISTED_SHA
        img, text = emb[row["uid"]] if status == "ok" else (None, None)
        scores.append(score_row(res, img, text))
    return c, scores, emb


@pytest.fixture(scope="module")
def built(tmp_path_factory, moto_server):
    """One lake with the scenario, a failed gate attempt, then a successful local release."""
    from spark_jobs.session import get_spark

    root = tmp_path_factory.mktemp("release")
    settings = Settings.from_env(
        lake_dir=str(root / "lake"), release_store=str(root / "releases"), spark_master="local[2]",
        spark_shuffle_partitions=2,
    )  # fmt: skip
    spark = get_spark(settings, app_name="altlake-tests")
    rows, scores, emb = _scenario(np.random.default_rng(11))
    add_candidates(spark, settings, list(rows.values()))
    add_scores(spark, settings, scores)
    add_takedowns(spark, settings, [TakedownRequest("sha256", LISTED_SHA, "hash list 2024-05")])

    pairs_before = table_version(spark, settings, "pairs")
    with pytest.raises(QualityGateError) as gate_error:  # 8 of 12 ok rows kept, above a 50% ceiling
        build_release(spark, settings.with_(kept_fraction_max=0.5), date="20240501", run_id="strict")
    gate_state = (table_version(spark, settings, "pairs") == pairs_before, list((root / "releases").glob("*")))

    # Published through `altlake build-release`, which builds the index into the manifest.
    cli = ["build-release", "--lake", settings.lake_dir, "--store", settings.release_store, "--master", "local[2]", "--date", "20240501"]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert altlake_main(cli) == 0
    summary = json.loads(printed.getvalue())
    return spark, settings, rows, emb, summary, str(gate_error.value), gate_state


def test_a_failing_gate_names_the_expectation_and_publishes_nothing(built):
    _, _, _, _, _, message, (pairs_untouched, published) = built
    assert "pairs" in message and "expect_table_row_count_to_be_between" in message
    assert pairs_untouched and published == []


def test_filters_dedup_takedowns_and_near_duplicates(built):
    spark, settings, rows, _, summary, _, _ = built
    kept = {"en_hi", "de_mid", "nolang_mid", "sha_a", "ut_a", "near_a", "near_b", "far"}
    assert summary["stages"] == [
        {"stage": "scored", "in": len(rows), "kept": len(rows) - 1, "dropped": {"not_scored": 1}, "marked": {}},
        {"stage": "downloaded", "in": len(rows) - 1, "kept": len(rows) - 2, "dropped": {"timeout": 1}, "marked": {}},
        {"stage": "threshold", "in": len(rows) - 2, "kept": len(rows) - 3, "dropped": {"below_threshold": 1}, "marked": {}},
        {"stage": "exact_dedup", "in": len(rows) - 3, "kept": len(rows) - 5, "dropped": {"duplicate": 2}, "marked": {}},
        {"stage": "takedowns", "in": len(rows) - 5, "kept": len(kept), "dropped": {"taken_down": 1}, "marked": {}},
        {"stage": "near_dedup", "in": len(kept), "kept": len(kept), "dropped": {}, "marked": {"near_duplicate": 1}},
    ]
    assert summary["counts"] == {"en": 6, "multi": 1, "nolang": 1}
    pairs = {r["uid"]: r for r in read_table(spark, settings, "pairs").collect()}
    assert set(pairs) == {rows[k]["uid"] for k in kept}
    assert pairs[rows["near_b"]["uid"]]["near_duplicate_of"] == rows["near_a"]["uid"]
    assert sum(p["near_duplicate_of"] is not None for p in pairs.values()) == 1
    assert pairs[rows["de_mid"]["uid"]]["subset"] == "multi" and pairs[rows["nolang_mid"]["uid"]]["subset"] == "nolang"
    assert summary["gx"]["scores"]["success"] and summary["gx"]["pairs"]["success"]


def test_the_pairs_table_is_clustered_by_subset_and_uid(built):
    """Each file of pairs holds one stretch of (subset, uid), so reading a release file's uid range
    skips the files outside it."""
    from pyspark.sql import functions as F

    spark, settings, *_ = built
    key = F.concat_ws("/", "subset", "uid")
    files = read_table(spark, settings, "pairs").groupBy(F.col("_metadata.file_path")).agg(F.min(key).alias("lo"), F.max(key).alias("hi"))
    ranges = sorted((r["lo"], r["hi"]) for r in files.collect())
    assert len(ranges) >= 2
    assert all(hi < next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:]))


def test_release_files_manifest_report_and_releases_row(built):
    spark, settings, rows, emb, summary, _, _ = built
    release = summary["location"]
    manifest = json.loads(open(os.path.join(release, "manifest.json")).read())
    assert manifest["files"] == file_checksums(release)  # every file, with its checksum
    assert manifest["sources"]["takedowns"] == table_version(spark, settings, "takedowns")
    assert manifest["sources"]["pairs"] == table_version(spark, settings, "pairs")
    assert manifest["thresholds"] == {"en": 0.28, "multi": 0.26, "nolang": 0.26, "near_duplicate_cosine": 0.96}
    assert manifest["models"]["clip_model"] == ["ViT-B-32/laion2b"]
    assert os.path.exists(os.path.join(release, "gx", "pairs", "index.html"))

    en = pq.read_table(os.path.join(release, "parquet", "en", "part-00000.parquet"))
    assert en.column_names == list(LAION_COLUMNS) and en.num_rows == manifest["counts"]["en"]
    assert en.column("uid").to_pylist() == sorted(en.column("uid").to_pylist())
    meta = pq.read_table(os.path.join(release, "embeddings", "en", "metadata", "metadata_0.parquet"))
    img = np.load(os.path.join(release, "embeddings", "en", "img_emb", "img_emb_0.npy"))
    assert img.dtype == np.float16 and img.shape == (en.num_rows, emb[rows["far"]["uid"]][0].shape[0])
    for i, uid in enumerate(meta.column("uid").to_pylist()):
        assert np.array_equal(img[i], emb[uid][0].astype(np.float16))

    # The aesthetic score travels scores -> pairs -> the release's parquet and metadata, under LAION-Aesthetics' name.
    pairs = {r["uid"]: r["aesthetic"] for r in read_table(spark, settings, "pairs").collect()}
    assert pairs == pytest.approx({uid: _aesthetic(uid) for uid in pairs})
    assert "aesthetic" in en.column_names and "aesthetic" in meta.column_names
    for table in (en, meta):
        assert dict(zip(table.column("uid").to_pylist(), table.column("aesthetic").to_pylist())) == pytest.approx(
            {uid: pairs[uid] for uid in table.column("uid").to_pylist()}
        )
    assert manifest["models"]["aesthetic_model"] == ["laion-aesthetic-linear"]
    histogram = manifest["histograms"]["aesthetic"]
    assert histogram["edges"] == [1 + 0.5 * i for i in range(19)] and sum(histogram["counts"]) == len(pairs)
    assert histogram["counts"] == [sum(min(int((a - 1) / 0.5), 17) == i for a in pairs.values()) for i in range(18)]

    report = open(os.path.join(release, "report.html")).read()
    assert report.count("data:image/png;base64,") == 7  # the aesthetic histogram among them
    assert "<td>model: aesthetic_model</td><td>laion-aesthetic-linear</td>" in report
    assert manifest["stages"] == summary["stages"]
    for stage in manifest["stages"]:
        assert f"<td>{RELEASE_STAGES[stage['stage']]}</td><td>{stage['kept']}</td>" in report
        for reason, n in stage["dropped"].items():
            assert f"<td>{stage['stage']}</td><td>{reason}</td><td>{n}</td>" in report
    assert f"<td>created</td><td>{manifest['created_at']}</td>" in report
    assert "<td>GX gate on pairs</td><td>passed: " in report and 'href="gx/"' in report and 'href="manifest.json"' in report
    assert "<td>model: clip_model</td><td>ViT-B-32/laion2b</td>" in report
    assert "<td>en</td><td>0.280</td>" in report  # thresholds rounded for people
    for status in manifest["statuses"]:
        assert f"{status}: {STATUS_MEANINGS[status]}" in report

    (row,) = read_table(spark, settings, "releases").collect()
    text = open(os.path.join(release, "manifest.json"), "rb").read()
    assert row["release_id"] == summary["release_id"] and row["manifest_sha256"] == hashlib.sha256(text).hexdigest()
    assert row["n_pairs"] == sum(manifest["counts"].values())
    with pytest.raises(ReleaseExistsError):
        build_release(spark, settings, date="20240501")

    # A publish that died between the store and `releases`: its retry records the published release.
    DeltaTable.forPath(spark, table_path(settings, "releases")).delete(f"release_id = '{summary['release_id']}'")
    with pytest.raises(ReleaseExistsError):
        build_release(spark, settings, date="20240501")
    (recovered,) = read_table(spark, settings, "releases").collect()
    assert (recovered["release_id"], recovered["manifest_sha256"], recovered["n_pairs"]) == (row["release_id"], row["manifest_sha256"], row["n_pairs"])


def test_derived_subsets_hold_exactly_the_rows_each_filter_selects(built):
    _, _, rows, _, summary, _, _ = built
    release = Path(summary["location"])
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 5
    # The release's rows, read independently from its language groups' parquet.
    published = {r["uid"]: r for path in sorted(release.glob("parquet/*/*.parquet")) for r in pq.read_table(path).to_pylist()}
    expected = {
        "aesthetic": {u for u, r in published.items() if r["aesthetic"] is not None and r["aesthetic"] >= 5.0},
        "high_resolution": {u for u, r in published.items() if None not in (r["WIDTH"], r["HEIGHT"]) and min(r["WIDTH"], r["HEIGHT"]) >= 1024},
        "research": set(published),
        "research-safe": {u for u, r in published.items() if r["punsafe"] is not None and r["punsafe"] <= 0.5},
    }
    uid = {name: row["uid"] for name, row in rows.items()}
    assert expected["high_resolution"] == {uid["en_hi"], uid["de_mid"]}  # 1024 on a side is in; sha_a's 1023 is not
    assert expected["research-safe"] == set(published) - {uid["near_a"], uid["far"]}  # 0.5 is in; 0.9 and unknown are not
    assert 0 < len(expected["aesthetic"]) < len(published)

    section = manifest["derived_subsets"]
    assert list(section) == list(DERIVED_SUBSETS)
    assert {name: (e["filter"], e["rows"], e["file"]) for name, e in section.items()} == {
        "aesthetic": ("aesthetic >= 5.0", len(expected["aesthetic"]), "subsets/aesthetic.parquet"),
        "high_resolution": ("original_width >= 1024 AND original_height >= 1024", 2, "subsets/high_resolution.parquet"),
        "research": ("TRUE", len(published), "subsets/research.parquet"),
        "research-safe": ("punsafe IS NOT NULL AND punsafe <= 0.5", len(published) - 2, "subsets/research-safe.parquet"),
    }  # fmt: skip
    assert (section["aesthetic"]["aesthetic_min"], section["aesthetic"]["preset"], section["high_resolution"]["min_side"]) == (5.0, "5plus", 1024)
    assert (section["research"]["max_punsafe"], section["research-safe"]["max_punsafe"]) == (None, 0.5)  # the punsafe limits
    for name, entry in section.items():
        path = release / entry["file"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == manifest["files"][entry["file"]]["sha256"]
        assert entry["bytes"] == path.stat().st_size
        table = pq.read_table(path)
        assert table.column_names == list(LAION_COLUMNS) and table.num_rows == entry["rows"]  # img2dataset reads URL / TEXT
        subset = table.to_pylist()
        assert [r["uid"] for r in subset] == sorted(expected[name])  # exactly the filter's rows, sorted by uid
        assert subset == [published[r["uid"]] for r in subset]  # every column as the release has it

    report = (release / "report.html").read_text()
    for name, entry in section.items():
        assert f"<td>{name}</td><td>{entry['rows']}</td>" in report


def test_the_index_is_built_before_publishing_and_recorded_in_the_manifest(built):
    _, _, rows, emb, summary, _, _ = built
    release = summary["location"]
    manifest = json.loads(open(os.path.join(release, "manifest.json")).read())
    index = manifest["index"]
    assert summary["index"] == index
    n = sum(manifest["counts"].values())
    for modality in ("image", "text"):
        recorded = index["indices"][modality]
        assert recorded["kind"] == "flat" and recorded["rows"] == n and recorded["recall_queries"] == n
        assert recorded["recall_at_10"] == 1.0  # exact search finds exactly the brute-force neighbours
    checksums = file_checksums(release)
    assert set(index["files"]) == {"index/image.index", "index/text.index", "index/metadata.arrow", "index/index_info.json", "index/aesthetic_ratings.npy"}
    assert all(index["files"][path] == checksums[path] == manifest["files"][path] for path in index["files"])

    # Built in staging, it serves the published release: a stored image embedding finds its own row.
    explorer = Explorer(open_release(release), None, SearchOptions())
    assert explorer.name == summary["release_id"]
    uid = rows["far"]["uid"]
    (top, *_) = explorer.knn_search(emb[uid][0], "image", 3, 3, False, False, False)
    assert top["uid"] == uid and top["similarity"] > 0.99

    # `altlake index` never rewrites a release whose manifest records its index.
    with pytest.raises(IndexRecordedError, match="immutable"):
        build_index(release, force=True)
    assert file_checksums(release) == checksums


def test_rebuild_is_bit_for_bit_after_the_tables_move_on_and_next_release_goes_to_s3(built, tmp_path, moto_server):
    spark, settings, rows, emb, summary, _, _ = built
    same = rebuild_release(spark, settings, summary["release_id"], str(tmp_path / "same"))
    assert same["identical"] and same["reproduces_published"] and same["withheld"] == 0, same
    extra = candidate("https://z.org/new.jpg", "a pair from a newer crawl", crawl="CC-MAIN-2024-18")
    add_candidates(spark, settings, [extra])
    vector = random_unit(np.random.default_rng(5))
    add_scores(spark, settings, [score_row(result(extra["uid"], extra["url"], "ok", 0.5, seed=99), vector, vector)])
    add_takedowns(spark, settings, [TakedownRequest("domain", "h.org", "owner request")])
    apply_takedowns(spark, settings)  # removes "far" from every table

    # The takedown now in force withholds "far": the rebuild is the release as published minus that row.
    rebuilt = rebuild_release(spark, settings, summary["release_id"], str(tmp_path / "rebuilt"))
    assert rebuilt["reproduces_published"] and not rebuilt["identical"], rebuilt
    assert rebuilt["files_compared"] == 3 + 3 * 3 + len(DERIVED_SUBSETS)  # a parquet + img/text/metadata per language, a parquet per derived subset
    far = rows["far"]
    assert rebuilt["withheld_rows"] == [{"uid": far["uid"], "url": far["url"], "kind": "domain", "value": "h.org"}]
    published = _release_uids(summary["location"])
    assert far["uid"] in published and _release_uids(str(tmp_path / "rebuilt")) == published - {far["uid"]}
    research = pq.read_table(tmp_path / "rebuilt" / derived_subset_file("research"), columns=["uid"]).column("uid").to_pylist()
    assert set(research) == published - {far["uid"]}  # the derived subsets are rebuilt minus the withheld row too

    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket="altlake-releases")
    s3_settings = settings.with_(release_store="s3://altlake-releases/laion")
    # The store's endpoint and keys as the Airflow plugin passes them (from its connection).
    store_options = S3Options(endpoint=moto_server, credentials=Credentials("testing", "testing"))
    second = build_release(spark, s3_settings, store_options=store_options, date="20240501")
    assert second["release_id"] != summary["release_id"]
    assert second["location"] == f"s3://altlake-releases/laion/{second['release_id']}"
    body = client.get_object(Bucket="altlake-releases", Key=f"laion/{second['release_id']}/manifest.json")["Body"]
    manifest = json.loads(body.read())
    assert manifest["sources"]["takedowns"] == table_version(spark, settings, "takedowns")
    assert manifest["counts"]["en"] == summary["counts"]["en"]  # +1 new pair, -1 taken down
    assert rows["far"]["uid"] not in {r["uid"] for r in read_table(spark, settings, "pairs").collect()}
    assert set(manifest["files"]) >= {"report.html", "parquet/en/part-00000.parquet", "index/image.index"}
    assert manifest["index"]["rows"] == sum(manifest["counts"].values())
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="altlake-releases", Prefix=f"laion/{second['release_id']}/")["Contents"]}
    assert {f"laion/{second['release_id']}/{path}" for path in manifest["index"]["files"]} <= keys
    assert index_published_release(s3_settings, second["location"], store_options)["in_manifest"]  # nothing to do

    # Published with --no-index (a driver without faiss), then indexed beside its files by the build_index
    # task: only `index/` is uploaded, the published manifest stays byte for byte as it was.
    bare_settings = settings.with_(release_store="s3://altlake-releases/bare")
    bare = build_release(spark, bare_settings, store_options=store_options, date="20240501", index=False)
    prefix = f"bare/{bare['release_id']}/"
    published = client.get_object(Bucket="altlake-releases", Key=prefix + "manifest.json")["Body"].read()
    assert bare["index"] is None and "index" not in json.loads(published)
    assert not any(o["Key"].startswith(prefix + "index/") for o in client.list_objects_v2(Bucket="altlake-releases", Prefix=prefix)["Contents"])
    indexed = index_published_release(bare_settings, bare["location"], store_options)
    assert not indexed["in_manifest"] and indexed["rows"] == sum(bare["counts"].values()) and set(indexed["indices"]) == {"image", "text"}
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="altlake-releases", Prefix=prefix + "index/")["Contents"]}
    assert {prefix + "index/image.index", prefix + "index/text.index", prefix + "index/index_info.json"} <= keys
    assert client.get_object(Bucket="altlake-releases", Key=prefix + "manifest.json")["Body"].read() == published


def test_the_release_script_stops_before_any_work_when_the_indexer_is_missing(tmp_path):
    """`spark-submit spark_jobs/release.py` builds the index like the DAG; where faiss is missing it says
    so at once, names the way out, and prints no traceback."""
    shim = tmp_path / "no-faiss"
    shim.mkdir()
    (shim / "faiss.py").write_text("raise ModuleNotFoundError(\"No module named 'faiss'\", name='faiss')\n")
    env = {**os.environ, "PYTHONPATH": str(shim)}
    script = Path(__file__).resolve().parents[2] / "spark_jobs" / "release.py"
    run = subprocess.run([sys.executable, str(script), "--lake", str(tmp_path / "lake")], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "the release's KNN index needs faiss" in run.stderr and "--no-index" in run.stderr and "altlake index" in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def _release_uids(root: str) -> set[str]:
    return {uid for path in sorted(Path(root, "parquet").rglob("*.parquet")) for uid in pq.read_table(path, columns=["uid"]).column("uid").to_pylist()}


def test_a_published_release_gets_a_removals_addendum_and_stops_serving_removed_rows(built, tmp_path):
    """After the rebuild test's takedown of h.org: the published release is amended, not rewritten."""
    spark, settings, rows, emb, summary, _, _ = built
    release, release_id = summary["location"], summary["release_id"]
    explorer = Explorer(open_release(release), None, SearchOptions(removals_reload_s=0))
    far = rows["far"]
    (top, *_) = explorer.knn_search(emb[far["uid"]][0], "image", 3, 3, False, False, False)
    assert top["uid"] == far["uid"]  # served before the amendment
    far_id = top["id"]
    checksums = file_checksums(release)

    first = amend_releases(spark, settings, release_ids=[release_id])
    version = first["takedowns_version"]
    assert first["amended"] == {release_id: 1}
    addendum = pq.read_table(Path(release, removals_file(version))).to_pylist()
    assert [(r["uid"], r["url"], r["kind"], r["value"], r["takedowns_version"]) for r in addendum] == [
        (far["uid"], far["url"], "domain", "h.org", version)
    ]
    assert addendum[0]["pdq"] == FAR_PDQ  # holders can also match copies of the removed image
    assert {k: v for k, v in file_checksums(release).items() if not k.startswith("removals/")} == checksums  # immutable
    recorded = read_table(spark, settings, "releases").where(f"release_id = '{release_id}'").first()
    assert recorded["removed"] == 1 and recorded["amended_at"] is not None
    assert amend_releases(spark, settings, release_ids=[release_id])["amended"] == {}  # nothing new: no second file
    assert sorted(p.name for p in Path(release, "removals").iterdir()) == [Path(removals_file(version)).name]

    # The running explorer hides the row on its next reload, without a new index.
    found = explorer.knn_search(emb[far["uid"]][0], "image", 3, 3, False, False, False)
    assert far["uid"] not in {r["uid"] for r in found} and found
    assert explorer.metadata_for([far_id]) == []

    # Past the grace period the purge takes the rows out of the tables' history: the release can no
    # longer be recomputed as it was cut, and a rebuild says so instead of failing on a missing file.
    later = datetime.now(timezone.utc) + timedelta(hours=settings.takedown_grace_hours + 1)
    assert "candidates" in purge_takedowns(spark, settings, now=later)["purged"]
    with pytest.raises(HistoryPurgedError, match="takedown purge removed"):
        rebuild_release(spark, settings, release_id, str(tmp_path / "after-purge"))


def test_a_superseded_release_is_deprecated_beside_its_files_in_releases_and_in_search(built):
    spark, settings, _, _, summary, _, _ = built
    release, release_id = summary["location"], summary["release_id"]
    recorded = {r["release_id"]: r for r in read_table(spark, settings, "releases").collect()}
    successor = next(name for name in recorded if name != release_id)  # the S3 test's later release
    checksums = file_checksums(release)
    with pytest.raises(UnknownReleaseError, match="20990101-00000000"):
        deprecate_release(spark, settings, release_id, "replaced", superseded_by="20990101-00000000")
    with pytest.raises(ValueError, match="needs a reason"):
        deprecate_release(spark, settings, release_id, "  ")
    assert open_release(release).deprecation() is None and not recorded[release_id]["deprecated"]

    notice = deprecate_release(spark, settings, release_id, "rebuilt with the May takedowns", superseded_by=successor)
    assert notice["already_deprecated"] is False and notice["superseded_by"] == successor
    assert notice["superseded_by_location"] == recorded[successor]["location"]
    written = json.loads(Path(release, DEPRECATION).read_text())
    assert written == {k: v for k, v in notice.items() if k not in ("already_deprecated", "location")}
    flags = {r["release_id"]: r["deprecated"] for r in read_table(spark, settings, "releases").collect()}
    assert flags[release_id] is True and not any(flags[name] for name in flags if name != release_id)
    # The release's own files are untouched: the notice is one more file beside them.
    assert {k: v for k, v in file_checksums(release).items() if k != DEPRECATION} == checksums

    again = deprecate_release(spark, settings, release_id, "another reason")
    assert again["already_deprecated"] and again["reason"] == "rebuilt with the May takedowns"  # the first notice stands
    assert json.loads(Path(release, DEPRECATION).read_text()) == written

    # The search service names it in the index description the page shows as a banner.
    assert open_release(release).deprecation() == written
    app = create_app([Explorer(open_release(release), None, SearchOptions())])
    details = next(r for r in app.routes if getattr(r, "path", "") == "/indices/{name:path}").endpoint
    assert asyncio.run(details(release_id))["deprecated"] == written
