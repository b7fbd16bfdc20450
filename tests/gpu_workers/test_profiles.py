"""Model profiles checked with the real models: a full-size open_clip ViT-B-32 saved as a checkpoint,
LAION-layout NSFW heads with random weights, and the demo models. A profile that cannot score fails
with one line, before the worker requests a single image."""

from __future__ import annotations

import dataclasses

import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from altlake.profiles import DEMO_PROFILE, ModelProfile
from altlake_cli.image_server import ImageServer
from gpu_workers import models as M
from gpu_workers.profiles import ModelLoadError, load_checked, model_spec


pytestmark = pytest.mark.usefixtures("offline")  # conftest: no hub, an empty model cache, one torch thread


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A full-size ViT-B-32 (random init) saved as an open_clip checkpoint, and LAION's NSFW head
    layouts for 512-d (ViT-B/32) and 768-d (ViT-L/14) embeddings, random weights."""
    folder = tmp_path_factory.mktemp("weights")
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()}, folder / "b32.pt")
    for dim, hidden in ((512, M.NSFW_HIDDEN_B32), (768, M.NSFW_HIDDEN_L14)):
        torch.save(M.NsfwHead(dim, hidden).state_dict(), folder / f"nsfw_{dim}.pth")
    return folder


def _b32(weights, **changes) -> ModelProfile:
    profile = ModelProfile(name="own-b32", clip_model="ViT-B-32", checkpoint=str(weights / "b32.pt"),
                           nsfw_head=str(weights / "nsfw_512.pth"), threshold_en=0.3, threshold_other=0.28)  # fmt: skip
    return dataclasses.replace(profile, **changes)


def test_a_b32_checkpoint_with_laion_s_512_d_nsfw_head_loads(weights):
    models = load_checked(model_spec(_b32(weights)))
    assert (models.embed_dim, models.image_size) == (512, 224)
    assert models.clip_id.startswith("ViT-B-32@sha256:") and models.nsfw_id.startswith("laion-nsfw-mlp@sha256:")
    assert models.watermark_id is None and models.multilingual_text_id is None


def test_a_pretrained_tag_loads_from_the_local_hub_cache_and_its_id_pins_the_file(weights, tmp_path):
    """open_clip's `laion2b_s34b_b79k` tag names a Hugging Face repo; its weights placed in the hub
    cache layout (safetensors, as the hub serves them) load offline, give the checkpoint's embeddings,
    and the recorded id names the tag and the file's digest."""
    import hashlib

    from safetensors.torch import save_file

    repo = tmp_path / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    weights_file = repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors"
    weights_file.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in torch.load(weights / "b32.pt", weights_only=True).items()}, str(weights_file))

    heads = {"nsfw_head": None, "watermark_head": None, "aesthetic_head": None}
    tagged = M.load_models(M.ModelSpec(clip_model="ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path / "hub"), **heads))
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()[:12]
    assert tagged.clip_id == f"ViT-B-32@laion2b_s34b_b79k:sha256:{digest}"
    checkpoint = M.load_models(M.ModelSpec(clip_model="ViT-B-32", checkpoint=str(weights / "b32.pt"), **heads))
    texts = ["a red bicycle", "a cat on a sofa"]
    assert torch.allclose(torch.as_tensor(tagged.embed_texts(texts, ["en", "en"])), torch.as_tensor(checkpoint.embed_texts(texts, ["en", "en"])), atol=1e-4)


def test_a_head_for_another_embedding_width_fails_with_the_reason(weights):
    with pytest.raises(ModelLoadError) as caught:
        load_checked(model_spec(_b32(weights, nsfw_head=str(weights / "nsfw_768.pth"))))
    assert str(caught.value) == (
        f"model profile 'own-b32': NSFW head {weights / 'nsfw_768.pth'} expects 768-dim CLIP embeddings, this CLIP gives 512"
    )


def test_unknown_models_and_missing_files_fail_in_one_line(weights):
    with pytest.raises(ModelLoadError) as caught:
        load_checked(model_spec(_b32(weights, clip_model="ViT-B-23")))
    assert str(caught.value).startswith("model profile 'own-b32': unknown open_clip model 'ViT-B-23'; did you mean ViT-B-32")
    with pytest.raises(ModelLoadError, match=r"^model profile 'own-b32': weights file not found: /nowhere/b32.pt$"):
        load_checked(model_spec(_b32(weights, checkpoint="/nowhere/b32.pt")))
    with pytest.raises(ModelLoadError) as caught:  # a checkpoint of another architecture
        load_checked(model_spec(_b32(weights, clip_model="RN50")))
    assert "\n" not in str(caught.value) and "state_dict" in str(caught.value)


def test_the_demo_profile_s_thresholds_are_its_checkpoints_calibrated_ones():
    metadata = {kind: torch.load(M.DEMO_FILES[kind], weights_only=True)["metadata"]["threshold"] for kind in ("clip", "multilingual")}
    assert (DEMO_PROFILE.threshold_en, DEMO_PROFILE.threshold_other) == (metadata["clip"], metadata["multilingual"])
    spec = model_spec(DEMO_PROFILE)
    assert spec == M.ModelSpec(pretrained="demo", multilingual_text_model="demo", profile="demo")  # the demo defaults, named


def test_the_worker_refuses_a_bad_profile_before_any_request(weights, tmp_path, monkeypatch, capsys):
    from altlake_cli.main import main

    (tmp_path / "profiles.toml").write_text(f"""
[profiles.wrong-head]
clip_model = "ViT-B-32"
checkpoint = "{weights / 'b32.pt'}"
nsfw_head = "{weights / 'nsfw_768.pth'}"
threshold_en = 0.3
threshold_other = 0.28
""")
    monkeypatch.setenv("ALTLAKE_MODEL_PROFILES", str(tmp_path / "profiles.toml"))
    with ImageServer() as server:
        batch = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist([{"uid": "a", "url": server.url("photo/coffee.jpg"), "text": "coffee", "language": "en"}]), batch)
        argv = ["score", "--input", str(batch), "--output", str(tmp_path / "out"), "--allow-host", "127.0.0.1"]
        assert main([*argv, "--profile", "wrong-head"]) == 2
        assert server.hits("/robots.txt") == 0 and server.hits("/photo/coffee.jpg") == 0
    err = capsys.readouterr().err
    assert err.strip() == f"altlake score: model profile 'wrong-head': NSFW head {weights / 'nsfw_768.pth'} expects 768-dim CLIP embeddings, this CLIP gives 512"
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--profile", "nope"]) == 2
    assert f"{tmp_path / 'profiles.toml'}: unknown model profile 'nope'; known: demo, wrong-head" in capsys.readouterr().err


def test_every_model_flag_a_profile_replaces_is_a_worker_flag():
    import argparse

    from altlake.profiles import MODEL_FLAGS
    from gpu_workers.worker import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    by_flag = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    assert {flag: by_flag.get(flag) for flag in MODEL_FLAGS.values()} == {flag: dest for dest, flag in MODEL_FLAGS.items()}


def test_altlake_score_with_a_full_size_profile_scores_real_photos(weights, tmp_path, monkeypatch):
    """`altlake score --profile` with ViT-B/32 and every LAION head layout (random weights) on real
    photos from the local image server: every score column filled, 512-d embeddings, each row naming
    its profile and the weight ids whose digests are the files' own."""
    import hashlib

    import numpy as np

    from altlake.schemas import WORKER_RESULTS
    from altlake_cli.main import main
    from altlake.paths import RESULTS_FILE
    from gpu_workers.writer import IMG_EMB_FILE, TEXT_EMB_FILE

    torch.save(M.build_watermark_model().state_dict(), tmp_path / "watermark.pt")
    torch.save(torch.nn.Linear(512, 1).state_dict(), tmp_path / "aesthetic.pth")  # aesthetic-predictor's linear layout
    (tmp_path / "profiles.toml").write_text(f"""
[profiles.own-b32]
clip_model = "ViT-B-32"
checkpoint = "{weights / 'b32.pt'}"
nsfw_head = "{weights / 'nsfw_512.pth'}"
watermark_head = "{tmp_path / 'watermark.pt'}"
aesthetic_head = "{tmp_path / 'aesthetic.pth'}"
threshold_en = 0.3
threshold_other = 0.28
""")
    monkeypatch.setenv("ALTLAKE_MODEL_PROFILES", str(tmp_path / "profiles.toml"))
    photos = ["coffee", "astronaut", "chelsea", "rocket"]
    with ImageServer() as server:
        batch = tmp_path / "in.parquet"
        rows = [{"uid": name, "url": server.url(f"photo/{name}.jpg"), "text": f"a photo of {name}", "language": "en"} for name in photos]
        pq.write_table(pa.Table.from_pylist(rows), batch)
        out = tmp_path / "out"
        argv = ["score", "--input", str(batch), "--output", str(out), "--allow-host", "127.0.0.1", "--profile", "own-b32", "--batch-size", "4"]
        assert main(argv) == 0

    results = pq.read_table(out / RESULTS_FILE)
    assert set(WORKER_RESULTS.column_names) <= set(results.column_names)
    scored = results.to_pylist()
    assert sorted(r["uid"] for r in scored) == sorted(photos) and {r["status"] for r in scored} == {"ok"}
    for column in ("similarity", "punsafe", "pwatermark", "aesthetic"):
        assert all(r[column] is not None and np.isfinite(r[column]) for r in scored), column
    assert all(0 <= r["punsafe"] <= 1 and 0 <= r["pwatermark"] <= 1 for r in scored)

    def digest(path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    expected = {
        "profile": "own-b32",
        "clip_model": f"ViT-B-32@sha256:{digest(weights / 'b32.pt')}",
        "nsfw_model": f"laion-nsfw-mlp@sha256:{digest(weights / 'nsfw_512.pth')}",
        "watermark_model": f"laion-watermark-efficientnet_b3@sha256:{digest(tmp_path / 'watermark.pt')}",
        "aesthetic_model": f"laion-aesthetic-linear@sha256:{digest(tmp_path / 'aesthetic.pth')}",
    }
    for column, value in expected.items():
        assert {r[column] for r in scored} == {value}, column
    for name in (IMG_EMB_FILE, TEXT_EMB_FILE):
        embeddings = np.load(out / name).astype(np.float32)
        assert embeddings.shape == (len(photos), 512)
        assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=2e-3)
