"""The scoring worker end to end, against real HTTP servers on 127.0.0.1 and a moto S3 server.

Real photos and generated scenes (with captions that match or do not) are served next to every
kind of hostile endpoint; the demo models score them. Checked: each row's status, every uid once,
embeddings aligned with metadata, webdataset shards, the _SUCCESS skip, bounded memory, a worker
killed with SIGKILL mid-batch and re-run giving identical files, S3 output, and the infra files.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from altlake import perceptual
from altlake.config import Settings
from altlake.paths import RESULTS_FILE, SUCCESS_FILE
from altlake.profiles import DEMO_PROFILE
from altlake.schemas import STATUS_OK, WORKER_RESULTS
from altlake_cli.image_server import ImageServer
from gpu_workers.demo_models.synthetic import caption, mismatched_spec, random_spec, render
from gpu_workers.downloader import DownloadConfig
from gpu_workers.images import ImageConfig
from gpu_workers.models import ModelSpec, load_models
from gpu_workers.profiles import model_spec
from gpu_workers.reader import InputRow, default_batch_id
from gpu_workers.stage_clock import STAGES
from gpu_workers.worker import PipelineConfig, configure, download_config, opted_out_by_signal, score_batch, score_rows, spec_from_args
from gpu_workers.writer import IMG_EMB_FILE, METADATA_FILE, TEXT_EMB_FILE, TIMING_COLUMNS

REPO = Path(__file__).resolve().parents[2]
SPEC = ModelSpec(multilingual_text_model="demo")  # the demo CLIP, text tower per language, both heads
# Generated scenes are small files; LAION's 5 KB floor would reject them before the models see them.
IMAGES = ImageConfig(min_bytes=1_000, size=64)
PIPELINE = PipelineConfig(batch_size=8, max_in_flight=16, decode_workers=2)


def _download(**overrides) -> DownloadConfig:
    base = dict(allow_hosts=("127.0.0.1",), timeout_s=2.0, retries=0, max_bytes=2_000_000)
    return DownloadConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def models():
    return load_models(SPEC)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The image server, also serving generated captioned scenes from a folder under /files/."""
    folder = tmp_path_factory.mktemp("scenes")
    rng = random.Random(7)
    scenes = []
    for i in range(8):
        spec = random_spec(rng)
        render(spec, size=128).save(folder / f"scene{i}.jpg", quality=95)
        scenes.append((f"files/scene{i}.jpg", caption(spec), caption(mismatched_spec(spec, rng))))
    with ImageServer(files_dir=folder) as srv:
        srv.scenes = scenes
        yield srv


def _uid(url: str, text: str) -> str:
    import hashlib

    return hashlib.sha256(f"{url}\n{text}".encode()).hexdigest()[:32]


def _batch(server: ImageServer) -> tuple[list[dict], dict[str, str], dict[str, str]]:
    """Rows, the status each uid must end with, and the kind of each ok row (photo/match/mismatch)."""
    rows, expected, kinds = [], {}, {}

    def add(url: str, text: str, status: str, language: str = "en", kind: str = "") -> None:
        uid = _uid(url, text)
        rows.append({"uid": uid, "url": url, "text": text, "language": language, "page_url": "http://page.example/"})
        expected[uid] = status
        if kind:
            kinds[uid] = kind

    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        add(server.url(f"photo/{name}.jpg?size=200"), f"a photo of {name}", STATUS_OK, kind="photo")
    for path, matching, mismatched in server.scenes:
        add(server.url(path), matching, STATUS_OK, kind="match")
        add(server.url(path), mismatched, STATUS_OK, kind="mismatch")
    add(server.url("photo/china.jpg?size=200"), "ein Foto aus China", STATUS_OK, language="de", kind="photo")
    hostile = {
        "status/404": "http_4xx",
        "status/500": "http_5xx",
        "status/429": "http_429",
        "html/page": "not_image",
        "truncated/half.jpg": "decode_error",
        "bomb/huge.png": "too_many_pixels",
        "private/secret.jpg": "robots_disallowed",
        "loop/0": "too_many_redirects",
        "gen/anim.gif": "unsupported_format",
        "gen/tiny.jpg?w=8&h=8": "too_small",
        "noai/photo.jpg": "opted_out",
        "redirect?to=http://10.0.0.1/x.jpg": "blocked_address",
        "large/big.jpg?bytes=3000000": "too_large",
        "slow/drip.jpg?bytes=1000&interval=0.5": "timeout",
    }
    for path, status in hostile.items():
        add(server.url(path), f"hostile {path}", status)
    add("", "no url at all", "invalid_url")
    add("ftp://files.example/a.jpg", "not http", "invalid_url")
    rows.append(dict(rows[0]))  # a duplicated uid: collapsed, counted
    return rows, expected, kinds


