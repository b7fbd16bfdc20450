"""The clip back protocol over a generated release: results, filters, metadata, metrics, validation."""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from altlake.config import Settings
from altlake.paths import derived_subset_file
from explore.index import build_index
from explore.service import ServiceConfig, create_app, load_explorers
from tests.explore.conftest import synthetic_metadata, unit_rows, write_shard

DIM = 32
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    """300 pairs where rows 10-14 repeat the URLs of rows 0-4 and rows 20-24 nearly repeat their images."""
    root = tmp_path_factory.mktemp("served") / "rel-served"
    rng = np.random.default_rng(3)
    img, txt = unit_rows(rng, 300, DIM), unit_rows(rng, 300, DIM)
    img[20:25] = img[0:5] + 0.01 * rng.standard_normal((5, DIM)).astype(np.float32)
    img[20:25] /= np.linalg.norm(img[20:25], axis=1, keepdims=True)
    meta = synthetic_metadata(0, 300, rng, img)
    meta["url"][10:15] = meta["url"][0:5]
    write_shard(root, 0, img, txt, meta)
    build_index(str(root))
    return {
        "root": root,
        "img": np.load(root / "img_emb" / "img_emb_0.npy").astype(np.float32),
        "txt": np.load(root / "text_emb" / "text_emb_0.npy").astype(np.float32),
        "meta": meta,
    }


@pytest.fixture(scope="module")
def client(release) -> TestClient:
    config = ServiceConfig(max_body_bytes=LIMIT)
    return TestClient(create_app(load_explorers([str(release["root"])], config, Settings.from_env()), config))


def knn(client: TestClient, **body):
    return client.post("/knn-service", json={"modality": "image", "num_images": 10, **body})


def test_embedding_query_returns_clip_back_results_in_exact_order(client, release):
    query = release["txt"][7] / np.linalg.norm(release["txt"][7])
    response = knn(client, embedding_input=query.tolist(), num_images=12, indice_name="rel-served")
    assert response.status_code == 200
    results = response.json()
    expected = np.argsort(-(release["img"] @ query))[:12]
    assert [r["id"] for r in results] == list(expected)
    first = results[0]
    assert math.isclose(first["similarity"], float(release["img"][expected[0]] @ query), rel_tol=1e-4)
    assert first["url"] == release["meta"]["url"][expected[0]]
    assert first["caption"] == release["meta"]["caption"][expected[0]]
    assert math.isclose(first["clip_similarity"], float(release["meta"]["similarity"][expected[0]]), rel_tol=1e-6)
    assert {"uid", "punsafe", "pwatermark", "sha256", "width", "height", "language"} <= set(first)


def test_text_modality_searches_the_text_embeddings(client, release):
    results = knn(client, embedding=release["txt"][42].tolist(), modality="text", num_images=3).json()
    assert results[0]["id"] == 42 and results[0]["similarity"] > 0.99


def test_safe_mode_hides_results_above_the_unsafe_threshold(client, release):
    query = release["img"][5].tolist()
    plain = knn(client, embedding_input=query, num_images=60).json()
    safe = knn(client, embedding_input=query, num_images=60, use_safety_model=True).json()
    assert any(r["punsafe"] > 0.5 for r in plain)
    assert safe and all(r["punsafe"] <= 0.5 for r in safe)
    assert [r["id"] for r in safe] == [r["id"] for r in plain if r["punsafe"] <= 0.5]
    counted = knn(client, embedding_input=query, num_images=60, use_safety_model=True)
    assert counted.headers["x-altlake-hidden"] == f"unsafe={sum(r['punsafe'] > 0.5 for r in plain)}"
    assert "x-altlake-hidden" not in knn(client, embedding_input=query, num_images=60).headers


def rating_embedding(release: dict, rating: int) -> np.ndarray:
    """The test's own reading of the semantics: the unit mean of the unit image embeddings whose
    aesthetic score rounds (half up) to `rating`, 10 counting as 9."""
    ratings = np.clip(np.floor(release["meta"]["aesthetic"].astype(np.float64) + 0.5), 0, 9)
    rows = release["img"][ratings == rating].astype(np.float64)
    mean = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).mean(axis=0)
    return mean / np.linalg.norm(mean)


