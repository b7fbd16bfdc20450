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