def _write_parquet(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_mixed_batch_every_uid_once_with_its_status_and_aligned_embeddings(tmp_path, server, models):
    rows, expected, kinds = _batch(server)
    input_path = _write_parquet(tmp_path / "lake/batches/b-001/input.parquet", rows)
    out = tmp_path / "out"

    summary = score_batch(
        input_path, str(out), SPEC, _download(), IMAGES, PipelineConfig(batch_size=8, webdataset=True), models=models
    )

    results = pq.read_table(out / RESULTS_FILE)
    assert results.schema == WORKER_RESULTS.to_arrow()
    uids = results.column("uid").to_pylist()
    assert sorted(uids) == uids and len(uids) == len(set(uids)) == len(expected)
    got = dict(zip(uids, results.column("status").to_pylist()))
    assert got == expected
    failures = [r for r in results.to_pylist() if r["status"] != STATUS_OK]
    assert all(r["error"] for r in failures), "every failure carries a reason"
    assert {r["batch_id"] for r in results.to_pylist()} == {"b-001"}

    # Summary and marker count the same rows; the read stage reports the collapsed duplicate.
    counts = {s: list(got.values()).count(s) for s in set(got.values())}
    assert summary["statuses"] == counts and summary["skipped"] is False
    stages = {stage["stage"]: stage for stage in summary["stages"]}
    assert list(stages) == ["read", "download", "decode", "embed"]
    assert stages["read"] == {"stage": "read", "in": len(rows), "kept": len(expected), "dropped": {"duplicate_uid": 1}, "marked": {}}
    assert stages["download"]["dropped"]["http_4xx"] == 1
    assert stages["decode"]["dropped"]["decode_error"] == 1
    assert stages["embed"]["kept"] == counts[STATUS_OK]  # what every stage kept is what was scored
    assert json.loads((out / SUCCESS_FILE).read_text())["statuses"] == counts
    # Opted-out rows: the error names the signal first, and the summary counts by it.
    opted_out = [r["error"] for r in results.to_pylist() if r["status"] == "opted_out"]
    assert opted_out == ["x_robots_tag: noai"]
    assert summary["opted_out_by_signal"] == {"x_robots_tag": 1}
    assert json.loads((out / SUCCESS_FILE).read_text())["opted_out_by_signal"] == {"x_robots_tag": 1}
    # The batch records how it treated hosts, for merge_scores and SQL.
    politeness = {"user_agent": _download().user_agent, "per_host_concurrency": 8, "per_host_rate": 0.0, "max_retry_after_s": 30.0, "host_refusal_limit": 5}
    assert summary["politeness"] == json.loads((out / SUCCESS_FILE).read_text())["politeness"] == politeness
    # Its throughput record (copied into the batches table at merge): which machine, when, how many bytes.
    assert summary["host"] == socket.gethostname() and summary["started_at"] < summary["finished_at"]
    assert summary["bytes_downloaded"] > 100 * counts[STATUS_OK]  # every ok image's body, at least a JPEG's headers each
    # Where the CPU went, per ok image: every stage the batch went through took some, none more than the process.
    cpu = summary["cpu_ms_per_image"]
    assert set(cpu) == {*STAGES, "other", "total"}
    assert all(cpu[stage] > 0 for stage in ("download", "check", "decode", "hash", "preprocess", "model", "heads", "orchestrate", "write"))
    assert sum(cpu[stage] for stage in STAGES) <= cpu["total"] + 1e-3

    # Embeddings: one unit-norm float16 row per ok row, in metadata order.
    ok = [r for r in results.to_pylist() if r["status"] == STATUS_OK]
    img, txt = np.load(out / IMG_EMB_FILE), np.load(out / TEXT_EMB_FILE)
    meta = pq.read_table(out / METADATA_FILE).to_pylist()
    assert img.dtype == txt.dtype == np.float16
    assert img.shape == txt.shape == (len(ok), models.embed_dim)
    assert np.allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=1e-2)
    assert np.allclose(np.linalg.norm(txt.astype(np.float32), axis=1), 1, atol=1e-2)
    by_uid = {r["uid"]: r for r in rows}
    assert [m["uid"] for m in meta] == [r["uid"] for r in ok]
    assert [m["caption"] for m in meta] == [by_uid[r["uid"]]["text"] for r in ok]
    recomputed = np.einsum("ij,ij->i", img.astype(np.float32), txt.astype(np.float32))
    assert np.allclose(recomputed, [m["similarity"] for m in meta], atol=1e-2)

    # Scores and model ids on ok rows; German text went through the multilingual tower.
    assert all(0 <= r["punsafe"] <= 1 and 0 <= r["pwatermark"] <= 1 for r in ok)
    assert all(r["clip_model"] == models.clip_id and r["sha256"] and r["width"] == 64 for r in ok)
    assert all(perceptual.is_pdq(r["pdq"]) and 0 <= r["pdq_quality"] <= 100 for r in ok)  # every downloaded image is hashed
    # The aesthetic rating comes from the stored float16 image embedding: anyone can recompute it from the files.
    aesthetic = [r["aesthetic"] for r in ok]
    np.testing.assert_allclose(aesthetic, models.aesthetic(img.astype(np.float32)), atol=1e-4)
    np.testing.assert_allclose([m["aesthetic"] for m in meta], aesthetic)
    assert len(set(aesthetic)) > 1 and all(r["aesthetic_model"] == models.aesthetic_id for r in ok)
    assert all(r["aesthetic"] is None and r["aesthetic_model"] is None for r in failures)
    assert summary["models"]["aesthetic"] == models.aesthetic_id
    text_models = {by_uid[r["uid"]]["language"]: r["text_model"] for r in ok}
    assert text_models["en"] == models.text_id and text_models["de"] == models.multilingual_text_id != models.text_id

    # The demo CLIP tells a fitting caption from a wrong one for the same picture.
    sim = {r["uid"]: r["similarity"] for r in ok}
    matching = [sim[u] for u, k in kinds.items() if k == "match"]
    mismatched = [sim[u] for u, k in kinds.items() if k == "mismatch"]
    assert np.mean(matching) > np.mean(mismatched)

    # Webdataset shards: one <key>.jpg/.txt/.json per ok row, readable with tarfile.
    with tarfile.open(out / "00000.tar") as tar:
        names = tar.getnames()
        assert len(names) == 3 * len(ok)
        first = meta[0]["key"]
        assert Image.open(io.BytesIO(tar.extractfile(f"{first}.jpg").read())).size == (64, 64)
        assert tar.extractfile(f"{first}.txt").read().decode() == meta[0]["caption"]
        assert json.loads(tar.extractfile(f"{first}.json").read())["uid"] == meta[0]["uid"]


