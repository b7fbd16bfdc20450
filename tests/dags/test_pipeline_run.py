"""The whole pipeline through real `dag.test()` runs: cc_ingest -> score_candidates -> build_release.

Real image server on 127.0.0.1, real worker subprocesses, real Spark + Delta, real GX. The runs
score with a deployment's own model profile chosen in the form (`files`: the demo CLIP as an open_clip
checkpoint and every head by path, with its own thresholds), not the built-in `demo`. One uninterrupted chain (module fixture) is checked against its release, then a second
lake is scored with one worker killed mid-batch and resumed, and must end with identical tables.
Kept tiny (about 15 candidates, 2 batches): each worker subprocess loads torch and the model.
"""

from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path

import pytest

from altlake.config import Settings
from altlake.stats import by_name
from altlake.paths import LakePaths
from altlake_cli.demo import DEMO_CRAWL, write_demo_crawl

pytestmark = pytest.mark.integration

BATCH_SIZE = 8
SLOW_S = 4  # one image is held this long: the window in which the kill test stops a worker
SLOW_TARGET = f"/files/matching-000.jpg?delay={SLOW_S}"
PROFILE = "files"  # the deployment's profile the form chooses
# Columns that record when and how fast, not what: they differ between any two runs.
TIMING_COLUMNS = ("scored_at", "download_s")


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    """The image server and a small generated crawl pointing at it (shared by both lakes)."""
    from altlake_cli.image_server import ImageServer

    work_dir = tmp_path_factory.mktemp("crawl")
    with ImageServer(files_dir=work_dir / "images") as server:
        slow = [(server.base_url + SLOW_TARGET, "A slow copy of the first picture")]
        demo = write_demo_crawl(work_dir, server.base_url, matching=4, multilingual=1, mismatched=2, watermarked=1, extra_links=slow)
        yield server, demo


@pytest.fixture(scope="module")
def profiles_file(tmp_path_factory) -> Path:
    """A deployment's profiles file: `files`, the demo models loaded from files as a real deployment
    names them (an open_clip state dict, head files by path), with the demo's calibrated thresholds."""
    import torch

    from altlake.profiles import DEMO_PROFILE
    from gpu_workers.models import DEMO_FILES
    from gpu_workers.profiles import load_checked, model_spec

    folder = tmp_path_factory.mktemp("models")
    torch.save(load_checked(model_spec(DEMO_PROFILE))._clip.state_dict(), folder / "clip.pt")
    thresholds = {"en": DEMO_PROFILE.threshold_en, "other": DEMO_PROFILE.threshold_other}  # the checkpoints' own (tests/gpu_workers)
    path = folder / "profiles.toml"
    path.write_text(
        f"[profiles.{PROFILE}]\n"
        f'clip_model = "altlake-tiny"\ncheckpoint = "{folder / "clip.pt"}"\n'
        + "".join(f'{key} = "{DEMO_FILES[kind]}"\n' for key, kind in (
            ("text_model", "multilingual"), ("nsfw_head", "nsfw"), ("watermark_head", "watermark"), ("aesthetic_head", "aesthetic")))
        + f"threshold_en = {thresholds['en']}\nthreshold_other = {thresholds['other']}\n"
    )  # fmt: skip
    return path


def pipeline_env(monkeypatch, lake_dir: Path, profiles: Path) -> Settings:
    """ALTLAKE_* for the DAG runs, and a fresh parse of score_candidates (it reads the worker
    backend, arguments, retries and the profiles when parsed). No worker retries: a killed batch
    stays failed. No threshold settings: the release applies the scoring profile's."""
    for name, value in {
        "ALTLAKE_LAKE_DIR": str(lake_dir),
        "ALTLAKE_SPARK_MASTER": "local[2]",
        "ALTLAKE_SPARK_SHUFFLE_PARTITIONS": "2",
        "ALTLAKE_SPARK_BACKEND": "local",
        "ALTLAKE_WORKER_BACKEND": "local",
        "ALTLAKE_WORKER_ARGS": "--allow-host 127.0.0.1 --allow-listed-only --decode-workers 1",
        "ALTLAKE_WORKER_RETRIES": "0",
        "ALTLAKE_BATCH_SIZE": str(BATCH_SIZE),
        "ALTLAKE_MODEL_PROFILES": str(profiles),
        "ALTLAKE_RELEASE_STORE": "",
    }.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env(spark_master="local[2]", spark_shuffle_partitions=2)


def load_pipeline() -> dict:
    import dags.build_release
    import dags.cc_ingest
    import dags.score_candidates

    importlib.reload(dags.score_candidates)
    return {
        "cc_ingest": dags.cc_ingest.cc_ingest_dag,
        "score_candidates": dags.score_candidates.score_candidates_dag,
        "build_release": dags.build_release.build_release_dag,
    }


def states(run) -> dict[str, str]:
    return {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state) for ti in run.get_task_instances()}


