"""The task functions' form handling: what a wrong form field does before any Spark job starts."""

from __future__ import annotations

import pytest

from altlake.config import Settings


def test_check_deployment_refuses_another_backend_and_worker_args_that_choose_models():
    from airflow.sdk.exceptions import AirflowFailException

    from plugins.scoring import check_deployment

    demo = Settings(worker_backend="local", worker_args="--allow-host 127.0.0.1")
    check_deployment(demo, "")
    check_deployment(demo, "local")
    with pytest.raises(AirflowFailException, match="ALTLAKE_WORKER_BACKEND"):
        check_deployment(demo, "kubernetes")
    big = Settings(worker_args="--model ViT-L-14 --pretrained=laion2b_s32b_b82k --no-nsfw")
    with pytest.raises(AirflowFailException, match=r"chooses models \(--model, --pretrained, --no-nsfw\).*ALTLAKE_MODEL_PROFILES"):
        check_deployment(big, "")


def test_profile_form_offers_the_deployment_s_profiles_and_hands_the_choice_to_the_workers(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from altlake.profiles import ProfileError
    from plugins.scoring import profile_args, profile_names, score_kwargs, with_worker_args

    assert profile_names(Settings()) == ["demo"]
    profiles = tmp_path / "profiles.toml"
    profiles.write_text("""
[profiles.vit-l14]
clip_model = "ViT-L-14"
pretrained = "openai"
threshold_en = 0.28
threshold_other = 0.26

[profiles.b32]
clip_model = "ViT-B-32"
checkpoint = "/models/b32.pt"
threshold_en = 0.3
threshold_other = 0.28
""")
    deployment = Settings(model_profiles=str(profiles), model_profile="vit-l14")
    assert profile_names(deployment) == ["vit-l14", "b32", "demo"], "the default first: the form's default"
    with pytest.raises(ProfileError, match="ALTLAKE_MODEL_PROFILE: unknown model profile 'vit-h14'; known: b32, demo, vit-l14"):
        profile_names(Settings(model_profiles=str(profiles), model_profile="vit-h14"))

    batch = {"batch_id": "b-1", "input_path": "in.parquet", "output_path": "out"}
    (planned,) = with_worker_args([batch], [*profile_args(deployment, "b32"), "--per-host-concurrency", "2"])
    assert score_kwargs(planned, ["--device", "cuda"])["worker_args"] == ["--device", "cuda", "--profile", "b32", "--per-host-concurrency", "2"]
    profiles.write_text(profiles.read_text().replace("[profiles.b32]", "[profiles.b32-v2]"))  # changed since the DAG was parsed
    with pytest.raises(AirflowFailException, match="unknown model profile 'b32'; known: b32-v2, demo, vit-l14"):
        profile_args(deployment, "b32")


def test_release_form_overrides_thresholds_and_store_and_rejects_unknown_names(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from plugins.release import run_settings

    monkeypatch.setenv("ALTLAKE_THRESHOLD_EN", "0.5")
    settings = run_settings({"release_store": "s3://bucket/releases", "thresholds": {"other": 0.3}})
    assert (settings.threshold_en, settings.threshold_other, settings.release_dir) == (0.5, 0.3, "s3://bucket/releases")
    assert run_settings({"release_store": "", "thresholds": {}}).release_dir.endswith("releases")
    with pytest.raises(AirflowFailException, match="unknown thresholds"):
        run_settings({"thresholds": {"fr": 0.2}})


def test_takedown_form_reads_lists_and_hash_files_and_needs_a_reason(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from plugins.takedowns import requests_from_params

    digest = "ab" * 32
    hashes = tmp_path / "hashes.txt"
    hashes.write_text(f"# list\n{digest}\n")
    requests = requests_from_params(
        {"url": ["https://a.example/x.jpg"], "domain": ["b.example"], "hash_list": str(hashes), "hash_list_kind": "sha256", "reason": "GDPR 1"}
    )
    assert sorted((r.kind, r.value, r.reason) for r in requests) == [
        ("domain", "b.example", "GDPR 1"), ("sha256", digest, "GDPR 1"), ("url", "https://a.example/x.jpg", "GDPR 1"),
    ]  # fmt: skip
    assert requests_from_params({"reason": ""}) == []  # the daily run: nothing new to record
    # pdq requests carry the form's distance; the other kinds carry none
    both = requests_from_params({"pdq": ["cd" * 32], "md5": ["ef" * 16], "pdq_max_distance": 12, "reason": "hash-sharing list"})
    assert sorted((r.kind, r.max_distance) for r in both) == [("md5", None), ("pdq", 12)]
    with pytest.raises(AirflowFailException, match="reason"):
        requests_from_params({"url": ["https://a.example/x.jpg"], "reason": " "})
    hashes.write_text("not-a-digest\n" * 2)
    with pytest.raises(AirflowFailException, match="line 2"):
        requests_from_params({"hash_list": str(hashes), "reason": "list"})


def test_extract_task_ends_with_a_summary_a_person_can_read():
    from altlake.stats import StageStats, chain
    from plugins.ingest import extract_summary_line

    rules = StageStats("rules", 50, {"text_too_short": 7, "bad_extension": 0})
    stages = chain([rules, StageStats("candidates", rules.kept, {"already_a_candidate": 3})])
    fresh = extract_summary_line("CC-MAIN-2015-18", {"done": 2, "failed": 1, "skipped": 0, "new_candidates": 40, "stages": stages})
    assert "3 WAT file(s): 2 ingested, 0 skipped" in fresh and "1 failed" in fresh and "40 new candidate" in fresh
    assert "rules: 50 in, 43 kept; dropped 7 text_too_short" in fresh and "bad_extension" not in fresh and "nothing new" not in fresh
    assert "candidates: 43 in, 40 kept; dropped 3 already_a_candidate" in fresh
    again = extract_summary_line("CC-MAIN-2015-18", {"done": 0, "failed": 0, "skipped": 1, "new_candidates": 0, "stages": chain([])})
    assert "1 skipped (already ingested" in again and again.endswith("nothing new to ingest")


def test_scoring_tasks_end_with_summaries_a_person_can_read():
    from plugins.scoring import merge_summary_line, plan_summary_line

    counts = {"candidates": 44, "unscored": 40, "retryable": 2, "not_retried": 1, "already_planned": 0, "eligible": 42,
              "new_batches": 1, "resumed_batches": 0}  # fmt: skip
    plan = plan_summary_line(counts)
    assert "44 candidate(s): 42 queued in 1 new batch(es) (40 never scored, 2 to retry)" in plan
    assert "1 failed for good" in plan and "nothing to score" not in plan
    rescoring = plan_summary_line({**counts, "rescore": 5, "eligible": 47})
    assert "47 queued in 1 new batch(es) (40 never scored, 2 to retry, 5 scored under another profile to rescore)" in rescoring
    idle = plan_summary_line({**counts, "unscored": 0, "retryable": 0, "eligible": 0, "new_batches": 0})
    assert idle.endswith("nothing to score")
    merged = merge_summary_line({"merged_batches": 2, "failed_batches": [{"batch_id": "b", "error": "x"}], "rows": 30,
                                 "inserted": 28, "updated": 2, "statuses": {"blocked_address": 10, "ok": 20}})  # fmt: skip
    assert "2 batch(es) merged into scores: 30 row(s) (28 new, 2 updated); outcomes: 10 blocked_address, 20 ok" in merged
    assert "1 batch(es) failed" in merged