def mean_aesthetic(release: dict, results: list[dict]) -> float:
    return float(np.mean([release["meta"]["aesthetic"][r["id"]] for r in results]))


def test_aesthetic_score_steers_the_query_toward_that_rating(client, release):
    query = release["txt"][7] / np.linalg.norm(release["txt"][7])
    steered = query + 0.5 * rating_embedding(release, 9)
    expected = list(np.argsort(-(release["img"] @ (steered / np.linalg.norm(steered))))[:10])
    plain = knn(client, embedding_input=query.tolist()).json()
    high = knn(client, embedding_input=query.tolist(), aesthetic_score=9, aesthetic_weight=0.5).json()
    assert [r["id"] for r in high] == expected != [r["id"] for r in plain]
    assert mean_aesthetic(release, high) > mean_aesthetic(release, plain) + 1
    low = knn(client, embedding_input=query.tolist(), aesthetic_score=1, aesthetic_weight=0.5).json()
    assert mean_aesthetic(release, low) < mean_aesthetic(release, plain) - 1
    # clip back's weight when only the score is given, and the front end's strings
    assert knn(client, embedding_input=query.tolist(), aesthetic_score=9).json() == high
    assert knn(client, embedding_input=query.tolist(), aesthetic_score="9", aesthetic_weight="0.5").json() == high
    assert knn(client, embedding_input=query.tolist(), aesthetic_score=9, aesthetic_weight=0).json() == plain
    assert knn(client, embedding_input=query.tolist(), aesthetic_score="", aesthetic_weight="0.5").json() == plain


def test_an_aesthetic_rating_no_row_has_uses_the_nearest_one(client, release):
    ratings = np.floor(release["meta"]["aesthetic"].astype(np.float64) + 0.5)
    assert not (ratings == 0).any() and (ratings == 1).any()  # the synthetic scores start at 1
    query = release["txt"][3].tolist()
    zero = knn(client, embedding_input=query, aesthetic_score=0, aesthetic_weight=1).json()
    assert zero == knn(client, embedding_input=query, aesthetic_score=1, aesthetic_weight=1).json()
    assert zero != knn(client, embedding_input=query).json()


@pytest.fixture(scope="module")
def old_release(tmp_path_factory) -> Iterator[dict]:
    """A release from before the aesthetic column, built without the safety model (punsafe all null)."""
    import pyarrow as pa

    root = tmp_path_factory.mktemp("old") / "rel-old"
    rng = np.random.default_rng(4)
    img, txt = unit_rows(rng, 80, DIM), unit_rows(rng, 80, DIM)
    meta = synthetic_metadata(0, 80, rng, img)
    del meta["aesthetic"]
    meta["punsafe"] = pa.nulls(80, pa.float32())
    write_shard(root, 0, img, txt, meta)
    build_index(str(root))
    config = ServiceConfig()
    with TestClient(create_app(load_explorers([str(root)], config, Settings.from_env()), config)) as old:
        yield {"client": old, "img": img}


@pytest.mark.parametrize(
    "option, message",
    [
        ({"aesthetic_score": 9}, "no aesthetic scores"),
        ({"aesthetic_score": 0, "aesthetic_weight": 0}, "no aesthetic scores"),
        ({"use_safety_model": True}, "no punsafe scores"),
        ({"use_violence_detector": True}, "records no CLIP model"),
    ],
)
def test_options_a_release_cannot_honour_are_refused_not_ignored(old_release, option, message):
    response = knn(old_release["client"], embedding_input=old_release["img"][0].tolist(), **option)
    assert response.status_code == 422 and message in response.json()["error"]


def test_index_details_say_which_options_a_release_honours(client, old_release):
    assert knn(old_release["client"], embedding_input=old_release["img"][0].tolist()).status_code == 200  # plain queries work
    old = old_release["client"].get("/indices/rel-old").json()
    assert (old["safe_mode"], old["aesthetic_scores"], old["violence_detector"]) == (False, False, False)
    served = client.get("/indices/rel-served").json()
    assert (served["safe_mode"], served["aesthetic_scores"], served["violence_detector"]) == (True, True, False)


