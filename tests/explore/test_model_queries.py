"""Text, image and image-URL queries embedded with the release's own (demo) CLIP."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from altlake.config import Settings
from explore.encoder import ModelOverrides, model_ids, spec_for
from explore.image_url import NOT_FETCHED
from explore.service import ServiceConfig, create_app, load_explorers


def _client(release: Path, **config) -> TestClient:
    service = ServiceConfig(**config)
    return TestClient(create_app(load_explorers([str(release)], service, Settings.from_env()), service))


@pytest.fixture(scope="module")
def client(model_release) -> TestClient:
    return _client(model_release, allow_hosts=("127.0.0.1",))


def test_text_query_is_embedded_with_the_release_model(client, model_release):
    from gpu_workers.models import ModelSpec, load_models

    models = load_models(ModelSpec(nsfw_head=None, watermark_head=None))
    query = models.embed_texts(["two blue squares on the right"], ["en"])[0]
    images = np.load(model_release / "img_emb" / "img_emb_0.npy").astype(np.float32)
    expected = list(np.argsort(-(images @ query))[:8])

    response = client.post("/knn-service", json={"text": "two blue squares on the right", "modality": "image", "num_images": 8})
    assert response.status_code == 200
    assert [r["id"] for r in response.json()] == expected
    details = client.get("/indices/rel-demo").json()
    assert details["text_queries"] is True and details["clip_model"] == models.clip_id


def test_image_and_image_url_queries_find_the_same_picture(client, image_site, model_release):
    base, directory = image_site
    body = base64.b64encode((directory / "7.png").read_bytes()).decode()
    by_upload = client.post("/knn-service", json={"image": body, "num_images": 3}).json()
    assert by_upload[0]["id"] == 7 and by_upload[0]["similarity"] > 0.99
    as_data_url = client.post("/knn-service", json={"image": "data:image/png;base64," + body, "num_images": 3}).json()
    assert [r["id"] for r in as_data_url] == [r["id"] for r in by_upload]

    by_url = client.post("/knn-service", json={"image_url": f"{base}/7.png", "num_images": 3})
    assert by_url.status_code == 200 and by_url.json()[0]["id"] == 7
    missing = client.post("/knn-service", json={"image_url": f"{base}/nope.png"})
    assert missing.status_code == 400 and missing.json()["error"] == NOT_FETCHED


def test_image_url_to_a_private_address_is_refused_without_an_allow_list(model_release, image_site):
    base, _ = image_site
    response = _client(model_release).post("/knn-service", json={"image_url": f"{base}/7.png"})
    assert response.status_code == 400 and "not a public address" in response.json()["error"]


def test_mclip_without_a_multilingual_model_is_a_clear_4xx(client):
    response = client.post("/knn-service", json={"text": "ein roter Kreis", "use_mclip": True})
    assert response.status_code == 400 and "multilingual" in response.json()["error"]


def test_manifest_model_ids_map_back_to_model_specs():
    manifest = {"models": {"clip_model": ["altlake-tiny@demo-0123456789ab"], "text_model": ["altlake-tiny@demo-0123456789ab", "tiny-ml@demo-ffff"]}}
    clip_id, multilingual = model_ids(manifest)
    spec = spec_for(clip_id, multilingual, ModelOverrides())
    assert (spec.clip_model, spec.pretrained, spec.multilingual_text_model, spec.nsfw_head) == ("altlake-tiny", "demo", "demo", None)
    assert spec_for("ViT-B-32@laion2b_s34b_b79k", [], ModelOverrides()).pretrained == "laion2b_s34b_b79k"
    with pytest.raises(ValueError, match="--clip-checkpoint"):
        spec_for("ViT-B-32@sha256:0123", [], ModelOverrides())
    with pytest.raises(ValueError, match="mixes CLIP models"):
        model_ids({"models": {"clip_model": ["a@demo-1", "b@demo-2"]}})
    assert model_ids({"release_id": "x"}) == (None, [])


def test_a_release_whose_model_changed_is_refused(model_release, tmp_path):
    manifest = json.loads((model_release / "manifest.json").read_text())
    name = manifest["models"]["clip_model"][0].split("@")[0]
    manifest["models"]["clip_model"] = [f"{name}@demo-000000000000"]
    from explore.encoder import QueryEncoder

    with pytest.raises(ValueError, match="embedded with"):
        QueryEncoder.for_manifest(manifest, ModelOverrides())


def _aesthetic_of(model_release: Path, results: list[dict]) -> float:
    import pyarrow.parquet as pq

    scores = pq.read_table(model_release / "metadata" / "metadata_0.parquet", columns=["aesthetic"]).column("aesthetic").to_numpy()
    return float(np.mean([scores[r["id"]] for r in results]))


def test_aesthetic_score_moves_a_text_query_toward_the_highly_rated_pictures(client, model_release):
    """Blue scenes are rated 8.6 and the rest 2.4: rating 9 brings blue pictures up, rating 1 pushes them away."""
    red = {"text": "a red circle", "num_images": 8}
    plain = client.post("/knn-service", json=red).json()
    pretty = client.post("/knn-service", json={**red, "aesthetic_score": 9, "aesthetic_weight": 1}).json()
    assert _aesthetic_of(model_release, pretty) > _aesthetic_of(model_release, plain) + 2
    blue = {"text": "a blue square", "num_images": 8}
    plain = client.post("/knn-service", json=blue).json()
    ugly = client.post("/knn-service", json={**blue, "aesthetic_score": 1, "aesthetic_weight": 1}).json()
    assert _aesthetic_of(model_release, ugly) < _aesthetic_of(model_release, plain) - 2
    assert ugly == client.post("/knn-service", json={**blue, "aesthetic_score": 2, "aesthetic_weight": 1}).json()  # no row rates 1
    assert client.get("/indices/rel-demo").json()["violence_detector"] is True


@pytest.fixture(scope="module")
def violence_release(tmp_path_factory) -> dict:
    """40 pairs recorded as embedded with the demo CLIP, whose image embeddings are built on either
    side of the detector's boundary: rows 0-9 lean toward the violent prompts, the others away."""
    from gpu_workers.models import ModelSpec, load_models

    from explore.index import build_index
    from explore.signals import PEACEFUL_PROMPTS, VIOLENT_PROMPTS
    from tests.explore.conftest import synthetic_metadata, unit_rows, write_shard

    models = load_models(ModelSpec(nsfw_head=None, watermark_head=None))
    peaceful, violent = (models.embed_texts(list(p), ["en"] * len(p)).mean(axis=0) for p in (PEACEFUL_PROMPTS, VIOLENT_PROMPTS))
    peaceful, violent = peaceful / np.linalg.norm(peaceful), violent / np.linalg.norm(violent)
    towards = (violent - peaceful) / np.linalg.norm(violent - peaceful)
    rng = np.random.default_rng(8)
    n = 40
    base = unit_rows(rng, n, models.embed_dim)
    base -= np.outer(base @ towards, towards)  # nothing left along the boundary's normal ...
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    side = np.where(np.arange(n) < 10, 1.0, -1.0)
    img = base + 0.5 * side[:, None] * towards  # ... except the side each row is put on
    img = (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float32)
    root = tmp_path_factory.mktemp("violence") / "rel-violence"
    write_shard(root, 0, img, unit_rows(rng, n, models.embed_dim), synthetic_metadata(0, n, rng, img))
    (root / "manifest.json").write_text(json.dumps({"release_id": "rel-violence", "models": {"clip_model": [models.clip_id]}}))
    build_index(str(root))
    stored = np.load(root / "img_emb" / "img_emb_0.npy").astype(np.float32)
    return {"root": root, "img": stored, "violent": stored @ violent > stored @ peaceful}


def test_violence_detector_hides_pictures_nearer_the_violent_prompts(violence_release):
    assert violence_release["violent"].tolist() == [i < 10 for i in range(40)]  # the construction holds
    query = violence_release["img"].mean(axis=0).tolist()
    body = {"embedding_input": query, "num_images": 40, "num_result_ids": 40}
    with _client(violence_release["root"]) as client:
        plain = client.post("/knn-service", json=body)
        detected = client.post("/knn-service", json={**body, "use_violence_detector": True})
        both = client.post("/knn-service", json={**body, "use_violence_detector": True, "use_safety_model": True})
    assert sorted(r["id"] for r in plain.json()) == list(range(40)) and "x-altlake-hidden" not in plain.headers
    assert [r["id"] for r in detected.json()] == [r["id"] for r in plain.json() if r["id"] >= 10]
    assert detected.headers["x-altlake-hidden"] == "violence=10"
    safe = [r for r in plain.json() if r["punsafe"] <= 0.5]  # safe mode first, then the detector on what is left
    assert both.headers["x-altlake-hidden"] == f"unsafe={40 - len(safe)},violence={sum(r['id'] < 10 for r in safe)}"
    assert [r["id"] for r in both.json()] == [r["id"] for r in safe if r["id"] >= 10]
