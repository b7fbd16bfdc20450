"""The demo models' generator, training script and committed checkpoints."""

from __future__ import annotations

import random
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from gpu_workers import models as M
from gpu_workers.demo_models import synthetic as S
from gpu_workers.demo_models import train
from gpu_workers.models import ModelSpec, load_models


def test_captions_describe_the_scene_in_each_language():
    spec = S.SceneSpec("circle", "red", 2, "left")
    assert S.caption(spec, "en") == "two red circles on the left"
    assert S.caption(spec, "de") == "zwei rote Kreise links"
    assert S.caption(spec, "fr") == "deux cercles rouges à gauche"
    assert S.caption(spec, "es") == "dos círculos rojos a la izquierda"
    assert S.caption(S.SceneSpec("square", "green", 1, "top"), "de") == "ein grünes Quadrat oben"
    assert S.caption(replace(spec, unsafe_proxy=True), "en").endswith("with a striped badge")
    with pytest.raises(ValueError, match="no captions in 'xx'"):
        S.caption(spec, "xx")
    with pytest.raises(ValueError, match="unknown shape/colour"):
        S.SceneSpec("hexagon", "red", 1, "left")


def test_render_is_deterministic_and_draws_what_the_spec_says():
    spec = S.random_spec(random.Random(3))
    first, again = np.asarray(S.render(spec)), np.asarray(S.render(spec))
    assert first.shape == (64, 64, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, np.asarray(S.render(replace(spec, seed=spec.seed + 1))))

    # The shapes sit in the named half: the other half is only background.
    left = S.SceneSpec("square", "blue", 3, "left", seed=11)
    pixels = np.asarray(S.render(left)).astype(int)
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 60  # backgrounds are pale greys
    assert saturated[:, :32].sum() > 50 and saturated[:, 32:].sum() == 0

    marked = np.asarray(S.render(replace(left, unsafe_proxy=True))).astype(int)
    magenta = (marked[..., 0] > 200) & (marked[..., 1] < 40) & (marked[..., 2] > 180)
    assert magenta.sum() > 20 and magenta[:, :32].sum() == 0  # the badge avoids the shapes' half
    watermarked = np.asarray(S.render(replace(left, watermark=True))).astype(int)
    assert (np.abs(watermarked - pixels).sum(axis=2) > 30).sum() > 20


def test_quality_fades_the_picture_and_sets_its_rating():
    spec = S.random_spec(random.Random(4))
    crisp = np.asarray(S.render(spec)).astype(float)
    # Full quality is the default and draws nothing: every scene renders as before the field existed.
    np.testing.assert_array_equal(crisp, np.asarray(S.render(replace(spec, quality=1.0))))
    spreads = [np.asarray(S.render(replace(spec, quality=q))).astype(float).std() for q in (1.0, 0.6, 0.2, 0.0)]
    assert spreads == sorted(spreads, reverse=True) and spreads[-1] < 0.25 * spreads[0]
    assert (S.rating(replace(spec, quality=0.0)), S.rating(replace(spec, quality=0.5)), S.rating(spec)) == (1.0, 5.5, 10.0)
    with pytest.raises(ValueError, match="quality must be within"):
        replace(spec, quality=1.5)


def test_mismatched_spec_never_shares_the_caption():
    rng = random.Random(8)
    for _ in range(200):
        spec = S.random_spec(rng)
        assert S.caption(S.mismatched_spec(spec, rng)) != S.caption(spec)


def test_committed_checkpoints_are_small_fp16_and_carry_their_metrics():
    total = 0
    for kind, path in M.DEMO_FILES.items():
        total += path.stat().st_size
        checkpoint = torch.load(path, weights_only=True)
        floats = [v for v in checkpoint["state_dict"].values() if v.is_floating_point()]
        assert floats and all(v.dtype == torch.float16 for v in floats), kind
        assert checkpoint["metadata"]["steps"] > 0, kind
    assert total < 10 * 1024 * 1024
    aesthetic = torch.load(M.DEMO_FILES["aesthetic"], weights_only=True)
    assert set(aesthetic["state_dict"]) == {"weight", "bias"}  # LAION-AI/aesthetic-predictor's linear layout
    assert aesthetic["metadata"]["val_pearson"] >= 0.8 and M.DEMO_FILES["aesthetic"].stat().st_size < 8 * 1024
    card = (M.DEMO_DIR / "MODEL_CARD.md").read_text()
    assert "NOT an NSFW detector" in card and "python -m gpu_workers.demo_models.train" in card
    assert "NOT an aesthetics model" in card and "--only aesthetic" in card


def test_training_script_smoke_run_writes_loadable_checkpoints(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert train.main(["--scale", "0.002", "--out", str(tmp_path), "--seed", "5"]) == 0
    finally:  # the thread count is process-wide and later tests compare float outputs
        torch.set_num_threads(threads)
    paths = {kind: tmp_path / path.name for kind, path in M.DEMO_FILES.items()}
    assert all(p.is_file() for p in paths.values())
    models = load_models(
        ModelSpec(
            checkpoint=str(paths["clip"]),
            multilingual_text_model=str(paths["multilingual"]),
            nsfw_head=str(paths["nsfw"]),
            watermark_head=str(paths["watermark"]),
            aesthetic_head=str(paths["aesthetic"]),
        )
    )
    assert set(models.thresholds) == {"en", "other"}
    image = S.render(S.random_spec(random.Random(1)))
    emb = models.embed_images(models.preprocess([image]))
    assert models.punsafe(emb).shape == (1,) and models.pwatermark([image]).shape == (1,) and models.aesthetic(emb).shape == (1,)
    assert models.embed_texts(["drei gelbe Dreiecke rechts"], ["de"]).shape == (1, models.embed_dim)


def test_aesthetic_head_alone_retrains_to_the_committed_checkpoint(tmp_path):
    """`--only aesthetic` retrains just that head on the committed CLIP (the others stay as they are)
    and gets the committed weights back (to float rounding: kernels may differ between CPUs)."""
    shutil.copy(M.DEMO_FILES["clip"], tmp_path / M.DEMO_FILES["clip"].name)
    threads = torch.get_num_threads()
    try:
        assert train.main(["--only", "aesthetic", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([M.DEMO_FILES["clip"].name, M.DEMO_FILES["aesthetic"].name])
    retrained = torch.load(tmp_path / M.DEMO_FILES["aesthetic"].name, weights_only=True)
    committed = torch.load(M.DEMO_FILES["aesthetic"], weights_only=True)
    assert retrained["metadata"].keys() == committed["metadata"].keys()
    clip = load_models(ModelSpec(nsfw_head=None, watermark_head=None, aesthetic_head=None))
    rng = random.Random(77)
    scenes = [S.render(S.random_spec(rng, quality=rng.random())) for _ in range(100)]
    embeddings = torch.from_numpy(clip.embed_images(clip.preprocess(scenes)))
    with torch.inference_mode():
        ratings = [M.aesthetic_head(c["state_dict"])[0](embeddings) for c in (retrained, committed)]
    assert (ratings[0] - ratings[1]).abs().max() < 0.05
