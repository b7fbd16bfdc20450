"""The task functions' form handling: what a wrong form field does before any Spark job starts."""

from __future__ import annotations

import pytest

from altlake.config import Settings


def test_check_deployment_refuses_a_backend_or_model_the_deployment_does_not_run():
    from airflow.sdk.exceptions import AirflowFailException

    from plugins.scoring import check_deployment, deployed_model

    demo = Settings(worker_backend="local", worker_args="--allow-host 127.0.0.1")
    check_deployment(demo, "", "")
    check_deployment(demo, "local", "demo")
    with pytest.raises(AirflowFailException, match="ALTLAKE_WORKER_BACKEND"):
        check_deployment(demo, "kubernetes", "")
    with pytest.raises(AirflowFailException, match="ViT-L-14"):
        check_deployment(demo, "", "ViT-L-14")
    big = Settings(worker_args="--model ViT-L-14 --pretrained laion2b_s32b_b82k")
    assert deployed_model(big) == "ViT-L-14"
    check_deployment(big, "", "ViT-L-14")


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
    with pytest.raises(AirflowFailException, match="reason"):
        requests_from_params({"url": ["https://a.example/x.jpg"], "reason": " "})
    hashes.write_text("not-a-digest\n" * 2)
    with pytest.raises(AirflowFailException, match="line 2"):
        requests_from_params({"hash_list": str(hashes), "reason": "list"})


def test_extract_task_ends_with_a_summary_a_person_can_read():
    from plugins.ingest import extract_summary_line

    rejected = {"text_too_short": 7, "bad_extension": 0}
    fresh = extract_summary_line("CC-MAIN-2015-18", {"done": 2, "failed": 1, "skipped": 0, "new_candidates": 40, "rejected": rejected})
    assert "3 WAT file(s): 2 ingested, 0 skipped" in fresh and "1 failed" in fresh and "40 new candidate" in fresh
    assert "7 text_too_short" in fresh and "bad_extension" not in fresh and "nothing new" not in fresh
    again = extract_summary_line("CC-MAIN-2015-18", {"done": 0, "failed": 0, "skipped": 1, "new_candidates": 0, "rejected": {}})
    assert "1 skipped (already ingested" in again and again.endswith("nothing new to ingest")


def test_scoring_tasks_end_with_summaries_a_person_can_read():
    from plugins.scoring import merge_summary_line, plan_summary_line

    counts = {"candidates": 44, "unscored": 40, "retryable": 2, "not_retried": 1, "already_planned": 0, "eligible": 42,
              "new_batches": 1, "resumed_batches": 0}  # fmt: skip
    plan = plan_summary_line(counts)
    assert "44 candidate(s): 42 queued in 1 new batch(es) (40 never scored, 2 to retry)" in plan
    assert "1 failed for good" in plan and "nothing to score" not in plan
    idle = plan_summary_line({**counts, "unscored": 0, "retryable": 0, "eligible": 0, "new_batches": 0})
    assert idle.endswith("nothing to score")
    merged = merge_summary_line({"merged_batches": 2, "failed_batches": [{"batch_id": "b", "error": "x"}], "rows": 30,
                                 "inserted": 28, "updated": 2, "per_status": {"blocked_address": 10, "ok": 20}})  # fmt: skip
    assert "2 batch(es) merged into scores: 30 row(s) (28 new, 2 updated); outcomes: 10 blocked_address, 20 ok" in merged
    assert "1 batch(es) failed" in merged