def test_finished_batch_is_skipped_with_its_recorded_summary(tmp_path, server, models):
    rows = [{"uid": "a", "url": server.url("photo/coffee.jpg?size=100"), "text": "coffee", "language": "en"}]
    input_path = _write_parquet(tmp_path / "in.parquet", rows)
    first = score_batch(input_path, str(tmp_path / "out"), SPEC, _download(), IMAGES, PIPELINE, models=models)
    before = (tmp_path / "out" / RESULTS_FILE).stat().st_mtime_ns
    hits = server.hits("/photo/coffee.jpg")

    again = score_batch(input_path, str(tmp_path / "out"), SPEC, _download(), IMAGES, PIPELINE, models=models)

    assert again["skipped"] is True and again["statuses"] == first["statuses"] == {"ok": 1}
    assert (tmp_path / "out" / RESULTS_FILE).stat().st_mtime_ns == before
    assert server.hits("/photo/coffee.jpg") == hits, "a skipped batch downloads nothing"


def test_pipeline_pulls_a_bounded_number_of_rows_ahead(server, models):
    """A 100k-row batch must not be read into the pipeline at once: count what it pulls."""
    pulled = 0

    def rows():
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield InputRow(f"u{i:06d}", server.url(f"photo/astronaut.jpg?size=96&n={i % 50}"), "an astronaut", "en")

    pipeline = PipelineConfig(batch_size=8, max_in_flight=16, decode_workers=2)
    bound = pipeline.max_in_flight + pipeline.decode_window + 3 * pipeline.batch_size
    scored = score_rows(rows(), models, _download(), IMAGES, pipeline, "bounded")
    ahead = []
    for yielded, result in enumerate(itertools.islice(scored, 120), start=1):
        assert result.row["status"] == STATUS_OK
        ahead.append(pulled - yielded)
    scored.close()
    assert pipeline.max_in_flight <= max(ahead) <= bound  # it does run ahead (overlap), within the bound
    assert pulled < 120 + bound


