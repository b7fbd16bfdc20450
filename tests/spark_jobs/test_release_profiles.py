"""Releases under model profiles (#15): each row cut at the thresholds of the profile that scored it,
and no release mixing CLIP models unless asked to. Apart from test_release.py, whose module-wide
release build is the suite's longest file, so that the two run side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from altlake.config import Settings
from altlake.profiles import ProfileError
from spark_jobs.lake import read_table
from spark_jobs.release import MixedModelsError, Thresholds, build_release, check_models, rebuild_release, resolve_thresholds
from tests.spark_jobs.lakegen import add_candidates, add_scores, candidate, random_unit, result, score_row

B32, L14 = "ViT-B-32@sha256:0123456789ab", "ViT-L-14@openai"
PROFILES = """
[profiles.loose]
clip_model = "ViT-B-32"
checkpoint = "/models/b32.pt"
nsfw_head = "/models/nsfw_b32.pth"
threshold_en = 0.25
threshold_other = 0.2

[profiles.strict]
clip_model = "ViT-B-32"
checkpoint = "/models/b32.pt"
threshold_en = 0.35
threshold_other = 0.3
"""


def test_thresholds_come_from_each_profile_and_explicit_ones_win(tmp_path):
    (tmp_path / "profiles.toml").write_text(PROFILES)
    settings = Settings(model_profiles=str(tmp_path / "profiles.toml"))
    used = [{"profile": "loose", "clip_model": B32, "rows": 3}, {"profile": "(none)", "clip_model": B32, "rows": 1}]
    resolved = resolve_thresholds(settings, used)
    assert resolved.by_profile == {"(none)": (0.28, 0.26), "loose": (0.25, 0.2)}, "rows that record no profile: LAION-5B's"
    assert Thresholds.from_section(resolved.section()) == resolved
    assert resolve_thresholds(settings.with_(threshold_en=0.5), used).by_profile == {"(none)": (0.5, 0.26), "loose": (0.5, 0.2)}
    both = resolve_thresholds(settings.with_(threshold_en=0.3, threshold_other=0.3), used)
    assert both.section() == {"en": 0.3, "multi": 0.3, "nolang": 0.3, "near_duplicate_cosine": 0.96}, "one pair for all: as before profiles"
    assert resolve_thresholds(Settings(), []).section() == {"en": 0.28, "multi": 0.26, "nolang": 0.26, "near_duplicate_cosine": 0.96}

    gone = [*used, {"profile": "retired", "clip_model": B32, "rows": 2}]
    with pytest.raises(ProfileError, match="profile 'retired', which the deployment's profiles do not define \\(known: demo, loose, strict\\)"):
        resolve_thresholds(settings, gone)
    assert resolve_thresholds(settings.with_(threshold_en=0.3, threshold_other=0.3), gone).by_profile == {None: (0.3, 0.3)}

    check_models([*used, {"profile": "strict", "clip_model": None, "rows": 5}], allow_mixed=False)  # one CLIP
    mixed = [*used, {"profile": "(none)", "clip_model": L14, "rows": 7}]
    with pytest.raises(MixedModelsError, match=f"mix 2 CLIP models: {L14} \\(7 rows\\), {B32} \\(4 rows\\);"):
        check_models(mixed, allow_mixed=False)
    check_models(mixed, allow_mixed=True)


def test_a_release_cuts_each_profile_at_its_thresholds_and_refuses_mixed_clip_models(tmp_path):
    from spark_jobs.session import get_spark

    (tmp_path / "profiles.toml").write_text(PROFILES)
    settings = Settings.from_env(
        lake_dir=str(tmp_path / "lake"), release_store=str(tmp_path / "releases"), spark_master="local[2]",
        spark_shuffle_partitions=2, model_profiles=str(tmp_path / "profiles.toml"),
    )  # fmt: skip
    spark = get_spark(settings, app_name="altlake-tests")
    rows = {  # name: (profile, similarity, CLIP)
        "loose_kept": ("loose", 0.30, B32), "loose_cut": ("loose", 0.22, B32),
        "strict_cut": ("strict", 0.30, B32), "strict_kept": ("strict", 0.40, B32),
        "unrecorded_kept": (None, 0.29, L14),
    }  # fmt: skip
    candidates = {name: candidate(f"https://p.org/{name}.jpg", f"a caption for {name}") for name in rows}
    rng = np.random.default_rng(15)
    scores = []
    for i, (name, (profile, similarity, clip)) in enumerate(rows.items()):
        res = {**result(candidates[name]["uid"], candidates[name]["url"], "ok", similarity, seed=i), "profile": profile, "clip_model": clip}
        scores.append(score_row(res, random_unit(rng), random_unit(rng)))
    add_candidates(spark, settings, list(candidates.values()))
    add_scores(spark, settings, scores)

    with pytest.raises(MixedModelsError) as refused:
        build_release(spark, settings, date="20240601")
    assert f"mix 2 CLIP models: {B32} (4 rows), {L14} (1 rows)" in str(refused.value)
    assert not list((tmp_path / "releases").glob("*"))

    started = time.perf_counter()
    summary = build_release(spark, settings.with_(allow_mixed_models=True), date="20240601")
    wall = time.perf_counter() - started
    # where the build's time went, step by step in order: the steps cover the build and no more
    assert list(summary["seconds"]) == ["filter_and_dedup", "near_duplicates", "counts_and_samples", "gates", "write_pairs",
                                        "release_files", "manifest_facts", "index", "checksums_and_publish"]  # fmt: skip
    assert min(summary["seconds"].values()) >= 0 and 0.5 * wall < sum(summary["seconds"].values()) <= wall + 0.05
    assert {r["uid"] for r in read_table(spark, settings, "pairs").collect()} == {
        candidates[name]["uid"] for name in ("loose_kept", "strict_kept", "unrecorded_kept")
    }
    manifest = json.loads((Path(summary["location"]) / "manifest.json").read_text())
    assert manifest["thresholds"] == {
        "(none):en": 0.28, "(none):multi": 0.26, "(none):nolang": 0.26,
        "loose:en": 0.25, "loose:multi": 0.2, "loose:nolang": 0.2,
        "strict:en": 0.35, "strict:multi": 0.3, "strict:nolang": 0.3, "near_duplicate_cosine": 0.96,
    }  # fmt: skip
    strict = manifest["profiles"]["strict"]
    assert (strict["ok_rows"], strict["models"]["clip_model"], strict["thresholds"]) == (2, [B32], {"en": 0.35, "other": 0.3})
    assert strict["definition"]["checkpoint"] == "/models/b32.pt" and manifest["profiles"]["(none)"]["definition"] is None
    assert manifest["profiles"]["(none)"]["models"]["clip_model"] == [L14]
    assert manifest["scored_similarity"]["groups"]["strict: en"]["threshold"] == 0.35

    rebuilt = rebuild_release(spark, settings, summary["release_id"], str(tmp_path / "rebuilt"))
    assert rebuilt["identical"], rebuilt
