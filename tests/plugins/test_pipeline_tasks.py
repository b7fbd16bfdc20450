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