def test_batched_decoder_path_gives_the_cpu_path_statuses_and_close_embeddings(server, models):
    """decode="gpu" runs the CUDA code path (BatchDecoder, groups of batch_size) on the CPU here."""
    rows = [InputRow(f"p{i}", server.url(f"photo/{name}.jpg?size=200"), f"a photo of {name}", "en")
            for i, name in enumerate(("astronaut", "chelsea", "coffee", "rocket", "china"))]
    rows += [InputRow(f"s{i}", server.url(path), text, "en") for i, (path, text, _) in enumerate(server.scenes)]
    rows += [
        InputRow("h0", server.url("truncated/half.jpg"), "broken", "en"),
        InputRow("h1", server.url("bomb/huge.png"), "bomb", "en"),
        InputRow("h2", server.url("gen/anim.gif"), "gif", "en"),
        InputRow("h3", server.url("photo/coffee.png?size=150"), "a png", "en"),
    ]

    def run(decode: str) -> dict[str, object]:
        pipeline = PipelineConfig(batch_size=4, max_in_flight=8, decode_workers=2, decode=decode)
        return {s.row["uid"]: s for s in score_rows(iter(rows), models, _download(), IMAGES, pipeline, f"b-{decode}")}

    cpu, batched = run("cpu"), run("gpu")
    assert set(cpu) == set(batched) == {row.uid for row in rows}
    assert {u: s.row["status"] for u, s in batched.items()} == {u: s.row["status"] for u, s in cpu.items()}
    assert {cpu[u].row["status"] for u in ("h0", "h1", "h2")} == {"decode_error", "too_many_pixels", "unsupported_format"}
    ok = [u for u, s in cpu.items() if s.row["status"] == STATUS_OK]
    assert len(ok) == len(rows) - 3
    cpu_embeddings = np.stack([cpu[u].img_emb for u in ok]).astype(np.float32)
    coffee = {"p2", "h3"}  # the same picture twice, as a JPEG and as a PNG: either is its nearest
    for i, uid in enumerate(ok):
        a, b = cpu[uid], batched[uid]
        for column in ("width", "height", "original_width", "original_height", "sha256", "md5"):
            assert a.row[column] == b.row[column], (uid, column)
        assert perceptual.distance(a.row["pdq"], b.row["pdq"]) <= perceptual.DEFAULT_MAX_DISTANCE, uid  # still a match across decoders
        cosines = cpu_embeddings @ b.img_emb.astype(np.float32)
        nearest = ok[int(np.argmax(cosines))]
        assert cosines[i] > 0.98 and (nearest == uid or {nearest, uid} <= coffee), uid  # the same picture, resampled a bit differently


def test_cli_refuses_gpu_decode_without_cuda(tmp_path, capsys):
    from altlake_cli.main import main

    batch = _write_parquet(tmp_path / "in.parquet", [{"uid": "a", "url": "http://x.example/a.jpg", "text": "a", "language": "en"}])
    assert main(["score", "--input", batch, "--output", str(tmp_path / "out"), "--decode", "gpu"]) == 2
    assert "gpu with --device cuda" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- crash safety ---------------------------------------------------------------------------------


def _score_cli(input_path: str, output: str) -> list[str]:
    return [
        sys.executable, "-m", "altlake_cli.main", "score", "--input", input_path, "--output", output,
        "--allow-host", "127.0.0.1", "--batch-size", "4", "--decode-workers", "2",
    ]  # fmt: skip


def test_the_models_run_with_the_pipelines_thread_count_whatever_the_host_left(tmp_path, server, models, monkeypatch):
    rows = [{"uid": f"t{i}", "url": server.url(f"photo/{name}.jpg?size=120"), "text": name, "language": "en"}
            for i, name in enumerate(["astronaut", "coffee", "rocket"])]  # fmt: skip
    input_path = _write_parquet(tmp_path / "in.parquet", rows)
    seen: list[int] = []
    embed = models.embed_images

    def recording(batch):
        seen.append(torch.get_num_threads())  # in the inference thread
        return embed(batch)

    monkeypatch.setattr(models, "embed_images", recording)
    host_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = score_batch(input_path, str(tmp_path / "out"), SPEC, _download(), IMAGES, PipelineConfig(batch_size=2, model_threads=2), models=models)
        assert torch.get_num_threads() == 1, "the host's own setting comes back after the batch"
    finally:
        torch.set_num_threads(host_threads)
    assert summary["statuses"] == {"ok": 3} and summary["model_threads"] == 2
    assert seen == [2, 2]
    with pytest.raises(ValueError, match="model_threads"):
        PipelineConfig(model_threads=-1)


