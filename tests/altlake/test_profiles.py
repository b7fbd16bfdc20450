"""Model profiles files: what parses, and every problem reported at once, one line each."""

from __future__ import annotations

import pytest

from altlake.config import Settings
from altlake.profiles import DEMO_PROFILE, ModelProfile, ProfileError, load_profiles, select_profile

GOOD = """
[profiles.vit-l14]
clip_model = "ViT-L-14"
pretrained = "openai"
nsfw_head = "/models/clip_autokeras_binary_nsfw.pt"
watermark_head = "s3://models/watermark_model_v1.pt"
aesthetic_head = "/models/sac+logos+ava1-l14-linearMSE.pth"
threshold_en = 0.28
threshold_other = 0.26

[profiles.own-b32]
clip_model = "ViT-B-32"
checkpoint = "/models/own-b32.pt"
text_model = "/models/multilingual-b32.pt"
threshold_en = 0.3
threshold_other = 0
"""


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    return str(path)


def test_a_profiles_file_parses_beside_the_built_in_demo(tmp_path):
    profiles = load_profiles(_write(tmp_path, GOOD))
    assert list(profiles) == ["demo", "vit-l14", "own-b32"]
    assert profiles["vit-l14"] == ModelProfile(
        name="vit-l14", clip_model="ViT-L-14", pretrained="openai", nsfw_head="/models/clip_autokeras_binary_nsfw.pt",
        watermark_head="s3://models/watermark_model_v1.pt", aesthetic_head="/models/sac+logos+ava1-l14-linearMSE.pth",
        threshold_en=0.28, threshold_other=0.26,
    )  # fmt: skip
    own = profiles["own-b32"]
    assert (own.checkpoint, own.pretrained, own.nsfw_head, own.threshold_other) == ("/models/own-b32.pt", None, None, 0.0)
    assert isinstance(own.threshold_other, float)


def test_without_a_file_only_demo_exists_with_its_calibrated_thresholds():
    assert load_profiles("") == {"demo": DEMO_PROFILE}
    assert (DEMO_PROFILE.clip_model, DEMO_PROFILE.pretrained, DEMO_PROFILE.nsfw_head) == ("altlake-tiny", "demo", "demo")
    # The demo CLIP's similarities live far above LAION's 0.28 (see gpu_workers/demo_models/MODEL_CARD.md).
    assert DEMO_PROFILE.threshold_en > 0.7 and DEMO_PROFILE.threshold_other > 0.7


def test_settings_name_the_file_and_the_default_profile():
    assert (Settings().model_profiles, Settings().model_profile) == ("", "demo")
    env = {"ALTLAKE_MODEL_PROFILES": "/etc/altlake/profiles.toml", "ALTLAKE_MODEL_PROFILE": "vit-l14"}
    assert (Settings.from_env(env).model_profiles, Settings.from_env(env).model_profile) == ("/etc/altlake/profiles.toml", "vit-l14")


def test_every_problem_is_one_line_in_one_error(tmp_path):
    path = _write(tmp_path, """
title = "mine"

[profiles.typo]
clip_modle = "ViT-L-14"
pretrained = "openai"
threshold_en = 0.28
threshold_other = 0.26

[profiles.both]
clip_model = "ViT-L-14"
pretrained = "openai"
checkpoint = "/models/l14.pt"
threshold_en = "0.28"
threshold_other = true

[profiles.neither]
clip_model = 14
threshold_en = 1.5

[profiles.demo]
clip_model = "ViT-B-32"

[profiles."has space"]
clip_model = "ViT-B-32"
""")
    with pytest.raises(ProfileError) as caught:
        load_profiles(path)
    problems = caught.value.problems
    assert problems == [
        "unknown top-level key 'title': profiles go in [profiles.<name>] tables",
        "[profiles.typo]: unknown key 'clip_modle'; known: clip_model, pretrained, checkpoint, text_model, nsfw_head, "
        "watermark_head, aesthetic_head, threshold_en, threshold_other",
        "[profiles.typo]: clip_model is required",
        "[profiles.both]: threshold_en must be a number between -1 and 1 (a cosine similarity), not '0.28'",
        "[profiles.both]: threshold_other must be a number between -1 and 1 (a cosine similarity), not True",
        "[profiles.both]: give the CLIP's weights as exactly one of pretrained (a cached open_clip tag) or checkpoint "
        "(a path or s3:// URI), not pretrained and checkpoint",
        "[profiles.neither]: threshold_other is required",
        "[profiles.neither]: clip_model must be a non-empty string, not 14",
        "[profiles.neither]: threshold_en must be a number between -1 and 1 (a cosine similarity), not 1.5",
        "[profiles.neither]: give the CLIP's weights as exactly one of pretrained (a cached open_clip tag) or checkpoint "
        "(a path or s3:// URI), not neither",
        "[profiles.demo]: 'demo' is built in (the project's demo models) and cannot be redefined",
        "[profiles.has space]: a profile name is letters, digits, '.', '_' or '-' (at most 64, not starting with a symbol)",
    ]
    message = str(caught.value)
    assert message.startswith(f"{path}: {len(problems)} problems:\n  - unknown top-level key")
    assert all(f"  - {problem}" in message for problem in problems)


def test_unreadable_files_and_unknown_names_say_so(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        load_profiles(str(tmp_path / "missing.toml"))
    with pytest.raises(ProfileError, match="not a readable TOML file"):
        load_profiles(_write(tmp_path, "[profiles.x\nclip_model = 1"))
    profiles = load_profiles(_write(tmp_path, GOOD))
    assert select_profile(profiles, "own-b32").clip_model == "ViT-B-32"
    with pytest.raises(ProfileError) as caught:
        select_profile(profiles, "vit-h14", "profiles.toml")
    assert str(caught.value) == "profiles.toml: unknown model profile 'vit-h14'; known: demo, own-b32, vit-l14"


def test_the_example_profiles_file_is_valid():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "infra" / "model-profiles.toml"
    l14 = load_profiles(str(example))["vit-l14"]
    assert (l14.clip_model, l14.pretrained, l14.checkpoint, l14.text_model) == ("ViT-L-14", "openai", None, None)
    assert all(head.startswith("s3://") for head in (l14.nsfw_head, l14.watermark_head, l14.aesthetic_head))