def table_rows(spark, settings: Settings, name: str, drop: tuple[str, ...] = ()) -> list[tuple]:
    df = spark.read.format("delta").load(LakePaths(settings.lake_dir).table(name)).drop(*drop)
    return sorted(tuple(row) for row in df.collect())


@pytest.fixture(scope="module")
def chain(airflow_db, crawl, profiles_file, tmp_path_factory):
    """An uninterrupted cc_ingest -> score_candidates -> build_release in its own lake."""
    _, demo = crawl
    with pytest.MonkeyPatch.context() as monkeypatch:
        settings = pipeline_env(monkeypatch, tmp_path_factory.mktemp("uninterrupted") / "lake", profiles_file)
        pipeline = load_pipeline()
        runs = {
            "cc_ingest": pipeline["cc_ingest"].test(run_conf={"crawl": DEMO_CRAWL, "wat_paths": [str(demo.wat)]}),
            "score_candidates": pipeline["score_candidates"].test(run_conf={"profile": PROFILE}),
            "build_release": pipeline["build_release"].test(),
        }
        yield settings, {name: states(run) for name, run in runs.items()}, {name: run.run_id for name, run in runs.items()}


def test_chain_publishes_a_release_that_matches_its_tables(chain, spark):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    from plugins.assets import SCORES_ASSET

    settings, run_states, run_ids = chain
    assert set(run_states["cc_ingest"].values()) == {"success"}
    score_states = run_states["score_candidates"]
    assert [k for k in score_states if k.startswith("score[")] == ["score[0]", "score[1]"], score_states
    assert set(score_states.values()) == {"success"}, score_states
    assert run_states["build_release"] == {"validate_candidates": "success", "publish": "success", "build_index": "success"}

    scores = spark.read.format("delta").load(LakePaths(settings.lake_dir).table("scores"))
    candidates = spark.read.format("delta").load(LakePaths(settings.lake_dir).table("candidates"))
    opted_out = candidates.where("opt_out IS NOT NULL")
    assert [r["opt_out"] for r in opted_out.collect()] == ["meta_robots"]  # the demo page with <meta name=robots content=noai>
    assert scores.count() == candidates.count() - 1 > 0 and not scores.join(opted_out, "uid").count()  # never downloaded
    statuses = {r["status"]: r["count"] for r in scores.groupBy("status").count().collect()}
    assert statuses["ok"] >= 7  # the served images (4 matching, 1 multilingual, 2 mismatched, 1 watermarked, slow copy)
    assert {"http_4xx", "opted_out", "robots_disallowed"} <= statuses.keys(), statuses
    batches = spark.read.format("delta").load(LakePaths(settings.lake_dir).table("batches")).collect()
    assert {b["status"] for b in batches} == {"done"} and len(batches) == 2

    with create_session() as session:
        # This chain's scoring run only: the worker's Airflow database also holds other test files' runs.
        events = session.query(AssetEvent).filter_by(source_dag_id="score_candidates", source_run_id=run_ids["score_candidates"]).all()
        events = [e for e in events if e.asset.uri == SCORES_ASSET.uri]
    assert events and events[-1].extra["rows"] == scores.count()

    (release,) = spark.read.format("delta").load(LakePaths(settings.lake_dir).table("releases")).collect()
    location = Path(release["location"])
    manifest = json.loads((location / "manifest.json").read_text())
    pairs = spark.read.format("delta").load(LakePaths(settings.lake_dir).table("pairs"))
    n_pairs = pairs.count()
    assert 0 < n_pairs < statuses["ok"]  # the mismatched captions fall below the threshold
    stages = by_name(manifest["stages"])
    assert release["n_pairs"] == n_pairs == sum(manifest["counts"].values()) == stages["takedowns"].kept
    assert stages["scored"].taken == candidates.count() and stages["downloaded"].kept == statuses["ok"]
    assert json.loads(release["manifest"])["release_id"] == manifest["release_id"] == release["release_id"]
    assert manifest["sources"]["takedowns"] >= 0
    # Scored with the profile the form chose, cut at its thresholds, and the manifest says so.
    assert {r["profile"] for r in scores.where("status = 'ok'").select("profile").distinct().collect()} == {PROFILE}
    from altlake.profiles import DEMO_PROFILE

    assert (manifest["thresholds"]["en"], manifest["thresholds"]["multi"]) == (DEMO_PROFILE.threshold_en, DEMO_PROFILE.threshold_other)
    (used,) = manifest["profiles"].values()
    assert list(manifest["profiles"]) == [PROFILE] and used["ok_rows"] == statuses["ok"]
    assert used["definition"]["checkpoint"].endswith("clip.pt") and all("@sha256:" in i for i in used["models"]["clip_model"])
    per_subset = {r["subset"]: r["count"] for r in pairs.groupBy("subset").count().collect()}
    assert {k: v for k, v in manifest["counts"].items() if v} == per_subset
    for subset, count in per_subset.items():
        assert list((location / "parquet" / subset).glob("*.parquet")), subset
        import numpy as np

        (img,) = (location / "embeddings" / subset / "img_emb").glob("*.npy")
        assert np.load(img).shape[0] == count
    assert (location / "index" / "index_info.json").is_file()
    index = manifest["index"]  # built from the staged files before publishing, recorded in the manifest
    assert index["rows"] == n_pairs and 0 < index["indices"]["image"]["recall_at_10"] <= 1
    assert all(manifest["files"][path] == checksum for path, checksum in index["files"].items())