def test_worker_killed_mid_batch_then_rerun_writes_identical_files(tmp_path, server, models):
    rows = [
        {"uid": f"p{i:02d}", "url": server.url(f"photo/{name}.jpg?size=200&v={i}"), "text": f"photo {name}", "language": "en"}
        for i, name in enumerate(["astronaut", "chelsea", "coffee", "rocket", "china", "flower"] * 3)
    ]
    # Slow responses keep the worker mid-batch long enough to be killed there, every time.
    rows += [
        {"uid": f"s{i}", "url": server.url(f"photo/camera.jpg?size=200&delay=4&v={i}"), "text": "slow", "language": "en"}
        for i in range(3)
    ]
    input_path = _write_parquet(tmp_path / "in.parquet", rows)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = _score_cli(input_path, str(out))

    server.reset_stats()
    worker = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while server.hits("/photo/camera.jpg") < 3 and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.05)
    assert worker.poll() is None, worker.communicate()[1].decode()[-2000:]
    assert server.hits("/photo/camera.jpg") == 3, "the slow images are being served"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert not (out / SUCCESS_FILE).exists()

    # The rerun as a deployment runs it: structured log lines, tagged with the run and the batch.
    rerun_env = {**env, "ALTLAKE_LOG_FORMAT": "json", "ALTLAKE_RUN_ID": "rerun-1"}
    rerun = subprocess.run(command, cwd=REPO, env=rerun_env, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    summary = json.loads(rerun.stdout.decode().strip().splitlines()[-1])
    assert summary["statuses"] == {"ok": len(rows)} and summary["skipped"] is False
    lines = [json.loads(line) for line in rerun.stderr.decode().splitlines() if line.startswith("{")]
    (scored,) = [line for line in lines if line["message"] == "batch scored"]
    assert (scored["run_id"], scored["job"], scored["batch_id"]) == ("rerun-1", "altlake score", default_batch_id(input_path))
    assert scored["statuses"] == summary["statuses"] and scored["bytes_downloaded"] == summary["bytes_downloaded"] > 0
    assert [line["exit_status"] for line in lines if line["message"] == "finished"] == [0]

    # The same batch scored without interruption, in-process, with the configuration the CLI builds
    # (no model flags: the default profile, `demo`, which every row records).
    # This process's torch left at one thread, as another library's OpenMP setting can leave it: the
    # worker sets its own count, so the scores still equal the CLI's (astronaut's pwatermark differs
    # in its last bits between one and two threads).
    reference = tmp_path / "reference"
    download = DownloadConfig.from_settings(Settings.from_env(), allow_hosts=("127.0.0.1",))
    pipeline = PipelineConfig(batch_size=4, decode_workers=2)
    host_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        score_batch(input_path, str(reference), model_spec(DEMO_PROFILE), download, ImageConfig(), pipeline, models=models)
    finally:
        torch.set_num_threads(host_threads)

    def without_timings(folder: Path) -> pa.Table:
        return pq.read_table(folder / RESULTS_FILE).drop_columns(list(TIMING_COLUMNS))

    killed, clean = without_timings(out), without_timings(reference)
    assert [c for c in clean.column_names if not killed.column(c).equals(clean.column(c))] == [], "columns that differ"
    for name in (IMG_EMB_FILE, TEXT_EMB_FILE, METADATA_FILE):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


# --- S3 -------------------------------------------------------------------------------------------


def test_input_and_output_on_s3(server, models, moto_server, tmp_path):
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=moto_server)
    client.create_bucket(Bucket=bucket)
    rows = [
        {"uid": "a", "url": server.url("photo/rocket.jpg?size=100"), "text": "a rocket", "language": "en"},
        {"uid": "b", "url": server.url("status/404"), "text": "gone", "language": "en"},
    ]
    local = _write_parquet(tmp_path / "input.parquet", rows)
    client.upload_file(local, bucket, "batches/b-s3/input.parquet")
    prefix = "batches/b-s3/output"

    summary = score_batch(
        f"s3://{bucket}/batches/b-s3/input.parquet", f"s3://{bucket}/{prefix}", SPEC, _download(), IMAGES,
        PipelineConfig(batch_size=4, webdataset=True), s3_endpoint=moto_server, models=models,
    )  # fmt: skip

    keys = sorted(o["Key"].removeprefix(prefix + "/") for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
    assert keys == sorted([RESULTS_FILE, IMG_EMB_FILE, TEXT_EMB_FILE, METADATA_FILE, SUCCESS_FILE, "00000.tar"])
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    body = client.get_object(Bucket=bucket, Key=f"{prefix}/{RESULTS_FILE}")["Body"].read()
    results = pq.read_table(io.BytesIO(body)).to_pylist()
    assert [(r["uid"], r["status"], r["batch_id"]) for r in results] == [("a", "ok", "b-s3"), ("b", "http_4xx", "b-s3")]
    assert summary["statuses"] == {"http_4xx": 1, "ok": 1}
    img = np.load(io.BytesIO(client.get_object(Bucket=bucket, Key=f"{prefix}/{IMG_EMB_FILE}")["Body"].read()))
    assert img.shape == (1, models.embed_dim)

    again = score_batch(
        f"s3://{bucket}/batches/b-s3/input.parquet", f"s3://{bucket}/{prefix}", SPEC, _download(), IMAGES,
        s3_endpoint=moto_server, models=models,
    )  # fmt: skip
    assert again["skipped"] is True


# --- the command line and its deployment files ----------------------------------------------------


def test_cli_refuses_bad_input_with_a_reason(tmp_path, capsys):
    from altlake_cli.main import main

    bad = _write_parquet(tmp_path / "bad.parquet", [{"uid": "a", "link": "http://x.example/a.jpg"}])
    assert main(["score", "--input", bad, "--output", str(tmp_path / "out")]) == 2
    assert "lacks the candidate column(s) ['url', 'text', 'language']" in capsys.readouterr().err
    assert not (tmp_path / "out" / SUCCESS_FILE).exists()


def _parse_score_args(argv: list[str]):
    """What `altlake score` would do with these arguments (argparse exits on anything unknown)."""
    import argparse

    from altlake_cli.main import COMMANDS

    assert argv[0] == "score" and COMMANDS["score"][0] == "gpu_workers.worker"
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv[1:])