def test_dedup_hides_near_duplicate_images_and_duplicate_urls(client, release):
    query = release["img"][0].tolist()
    plain = [r["id"] for r in knn(client, embedding_input=query).json()]
    assert plain[:2] == [0, 20]  # row 20 is row 0's near-duplicate image
    deduped = [r["id"] for r in knn(client, embedding_input=query, deduplicate=True).json()]
    assert deduped == [i for i in plain if i != 20]  # clip back: filters apply to num_result_ids candidates
    wider = [r["id"] for r in knn(client, embedding_input=query, deduplicate=True, num_result_ids=20).json()]
    assert len(wider) == 10 and 20 not in wider

    both = release["img"][1] + release["img"][11]  # rows 1 and 11 share a URL
    plain = [r["id"] for r in knn(client, embedding_input=both.tolist()).json()]
    assert {1, 11} <= set(plain[:3])
    unique = knn(client, embedding_input=both.tolist(), hide_duplicate_urls=True).json()
    assert len({r["url"] for r in unique}) == len(unique)
    assert ({1, 11} & {r["id"] for r in unique}) == {plain.index(1) < plain.index(11) and 1 or 11}


def test_clip_retrieval_client_payload_is_accepted(client, release):
    """Exactly what clip_retrieval.clip_client.ClipClient posts (nulls, aesthetic defaults)."""
    payload = {
        "text": None, "image": None, "image_url": None, "embedding_input": release["img"][9].tolist(),
        "deduplicate": True, "use_safety_model": False, "use_violence_detector": False,
        "indice_name": "rel-served", "use_mclip": False, "aesthetic_score": 9, "aesthetic_weight": 0.5,
        "modality": "image", "num_images": 5, "num_result_ids": 5,
    }  # fmt: skip
    before = ok_knn_requests(client)
    response = client.post("/knn-service", content=json.dumps(payload))  # no Content-Type, like requests' data=
    assert response.status_code == 200 and response.json()[0]["id"] == 9
    front = client.post("/knn-service", content=json.dumps(payload), headers={"content-type": "text/plain;charset=UTF-8"})
    assert front.status_code == 200 and front.json() == response.json()  # the clip-retrieval front end's fetch()
    assert ok_knn_requests(client) == before + 2


def ok_knn_requests(client: TestClient) -> float:
    series = 'altlake_explore_requests_total{method="POST",route="/knn-service",status="200"} '
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(series)]
    return float(lines[0][len(series):]) if lines else 0.0


