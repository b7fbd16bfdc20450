"""Index building: exact for small releases, tuned IVF+PQ for large ones, recorded and idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet
import pytest

from altlake_cli.main import main as altlake
from explore.index import build_index, load_index_info, load_knn
from explore.release import ReleaseError, open_release
from tests.explore.conftest import make_release, unit_rows


def _matrix(paths: list[Path]) -> np.ndarray:
    return np.concatenate([np.load(p).astype(np.float32) for p in paths])


def test_small_release_gets_exact_indices_recorded_beside_an_untouched_manifest(synthetic_release: Path):
    published_manifest = (synthetic_release / "manifest.json").read_bytes()
    info = build_index(str(synthetic_release))

    assert info["skipped"] is False and info["rows"] == 600
    for modality in ("image", "text"):
        assert info["indices"][modality]["kind"] == "flat"
        assert info["indices"][modality]["recall_at_10"] == 1.0
        assert (synthetic_release / "index" / f"{modality}.index").is_file()
    # A published manifest's checksum is recorded in `releases`: indexing never rewrites it.
    assert (synthetic_release / "manifest.json").read_bytes() == published_manifest
    on_disk = json.loads((synthetic_release / "index" / "index_info.json").read_text())
    assert on_disk["indices"] == info["indices"]

    # Global row order: subset "en" (400 rows) then "multi" (200), in the metadata file too.
    table = pa.ipc.open_file(pa.memory_map(str(synthetic_release / "index" / "metadata.arrow"))).read_all()
    assert table.num_rows == 600
    assert table.column("subset").to_pylist() == ["en"] * 400 + ["multi"] * 200
    assert table.column("caption")[450].as_py() == "generated pair number 450"

    # The served search equals brute force over the npy files.
    release = open_release(synthetic_release)
    images = _matrix([s.img_emb for s in release.shards])
    texts = _matrix([s.text_emb for s in release.shards])
    knn = load_knn(release, "image", info["indices"]["image"])
    queries = texts[[3, 450]]
    _, ids = knn.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), 10)
    for q, row in zip(queries, ids):
        assert list(row) == list(np.argsort(-(images @ q))[:10])


def test_the_aesthetic_rating_embeddings_are_stored_with_the_index_and_served_from_there(synthetic_release: Path):
    """clip back's aesthetic_score steers toward rating embeddings averaged from the release's rated
    images: `altlake index` stores them once, the search service reads them instead of averaging."""
    from explore.search import Explorer, SearchOptions
    from explore.signals import rating_embeddings

    info = build_index(str(synthetic_release))
    assert info["aesthetic_ratings_file"] == "index/aesthetic_ratings.npy"
    stored = np.load(synthetic_release / info["aesthetic_ratings_file"])
    release = open_release(synthetic_release)
    images = _matrix([s.img_emb for s in release.shards])
    scores = np.concatenate([pa.parquet.read_table(s.metadata, columns=["aesthetic"]).column("aesthetic").to_numpy() for s in release.shards])
    assert stored.shape == (10, images.shape[1]) and np.allclose(stored, rating_embeddings([(scores, images)]), atol=1e-6)

    assert np.array_equal(Explorer(release, None, SearchOptions()).aesthetic, stored)
    np.save(synthetic_release / info["aesthetic_ratings_file"], -stored)  # the service reads the file, it averages nothing
    assert np.array_equal(Explorer(release, None, SearchOptions()).aesthetic, -stored)

    # An index built before the file existed (its index_info has no such key): averaged at load, as then.
    recorded = json.loads((synthetic_release / "index" / "index_info.json").read_text())
    del recorded["aesthetic_ratings_file"]
    (synthetic_release / "index" / "index_info.json").write_text(json.dumps(recorded))
    assert np.allclose(Explorer(release, None, SearchOptions()).aesthetic, stored, atol=1e-6)
    assert build_index(str(synthetic_release))["skipped"] is False  # and `altlake index` brings it up to date


def test_rebuild_is_skipped_until_the_inputs_change(synthetic_release: Path):
    first = build_index(str(synthetic_release))
    again = build_index(str(synthetic_release))
    assert again["skipped"] is True and again["built_at"] == first["built_at"]

    shard = open_release(synthetic_release).shards[1]
    np.save(shard.img_emb, unit_rows(np.random.default_rng(7), 200, 48).astype(np.float16))
    with pytest.raises(ReleaseError, match="one dimension"):
        build_index(str(synthetic_release))
    with pytest.raises(ValueError, match="stale"):
        load_index_info(open_release(synthetic_release))


def test_large_release_gets_a_tuned_ivf_pq_index_served_memory_mapped(tmp_path: Path):
    root = make_release(tmp_path / "worker-out", [500, 300], layout="worker")
    info = build_index(str(root), exact_max_rows=500, target_recall=0.9, recall_queries=60)

    image = info["indices"]["image"]
    assert image["kind"] == "ivf_pq" and image["factory"].startswith("IVF") and ",PQ" in image["factory"]
    assert image["recall_target_met"] and image["recall_at_10"] >= 0.9
    # the pick: the narrowest shortlist that reached the target, at the fewest lists it needed
    curve = image["recall_curve"]
    assert {"nprobe": image["nprobe"], "rerank_factor": image["rerank_factor"], "recall_at_10": image["recall_at_10"]} in curve
    assert not [p for p in curve if p["recall_at_10"] >= 0.9 and (p["rerank_factor"], p["nprobe"]) < (image["rerank_factor"], image["nprobe"])]
    assert len({p["rerank_factor"] for p in curve}) > 1 or image["nprobe"] > 1  # it measured a climb, not one point

    release = open_release(root)
    knn = load_knn(release, "image", image)
    ivf = faiss.extract_index_ivf(knn.index)
    assert ivf.nprobe == image["nprobe"]
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)  # mmap, not RAM

    # Recall on fresh queries, against our own brute force.
    images = _matrix([s.img_emb for s in release.shards])
    queries = unit_rows(np.random.default_rng(99), 50, 32)
    _, found = knn.search(queries, 10)
    truth = np.argsort(-(queries @ images.T), axis=1)[:, :10]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.85
    sims, _ = knn.search(queries[:1], 10)
    assert np.all(np.diff(sims[0]) <= 1e-6)  # reranked: best first


def test_mismatched_shards_are_refused_with_the_reason(tmp_path: Path):
    root = make_release(tmp_path / "bad", [50, 30], layout="worker")
    (root / "text_emb" / "text_emb_1.npy").unlink()
    with pytest.raises(ReleaseError, match="text_emb shards"):
        build_index(str(root))
    with pytest.raises(ReleaseError, match="holds no embeddings"):
        open_release(tmp_path)


def test_cli_resolves_a_release_id_under_the_release_store(tmp_path: Path, monkeypatch, capsys):
    store = tmp_path / "store"
    make_release(store / "20240101-abc", [120])
    monkeypatch.setenv("ALTLAKE_RELEASE_STORE", str(store))
    assert altlake(["index", "--release", "20240101-abc"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["rows"] == 120 and printed["indices"]["text"]["kind"] == "flat"
    assert captured.err == ""  # stderr is no terminal here: no progress bars in a pipe or a log
    assert (store / "20240101-abc" / "index" / "text.index").is_file()


def test_metadata_lookups_read_the_arrow_buffers_exactly_like_pyarrow(tmp_path: Path):
    from explore.release import MetadataStore

    n = 300
    table = pa.table({
        "url": pa.array([None if i % 7 == 0 else f"https://x.org/{i}-é.jpg" for i in range(n)]),
        "caption": pa.array(["" if i % 5 == 0 else "caption " * (i % 4) for i in range(n)], pa.large_string()),
        "punsafe": pa.array([None if i % 11 == 0 else i / n for i in range(n)], pa.float32()),
        "width": pa.array([None if i % 13 == 0 else i for i in range(n)], pa.int32()),
        "half": pa.array(np.arange(n, dtype=np.float16)),
        "flag": pa.array([None if i % 3 == 0 else bool(i % 2) for i in range(n)]),
    })  # fmt: skip
    path = tmp_path / "metadata.arrow"
    with pa.ipc.new_file(str(path), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=37):  # lookups cross many record batches
            writer.write_batch(batch)
    store = MetadataStore(path)
    ids = np.random.default_rng(4).integers(0, n, 500)
    assert store.take(ids) == table.take(pa.array(ids)).to_pylist()
    assert store.take(ids, ["punsafe", "nope"]) == table.select(["punsafe"]).take(pa.array(ids)).to_pylist()
    assert store.column("url", ids) == table.column("url").take(pa.array(ids)).to_pylist()


def test_index_refuses_a_release_whose_manifest_records_its_index(synthetic_release: Path, capsys):
    manifest_path = synthetic_release / "manifest.json"
    recorded = {**json.loads(manifest_path.read_text()), "index": {"indices": {"image": {"recall_at_10": 1.0}}}}
    manifest_path.write_text(json.dumps(recorded))
    assert altlake(["index", "--release", str(synthetic_release), "--force"]) == 1
    assert "published releases are immutable" in capsys.readouterr().err
    assert not (synthetic_release / "index").exists()  # nothing written beside it
    assert json.loads(manifest_path.read_text()) == recorded