def test_container_job_and_batch_definition_run_the_score_command():
    dockerfile = (REPO / "infra/docker/worker.Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1))
    assert entrypoint == ["python", "-m", "altlake_cli.main"]
    copied = {m.group(1) for m in re.finditer(r"^COPY (?!--from)(\S+) ", dockerfile, re.M)}
    assert copied == {"infra/docker/worker-requirements.txt", "altlake/", "altlake_cli/", "gpu_workers/"}
    assert "-r /tmp/worker-requirements.txt" in dockerfile

    documents = list(yaml.safe_load_all((REPO / "infra/k8s/worker-job.yaml").read_text()))
    job = next(d for d in documents if d["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    assert container["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
    # Kubernetes expands $(VAR) in args from the container's environment (here: the ConfigMap).
    env = config_map["data"]
    args = _parse_score_args([re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]])
    assert (args.input, args.output, args.device) == (env["BATCH_INPUT"], env["BATCH_OUTPUT"], "cuda")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1

    batch = json.loads((REPO / "infra/aws/batch-job-definition.json").read_text())
    props = batch["containerProperties"]
    # AWS Batch replaces Ref::NAME with the job's parameters (defaults from the definition).
    params = batch["parameters"]
    args = _parse_score_args([params[a[5:]] if a.startswith("Ref::") else a for a in props["command"]])
    assert (args.input, args.output, args.device) == (params["input"], params["output"], "cuda")
    assert {"type": "GPU", "value": "1"} in props["resourceRequirements"]


def test_worker_requirements_are_a_subset_of_the_project_lock():
    def pins(path: Path) -> dict[str, str]:
        found = {}
        for line in path.read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            if match:
                found[match.group(1).lower()] = match.group(2)
        return found

    project, worker = pins(REPO / "requirements.txt"), pins(REPO / "infra/docker/worker-requirements.txt")
    assert {"torch", "open-clip-torch", "pillow", "aiohttp", "boto3", "pyarrow"} <= set(worker)
    assert {name: project.get(name) for name in worker} == worker
    assert not {"pyspark", "delta-spark", "apache-airflow", "great-expectations"} & set(worker)


def test_raw_pixels_batched_on_the_device_score_like_per_image_preprocessing(tmp_path, server, models, monkeypatch):
    """On CUDA the decode threads hand over uint8 pixels and one batched call preprocesses them for
    CLIP and the watermark head. Forced on here (it runs on any torch device), it must give the
    scores the per-image PIL path gives, up to PIL's rounding of resized pixels."""
    rows = [
        {"uid": f"p{i:02d}", "url": server.url(f"photo/{name}.jpg?size=300&v={i}"), "text": f"photo {name}", "language": "en"}
        for i, name in enumerate(["astronaut", "chelsea", "coffee", "rocket", "china", "flower"] * 2)
    ]
    input_path = _write_parquet(tmp_path / "in.parquet", rows)
    images = ImageConfig(min_bytes=1_000, size=256)  # a real storage size: CLIP resizes it, the watermark head keeps it

    def scores(out: str) -> dict[str, dict]:
        score_batch(input_path, out, SPEC, _download(), images, PIPELINE, models=models)
        table = pq.read_table(Path(out) / RESULTS_FILE).to_pylist()
        assert {r["status"] for r in table} == {STATUS_OK}
        return {r["uid"]: r for r in table}

    per_image = scores(str(tmp_path / "pil"))
    monkeypatch.setattr(type(models), "preprocesses_on_device", property(lambda self: True))
    batched = scores(str(tmp_path / "raw"))
    for uid, row in per_image.items():
        assert abs(batched[uid]["similarity"] - row["similarity"]) < 0.02
        assert abs(batched[uid]["pwatermark"] - row["pwatermark"]) < 0.02
        assert abs(batched[uid]["punsafe"] - row["punsafe"]) < 0.05
    pil_img, raw_img = np.load(tmp_path / "pil" / IMG_EMB_FILE).astype(np.float32), np.load(tmp_path / "raw" / IMG_EMB_FILE).astype(np.float32)
    assert (pil_img * raw_img).sum(axis=1).min() > 0.99  # unit rows, the same order (sorted uids)
    assert not np.array_equal(pil_img, raw_img), "the batched path really ran"


def test_opted_out_rows_are_counted_by_their_signal():
    rows = [
        {"status": "opted_out", "error": "tdmrep_json: /private/* (policy https://p.example/1)"},
        {"status": "opted_out", "error": "ai_crawler_robots: GPTBot (robots.txt of x.org disallows /a.jpg)"},
        {"status": "opted_out", "error": "tdmrep_json: /"},
        {"status": "ok", "error": None},
        {"status": "robots_disallowed", "error": "robots.txt of x.org disallows /p"},
    ]
    assert opted_out_by_signal(rows) == {"ai_crawler_robots": 1, "tdmrep_json": 2}
    assert opted_out_by_signal([]) == {}


def test_cli_per_host_politeness_flags_override_the_settings(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    settings = Settings.from_env({"ALTLAKE_PER_HOST_CONCURRENCY": "4", "ALTLAKE_PER_HOST_RATE": "1.5", "ALTLAKE_HOST_REFUSAL_LIMIT": "7"})
    base = ["--input", "in.parquet", "--output", "out", "--allow-host", "127.0.0.1"]

    config = download_config(parser.parse_args(base), settings)
    assert (config.per_host_concurrency, config.per_host_rate, config.max_retry_after_s, config.host_refusal_limit) == (4, 1.5, 30.0, 7)
    assert config.allow_hosts == ("127.0.0.1",)

    flags = ["--per-host-concurrency", "2", "--per-host-rate", "0", "--max-retry-after", "12.5", "--host-refusal-limit", "0"]
    config = download_config(parser.parse_args([*base, *flags]), settings)
    assert (config.per_host_concurrency, config.per_host_rate, config.max_retry_after_s, config.host_refusal_limit) == (2, 0.0, 12.5, 0)

    for bad in (["--per-host-concurrency", "0"], ["--per-host-rate", "-1"], ["--max-retry-after", "nan"], ["--host-refusal-limit", "-2"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *bad])
    assert "must be" in capsys.readouterr().err


def test_cli_profile_scores_with_its_models_and_every_row_records_it(tmp_path, server, monkeypatch, capsys):
    from altlake_cli.main import main

    (tmp_path / "profiles.toml").write_text("""
[profiles.tiny-no-watermark]
clip_model = "altlake-tiny"
pretrained = "demo"
nsfw_head = "demo"
threshold_en = 0.7
threshold_other = 0.7
""")
    monkeypatch.setenv("ALTLAKE_MODEL_PROFILES", str(tmp_path / "profiles.toml"))
    rows = [
        {"uid": "ok1", "url": server.url("photo/coffee.jpg?size=200"), "text": "a cup of coffee", "language": "en"},
        {"uid": "ok2", "url": server.url(server.scenes[0][0]), "text": server.scenes[0][1], "language": "de"},
        {"uid": "gone", "url": server.url("status/404"), "text": "missing", "language": "en"},
    ]
    batch = _write_parquet(tmp_path / "in.parquet", rows)
    argv = ["score", "--input", batch, "--output", str(tmp_path / "out"), "--allow-host", "127.0.0.1", "--batch-size", "4"]
    assert main([*argv, "--profile", "tiny-no-watermark", "--model", "ViT-B-32", "--no-nsfw"]) == 2
    assert "--profile tiny-no-watermark chooses every model, so it conflicts with --model, --no-nsfw" in capsys.readouterr().err

    assert main([*argv, "--profile", "tiny-no-watermark"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "row/s" not in captured.err and "score " not in captured.err  # no progress bar when stderr is no terminal
    assert summary["profile"] == "tiny-no-watermark" and summary["models"]["watermark"] is None
    results = {r["uid"]: r for r in pq.read_table(tmp_path / "out" / RESULTS_FILE).to_pylist()}
    assert {uid: r["profile"] for uid, r in results.items()} == dict.fromkeys(("gone", "ok1", "ok2"), "tiny-no-watermark")
    assert results["ok1"]["status"] == STATUS_OK and results["ok1"]["punsafe"] is not None and results["ok1"]["pwatermark"] is None
    # No multilingual tower in this profile: German goes through CLIP's own text tower.
    assert results["ok2"]["text_model"] == results["ok2"]["clip_model"]


def test_cli_aesthetic_head_flags_choose_laion_weights_or_none(tmp_path, server, capsys):
    """--aesthetic-head takes LAION's file layout (here a linear head for the demo CLIP's 64 dims);
    --no-aesthetic leaves the column and its model id null; the two flags exclude each other."""
    import torch

    from altlake_cli.main import main

    torch.manual_seed(3)
    laion = torch.nn.Linear(64, 1)
    torch.save(laion.state_dict(), tmp_path / "sa_0_4_altlake_tiny_linear.pth")  # a bare state dict, as LAION released them
    rows = [
        {"uid": "ok1", "url": server.url("photo/coffee.jpg?size=200"), "text": "a cup of coffee", "language": "en"},
        {"uid": "ok2", "url": server.url("photo/chelsea.jpg?size=200"), "text": "a cat", "language": "en"},
        {"uid": "gone", "url": server.url("status/404"), "text": "missing", "language": "en"},
    ]
    batch = _write_parquet(tmp_path / "in.parquet", rows)
    argv = ["score", "--input", batch, "--allow-host", "127.0.0.1", "--batch-size", "4"]
    with pytest.raises(SystemExit):
        main([*argv, "--output", str(tmp_path / "both"), "--no-aesthetic", "--aesthetic-head", "demo"])
    assert "not allowed with argument" in capsys.readouterr().err

    assert main([*argv, "--output", str(tmp_path / "laion"), "--aesthetic-head", str(tmp_path / "sa_0_4_altlake_tiny_linear.pth")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["models"]["aesthetic"].startswith("laion-aesthetic-linear@sha256:")
    results = {r["uid"]: r for r in pq.read_table(tmp_path / "laion" / RESULTS_FILE).to_pylist()}
    meta = pq.read_table(tmp_path / "laion" / METADATA_FILE).to_pylist()
    with torch.inference_mode():
        expected = laion(torch.from_numpy(np.load(tmp_path / "laion" / IMG_EMB_FILE).astype(np.float32))).squeeze(-1).numpy()
    np.testing.assert_allclose([results[m["uid"]]["aesthetic"] for m in meta], expected, rtol=1e-5, atol=1e-6)
    assert {results[u]["aesthetic_model"] for u in ("ok1", "ok2")} == {summary["models"]["aesthetic"]}
    assert results["gone"]["aesthetic"] is None

    assert main([*argv, "--output", str(tmp_path / "none"), "--no-aesthetic"]) == 0
    summary = json.loads(capsys.readouterr().out)
    results = pq.read_table(tmp_path / "none" / RESULTS_FILE).to_pylist()
    assert summary["models"]["aesthetic"] is None and summary["models"]["nsfw"] is not None
    assert [r["status"] for r in results] == ["http_4xx", STATUS_OK, STATUS_OK]  # uid order: gone, ok1, ok2
    assert all(r["aesthetic"] is None and r["aesthetic_model"] is None for r in results)
    assert all(r["punsafe"] is not None for r in results if r["status"] == STATUS_OK)


def test_cli_heads_default_to_the_demo_heads_only_with_the_demo_clip(capsys):
    """`altlake score --model ViT-B-32` must not load the demo's 64-d heads onto a 512-d CLIP: with
    another CLIP a head runs when named, and a named head that does not fit fails at load."""
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    base = ["--input", "in.parquet", "--output", "out"]
    heads = ("multilingual_text_model", "nsfw_head", "watermark_head", "aesthetic_head")

    demo = spec_from_args(parser.parse_args([*base, "--no-watermark"]))
    assert [getattr(demo, h) for h in heads] == ["demo", "demo", None, "demo"]

    b32 = spec_from_args(parser.parse_args([*base, "--model", "ViT-B-32"]))
    assert [getattr(b32, h) for h in heads] == [None, None, None, None]
    models = load_models(b32)  # full-size ViT-B/32, random weights: loads, scores without heads
    assert models.embed_dim == 512 and models.punsafe(np.zeros((1, 512), np.float32)) is None

    named = spec_from_args(parser.parse_args([*base, "--model", "ViT-B-32", "--nsfw-head", "demo", "--watermark-head", "demo"]))
    assert (named.nsfw_head, named.watermark_head, named.aesthetic_head) == ("demo", "demo", None)
    with pytest.raises(ValueError, match="64"):
        load_models(named)  # the demo NSFW head reads 64-d embeddings, this CLIP gives 512

    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--nsfw-head", "demo", "--no-nsfw"])
    assert "not allowed with argument" in capsys.readouterr().err