def test_killed_scoring_run_resumes_to_identical_tables(chain, crawl, profiles_file, spark, tmp_path, monkeypatch):
    import psutil

    uninterrupted, _, _ = chain
    server, demo = crawl
    settings = pipeline_env(monkeypatch, tmp_path / "lake", profiles_file)
    pipeline = load_pipeline()
    assert pipeline["cc_ingest"].test(run_conf={"crawl": DEMO_CRAWL, "wat_paths": [str(demo.wat)]}).state == "success"

    killed: list[str] = []
    stop = threading.Event()

    def kill_first_worker_mid_batch() -> None:
        """SIGKILL the first worker once it is waiting on the slow image (before any _SUCCESS)."""
        seen = server.hits(SLOW_TARGET)
        while not stop.wait(0.05):
            if server.hits(SLOW_TARGET) <= seen:
                continue
            for child in psutil.Process().children(recursive=True):
                try:
                    command = child.cmdline()
                except psutil.Error:  # a short-lived process already gone
                    continue
                if "score" in command and "--batch-id" in command:
                    killed.append(command[command.index("--batch-id") + 1])
                    child.kill()
                    return

    watcher = threading.Thread(target=kill_first_worker_mid_batch, daemon=True)
    watcher.start()
    first = pipeline["score_candidates"].test(run_conf={"profile": PROFILE})
    stop.set()
    watcher.join()

    assert len(killed) == 1, "the watcher never saw the worker fetch the slow image"
    first_states = states(first)
    assert first.state == "failed" and first_states["merge"] == "success" and first_states["check"] == "failed"
    assert sorted(v for k, v in first_states.items() if k.startswith("score[")) == ["failed", "success"]
    batches = {b["batch_id"]: b for b in spark.read.format("delta").load(LakePaths(settings.lake_dir).table("batches")).collect()}
    assert batches[killed[0]]["status"] == "failed" and "_SUCCESS" in batches[killed[0]]["error"]
    assert [b["status"] for k, b in batches.items() if k != killed[0]] == ["done"]
    partial = spark.read.format("delta").load(LakePaths(settings.lake_dir).table("scores")).count()
    assert 0 < partial < sum(b["n_rows"] for b in batches.values())

    resumed = pipeline["score_candidates"].test(run_conf={"profile": PROFILE})
    assert resumed.state == "success", states(resumed)
    assert [k for k in states(resumed) if k.startswith("score[")] == ["score[0]"]  # only the killed batch again
    assert pipeline["build_release"].test().state == "success"

    assert table_rows(spark, settings, "scores", TIMING_COLUMNS) == table_rows(spark, uninterrupted, "scores", TIMING_COLUMNS)
    assert table_rows(spark, settings, "pairs") == table_rows(spark, uninterrupted, "pairs")


def test_build_release_publishes_to_s3_through_the_airflow_connection(chain, profiles_file, moto_server, spark, monkeypatch):
    import boto3

    uninterrupted, _, _ = chain
    pipeline_env(monkeypatch, Path(uninterrupted.lake_dir), profiles_file)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps({"conn_type": "aws", "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"}}),
    )
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="altlake-releases")
    # Another near-duplicate threshold: new inputs, so a new release id beside the local one.
    run = load_pipeline()["build_release"].test(
        run_conf={"release_store": "s3://altlake-releases/laion", "thresholds": {"near_duplicate_cosine": 0.99}}
    )
    assert states(run) == {"validate_candidates": "success", "publish": "success", "build_index": "success"}

    releases = spark.read.format("delta").load(LakePaths(uninterrupted.lake_dir).table("releases"))
    (row,) = releases.where("location LIKE 's3://%'").collect()
    assert row["location"] == f"s3://altlake-releases/laion/{row['release_id']}"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="altlake-releases", Prefix="laion/")["Contents"]}
    prefix = f"laion/{row['release_id']}/"
    manifest = json.loads(s3.get_object(Bucket="altlake-releases", Key=prefix + "manifest.json")["Body"].read())
    assert manifest["thresholds"]["near_duplicate_cosine"] == 0.99
    assert {prefix + name for name in manifest["files"]} <= keys  # every file the manifest lists was uploaded
    assert prefix + "index/index_info.json" in keys and "index/index_info.json" in manifest["index"]["files"]
    assert sum(manifest["counts"].values()) == row["n_pairs"] > 0