def test_metadata_indices_health_and_metrics(client, release):
    response = client.post("/metadata", json={"ids": [4, 250], "indice_name": "rel-served"})
    assert response.status_code == 200
    assert [(m["id"], m["metadata"]["url"]) for m in response.json()] == [(4, release["meta"]["url"][4]), (250, release["meta"]["url"][250])]
    assert client.post("/metadata", json={"ids": [300]}).status_code == 400
    assert client.get("/indices-list").json() == ["rel-served"]
    details = client.get("/indices/rel-served").json()
    assert details["rows"] == 300 and details["dim"] == DIM and details["text_queries"] is False
    assert client.get("/healthz").json()["status"] == "ok"

    knn(client, embedding_input=release["img"][1].tolist())
    metrics = client.get("/metrics").text
    assert 'altlake_explore_requests_total{method="POST",route="/knn-service",status="200"}' in metrics
    assert 'altlake_explore_request_seconds_count{route="/knn-service"}' in metrics


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"embedding_input": [0.1] * 31}, 400, "expects 32"),
        ({"embedding_input": [0.0] * 32}, 400, "zero"),
        ({"image": "not base64 @@@"}, 400, "not valid base64"),
        ({"image": base64.b64encode(b"plain text, not a picture").decode()}, 415, "not_image"),
        ({"image": _png()}, 400, "records none"),  # a valid image, but this release has no CLIP model
        ({"text": "a red circle"}, 400, "records none"),
        ({"image_url": "http://127.0.0.1:9/private.jpg"}, 400, "not a public address"),
        ({"image_url": "http://169.254.169.254/latest/meta-data"}, 400, "not a public address"),
        ({"embedding_input": [0.1] * 32, "num_images": 10**9}, 422, "num_images"),
        ({"embedding_input": [0.1] * 32, "modality": "audio"}, 422, "modality"),
        ({"embedding_input": [0.1] * 32, "indice_name": "nope"}, 404, "unknown indice_name"),
        ({"embedding_input": [0.1] * 32, "use_violence_detector": True}, 422, "records no CLIP model"),
        ({"embedding_input": [0.1] * 32, "aesthetic_score": 10}, 422, "aesthetic_score"),
        ({"embedding_input": [0.1] * 32, "aesthetic_score": 9, "aesthetic_weight": 1.5}, 422, "aesthetic_weight"),
        ({}, 400, "give one of"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client, body, status, message):
    response = knn(client, **body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_non_finite_and_malformed_json_are_refused(client):
    response = client.post("/knn-service", content='{"embedding_input": [NaN' + ", 0.1" * 31 + "]}")
    assert response.status_code == 400 and "NaN" in response.json()["error"]
    response = client.post("/knn-service", content=b"{not json")
    assert response.status_code == 422 and "invalid request" in response.json()["error"]
    assert client.post("/knn-service", content=b"[1, 2]").status_code == 422


def test_oversized_bodies_are_refused_declared_or_streamed(client):
    big = json.dumps({"image": "A" * (LIMIT + 10)})
    response = client.post("/knn-service", content=big)
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunks():  # no Content-Length: the server has to count
        for _ in range(LIMIT // 4096 + 2):
            yield b" " * 4096

    response = client.post("/knn-service", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_concurrent_queries_share_one_faiss_call_and_answer_like_lone_ones(release):
    import asyncio

    from prometheus_client import CollectorRegistry, Histogram

    from explore.service import SearchBatcher

    (explorer,) = load_explorers([str(release["root"])], ServiceConfig(), Settings.from_env())
    sizes = Histogram("batch", "batch sizes", buckets=(1, 2, 4, 8), registry=(registry := CollectorRegistry()))
    batcher = SearchBatcher(1, sizes)
    queries = [(release["txt"][i] / np.linalg.norm(release["txt"][i]), 5 if i % 3 else 12) for i in range(9)]

    async def all_at_once():
        return await asyncio.gather(*(batcher.search(explorer, "image", q.astype(np.float32), k) for q, k in queries))

    answers = asyncio.run(all_at_once())
    assert registry.get_sample_value("batch_count") == 2  # one faiss call per k, not one per query
    assert registry.get_sample_value("batch_sum") == len(queries)
    for (query, k), (sims, ids) in zip(queries, answers):
        lone_sims, lone_ids = explorer.knn["image"].search(query[None, :].astype(np.float32), k)
        assert ids.tolist() == lone_ids[0].tolist() and np.allclose(sims, lone_sims[0])


def test_serve_with_several_workers_answers_and_sums_their_metrics(release):
    """`altlake serve --workers 2`: real worker processes, one port, one /metrics over both."""
    import socket
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "altlake_cli.main", "serve", "--release", str(release["root"]), "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                if requests.get(base + "/healthz", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "altlake serve --workers 2 did not start"
            time.sleep(0.3)

        def query(i: int) -> list[int]:
            body = {"embedding_input": release["img"][i].tolist(), "num_images": 3}
            response = requests.post(base + "/knn-service", json=body, timeout=30)
            assert response.status_code == 200, response.text
            return [r["id"] for r in response.json()]

        with ThreadPoolExecutor(8) as pool:
            tops = list(pool.map(query, range(40)))
        assert [top[0] for top in tops] == list(range(40))  # each stored image finds itself first
        metrics = requests.get(base + "/metrics", timeout=10).text
        served = [line for line in metrics.splitlines() if line.startswith("altlake_explore_requests_total{") and 'route="/knn-service"' in line]
        assert served and sum(float(line.rsplit(" ", 1)[1]) for line in served) == 40
        batched = [line for line in metrics.splitlines() if line.startswith("altlake_explore_search_batch_sum")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in batched) == 40  # every query went through one faiss call
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def subset_release(tmp_path_factory) -> dict:
    """300 pairs whose manifest records one derived subset, `aesthetic` (its parquet beside, as publishing
    writes it: subsets/aesthetic.parquet with the rows' uids), indexed over all 300 rows."""
    root = tmp_path_factory.mktemp("served") / "rel-sub"
    rng = np.random.default_rng(4)
    img, txt = unit_rows(rng, 300, DIM), unit_rows(rng, 300, DIM)
    meta = synthetic_metadata(0, 300, rng, img)
    write_shard(root, 0, img, txt, meta)
    inside = np.flatnonzero(meta["aesthetic"] >= 6.0)
    (root / "subsets").mkdir()
    pq.write_table(pa.table({"uid": [meta["uid"][i] for i in inside]}), root / derived_subset_file("aesthetic"))
    section = {"aesthetic": {"filter": "aesthetic >= 6.0", "aesthetic_min": 6.0, "rows": len(inside), "file": derived_subset_file("aesthetic")}}
    (root / "manifest.json").write_text(json.dumps({"release_id": "rel-sub", "derived_subsets": section}))
    build_index(str(root))
    config = ServiceConfig(max_body_bytes=LIMIT)
    client = TestClient(create_app(load_explorers([str(root)], config, Settings.from_env()), config))
    img = np.load(root / "img_emb" / "img_emb_0.npy").astype(np.float32)
    return {"client": client, "img": img, "meta": meta, "inside": inside}


def test_a_derived_subset_is_its_own_index_holding_only_its_rows(subset_release):
    client, img, meta, inside = (subset_release[k] for k in ("client", "img", "meta", "inside"))
    assert 30 < len(inside) < 270  # a real restriction, not all or nothing
    assert client.get("/indices-list").json() == ["rel-sub", "rel-sub/aesthetic"]
    query = img[inside[0]] + img[0]  # near a subset row and near row 0, which is outside it
    query /= np.linalg.norm(query)
    whole = knn(client, embedding_input=query.tolist(), num_images=20, indice_name="rel-sub").json()
    response = knn(client, embedding_input=query.tolist(), num_images=20, indice_name="rel-sub/aesthetic")
    assert response.status_code == 200
    found = [r["id"] for r in response.json()]
    order = inside[np.argsort(-(img[inside] @ query), kind="stable")]
    assert found == list(order[:20])  # the exact top 20 of the subset, as an index of only those rows gives
    assert any(r["id"] not in set(inside) for r in whole)  # the whole release would have answered otherwise
    assert all(meta["aesthetic"][i] >= 6.0 for i in found)

    # Filters count among the subset's candidates only, in the same header.
    safe = knn(client, embedding_input=query.tolist(), num_images=10, num_result_ids=40, use_safety_model=True, indice_name="rel-sub/aesthetic")
    unsafe = sum(meta["punsafe"][i] > 0.5 for i in order[:40])
    assert safe.headers["X-Altlake-Hidden"] == f"unsafe={unsafe}"
    assert [r["id"] for r in safe.json()] == [int(i) for i in order[:40] if meta["punsafe"][i] <= 0.5][:10]

    # More than the subset holds: every subset row, and nothing else.
    everything = knn(client, embedding_input=query.tolist(), num_images=len(inside) + 50, indice_name="rel-sub/aesthetic").json()
    assert sorted(r["id"] for r in everything) == sorted(inside.tolist())

    outside = int(np.setdiff1d(np.arange(300), inside)[0])
    listed = client.post("/metadata", json={"ids": [int(inside[1]), outside], "indice_name": "rel-sub/aesthetic"}).json()
    assert [m["id"] for m in listed] == [int(inside[1])]  # as clip back omits ids it has no row for
    assert len(client.post("/metadata", json={"ids": [int(inside[1]), outside], "indice_name": "rel-sub"}).json()) == 2
    details = client.get("/indices/rel-sub/aesthetic").json()
    assert details["name"] == "rel-sub/aesthetic" and details["rows"] == len(inside)
    assert client.get("/indices/rel-sub").json()["rows"] == 300
    assert knn(client, embedding_input=query.tolist(), indice_name="rel-sub/research").status_code == 404
