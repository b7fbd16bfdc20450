"""`python -m bench.clip`: the whole altlake scoring worker vs clip-retrieval, same images, same model.

One run, one machine, the same JPEGs and captions and the same open_clip weights for every row:
- altlake: the whole worker (`score_batch`) downloads every image from local image servers (their own
  processes, so their CPU is not counted) with robots.txt, X-Robots-Tag and the SSRF guard on, checks,
  decodes, resizes, embeds image and text, tags NSFW / watermark (heads rows) and writes;
- clip-retrieval `clip_inference` on webdataset shards of the very same JPEG files (inference alone:
  no download, no checks);
- the whole job as a LAION user runs it: img2dataset downloads from the same server into shards,
  then clip_inference embeds them (skipped with --no-job, or when img2dataset is not at hand).
Every tool runs as its own process; CPU seconds are its (and its children's) rusage, imports and
model load included on every side. altlake's rows also carry the worker's per-stage CPU breakdown
and the vCPUs a GPU needs to be fed 8,000 images/s. Results: a table and bench/out/clip-<model>-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps
from tqdm import tqdm

from altlake_cli.image_server import photo_files
from bench.processes import GPU_IMAGES_PER_S, measure, vcpus_per_gpu
from bench.venvs import peer_venv
from gpu_workers.models import DEMO, DEMO_CLIP_MODEL, DEMO_DIR, DEMO_FILES
from gpu_workers.writer import OutputDir, Sample, write_webdataset

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OUT = REPO / "bench" / "out"
CLIP_RETRIEVAL = "clip-retrieval==2.45.0"
IMG2DATASET = "img2dataset==1.47.0"
# clip_inference's import-time needs; everything shared with altlake is pinned to our lock (-c).
# clip-anytorch still imports pkg_resources, which setuptools 81 removed.
CLIP_RETRIEVAL_NO_DEPS = (CLIP_RETRIEVAL, "all_clip==1.3.0", "clip-anytorch==2.6.0", "setuptools<81")
CLIP_RETRIEVAL_DEPS = (
    "torch", "torchvision", "open-clip-torch", "numpy", "pandas", "pyarrow", "pillow", "fsspec", "tqdm",
    "fire<0.6", "braceexpand", "webdataset<0.3", "wandb", "sentence-transformers", "transformers", "ftfy",
    "regex", "flask", "flask_restful", "flask_cors", "faiss-cpu", "h5py", "prometheus-client",
)  # fmt: skip
MODELS = (DEMO_CLIP_MODEL, "ViT-B-32")
IMAGE_SIZE = 256  # the worker's storage size; img2dataset resizes to the same in the job rows
IMG2DATASET_THREADS = 32  # its download threads, as in bench.download (altlake's default concurrency is higher)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clip", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="number of JPEGs (derived from real photos)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", choices=MODELS, default=DEMO_CLIP_MODEL,
                        help="the demo model with its weights, or full-size ViT-B-32 with random weights (same file for both tools)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--decode", nargs="+", choices=("cpu", "gpu"), default=None,
                        help="altlake decode paths to run (default: cpu, plus gpu on cuda)")
    parser.add_argument("--peer-python", help="an interpreter that already has clip-retrieval (machines without a package registry)")
    parser.add_argument("--no-job", action="store_true", help="skip the img2dataset + clip_inference rows")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="altlake decode threads = clip-retrieval preprocessing processes")
    parser.add_argument("--max-in-flight", type=int, default=256, help="altlake's downloads ahead of what the model consumed")
    parser.add_argument("--stub-ms", type=float, default=0.0,
                        help="also run altlake with CLIP replaced by a stub of this many ms per batch: shows the overlap")
    parser.add_argument("--raw-pixels", action="store_true",
                        help="also run altlake on the CPU with CUDA's hand-over (uint8 batches, preprocessing inside the model call): "
                             "the CPU a CUDA worker's decode threads need")
    parser.add_argument("--per-host", type=int, default=IMG2DATASET_THREADS,
                        help="altlake's open requests to the servers' host (default: img2dataset's thread count, the same load)")
    parser.add_argument("--servers", type=int, default=max(1, len(os.sched_getaffinity(0)) // 4),
                        help="image server processes (one Python server tops out near a few thousand images/s)")
    args = parser.parse_args(argv)
    decodes = args.decode or (["cpu", "gpu"] if args.device == "cuda" else ["cpu"])
    cores = len(os.sched_getaffinity(0))
    work = OUT / "clip"
    shutil.rmtree(work, ignore_errors=True)
    images_dir = work / "images"
    captions = make_images(images_dir, args.images)
    weights = model_files(args.model, work / "weights")
    peer_python = Path(args.peer_python) if args.peer_python else ensure_clip_retrieval_venv() / "bin" / "python"
    img2dataset_python = None if args.no_job else peer_venv(IMG2DATASET.replace("==", "-"), [IMG2DATASET]) / "bin" / "python"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}  # fmt: skip
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # clip_inference takes the GPU whenever it sees one

    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "altlake_cli.image_server", "--port", "0", "--files", str(images_dir)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        for _ in range(args.servers)
    ]
    rows = []
    try:
        base_urls = [server.stdout.readline().split()[2] for server in servers]
        files = sorted(p.name for p in images_dir.glob("*.jpg"))
        urls = [f"{base_urls[i % len(base_urls)]}/files/{name}" for i, name in enumerate(files)]
        for decode in decodes:
            for heads in (False, True):
                rows.append(run_altlake(urls, captions, work, weights, args, decode, heads, env))
        if args.stub_ms:
            rows.append(run_altlake(urls, captions, work, weights, args, decodes[0], False, env, stub_ms=args.stub_ms))
        if args.raw_pixels and args.device == "cpu":
            for heads in (False, True):
                rows.append(run_altlake(urls, captions, work, weights, args, "cpu", heads, env, raw_pixels=True))
        rows.append(run_clip_inference(peer_python, shards_of_files(images_dir, captions, work, args.workers), work / "ci-files", weights, args, env))
        if img2dataset_python is not None:
            rows.append(run_job(img2dataset_python, peer_python, urls, captions, work, weights, args, env))
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    if args.device == "cuda":
        rows.append(model_alone(weights, args))

    report = {
        "bench": "clip",
        "model": args.model,
        "weights": "demo (committed)" if args.model == DEMO_CLIP_MODEL else "random, full size (same file for every tool)",
        "device": args.device,
        "gpu": gpu_name() if args.device == "cuda" else None,
        "cores": cores,
        "python": platform.python_version(),
        "images": args.images,
        "batch_size": args.batch_size,
        "results": rows,
        "ratios": ratios(rows),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"clip-{args.model}-{args.device}.json"
    path.write_text(json.dumps(report, indent=2))
    print_table(report, path)
    return 0


def make_images(folder: Path, n: int) -> list[str]:
    """n JPEGs cut from the real sample photos (random crop, flip, size); returns their captions."""
    folder.mkdir(parents=True)
    rng = random.Random(0)
    photos = {name: Image.open(path).convert("RGB") for name, path in photo_files().items()}
    names = sorted(photos)
    captions = []
    for i in tqdm(range(n), desc="images", file=sys.stderr):
        name = rng.choice(names)
        photo = photos[name]
        scale = rng.uniform(0.5, 1.0)
        w, h = max(16, int(photo.width * scale)), max(16, int(photo.height * scale))
        x, y = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
        crop = photo.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        side = rng.choice((320, 400, 512))
        crop.thumbnail((side, side))
        crop.save(folder / f"{i:06d}.jpg", quality=90)
        captions.append(f"a photo of {name.replace('_', ' ')}, crop {i}")
    return captions


def model_files(model: str, folder: Path) -> dict[str, str | None]:
    """The weights every tool loads. ViT-B-32: random full-size CLIP, LAION-layout NSFW MLP and
    efficientnet_b3 watermark model, seeded, saved once (no hub can be reached)."""
    if model == DEMO_CLIP_MODEL:
        return {"clip": str(DEMO_FILES["clip"]), "checkpoint": None, "nsfw": DEMO, "watermark": DEMO}
    import open_clip
    import torch

    from gpu_workers.models import NSFW_HIDDEN_B32, NsfwHead, build_watermark_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    files = {"clip": folder / f"{model}-random.pt", "nsfw": folder / "nsfw-b32-random.pth", "watermark": folder / "watermark-random.pt"}
    clip = open_clip.create_model(model)
    torch.save(clip.state_dict(), files["clip"])
    torch.save(NsfwHead(clip.visual.output_dim, NSFW_HIDDEN_B32).state_dict(), files["nsfw"])
    torch.save(build_watermark_model().state_dict(), files["watermark"])
    return {"clip": str(files["clip"]), "checkpoint": str(files["clip"]), "nsfw": str(files["nsfw"]), "watermark": str(files["watermark"])}


def ensure_clip_retrieval_venv() -> Path:
    """clip-retrieval in its own venv; its own pins are installed last without dependencies, so
    nothing resolved before upgrades setuptools past pkg_resources again."""
    return peer_venv(
        CLIP_RETRIEVAL.replace("==", "-"), CLIP_RETRIEVAL_DEPS,
        no_deps=CLIP_RETRIEVAL_NO_DEPS, constraints=REPO / "requirements.txt",
    )  # fmt: skip


def run_altlake(
    urls: list[str], captions: list[str], work: Path, weights: dict, args, decode: str, heads: bool, env: dict,
    stub_ms: float = 0.0, raw_pixels: bool = False,
) -> dict:
    """The whole worker, one process: download, checks, decode/resize, CLIP (or a fixed-time stub), heads, writers."""
    tag = f"{decode}-{'heads' if heads else 'clip'}{'-stub' if stub_ms else ''}{'-raw' if raw_pixels else ''}"
    folder = work / f"altlake-{tag}"
    folder.mkdir(parents=True)
    rows = [{"uid": f"{i:06d}", "url": url, "text": text, "language": "en"} for i, (url, text) in enumerate(zip(urls, captions))]
    pq.write_table(pa.Table.from_pylist(rows), folder / "input.parquet")
    command = [
        sys.executable, "-m", "bench.clip.ours", "--input", str(folder / "input.parquet"), "--output", str(folder / "output"),
        "--summary", str(folder / "summary.json"), "--model", args.model, "--device", args.device, "--decode", decode,
        "--batch-size", str(args.batch_size), "--decode-workers", str(args.workers), "--max-in-flight", str(args.max_in_flight),
        "--per-host", str(args.per_host),
    ]  # fmt: skip
    if weights["checkpoint"]:
        command += ["--checkpoint", weights["checkpoint"]]
    if heads:
        command += ["--nsfw", weights["nsfw"], "--watermark", weights["watermark"]]
    label = f"altlake score, {decode} decode, CLIP{' + NSFW + watermark' if heads else ' only'}"
    if stub_ms:
        command += ["--stub-ms", str(stub_ms)]
        label = f"altlake score, {decode} decode, CLIP replaced by a {stub_ms:g} ms/batch stub ({args.batch_size * 1000 / stub_ms:.0f} img/s)"
    if raw_pixels:
        command += ["--raw-pixels"]
        label += ", raw pixels to the model (CUDA's hand-over)"
    run = measure(label, command, env)
    summary = json.loads((folder / "summary.json").read_text())
    ok = summary["statuses"].get("ok", 0)
    stages = summary["cpu_ms_per_image"]
    # On the CPU the model's own cost (its thread and torch's pool, in `other`) would sit on the GPU.
    feeding = stages["total"] if args.device == "cuda" else stages["total"] - stages["model"] - stages["heads"] - stages["other"]
    return _row(
        label, ok, run["wall_s"], run["cpu_s"], summary["images_per_s"],
        note=f"steady = the worker's scoring rate after model load; statuses {summary['statuses']}",
        cpu_ms_per_image=stages,
        feed_ms_per_image=round(feeding, 3),
        vcpus_per_gpu_at_8000=vcpus_per_gpu(feeding),
    )  # fmt: skip


def shards_of_files(images_dir: Path, captions: list[str], work: Path, workers: int) -> tuple[Path, int, int]:
    """The same JPEG files and captions as webdataset shards: clip_inference's own input format."""
    files = sorted(images_dir.glob("*.jpg"))
    per_shard = math.ceil(len(files) / (2 * workers))  # every DataLoader worker needs shards of its own
    samples = (Sample(path.stem, path.read_bytes(), text, {}) for path, text in zip(files, captions))
    shards = write_webdataset(OutputDir(str(work / "shards-files")), samples, per_shard)
    return work / "shards-files", len(shards), per_shard


def clip_inference_command(python: Path, shards: tuple[Path, int, int], output: Path, weights: dict, args) -> list[str]:
    folder, count, per_shard = shards
    command = [
        str(python), str(HERE / "clip_retrieval_run.py"),
        "--shards", f"{folder}/{{00000..{count - 1:05d}}}.tar", "--samples-per-shard", str(per_shard),
        "--output", str(output), "--result", str(output) + ".json",
        "--model-name", args.model, "--checkpoint", weights["clip"],
        "--batch-size", str(args.batch_size), "--workers", str(args.workers),
    ]  # fmt: skip
    if args.model == DEMO_CLIP_MODEL:  # clip-retrieval does not know the demo architecture: register it there
        command += ["--model-config", str(DEMO_DIR / f"{DEMO_CLIP_MODEL}.json"), "--bpe", str(DEMO_DIR / "altlake_tiny_bpe.txt.gz")]
    return command


def run_clip_inference(python: Path, shards: tuple[Path, int, int], output: Path, weights: dict, args, env: dict) -> dict:
    """clip-retrieval's clip_inference on shards of the same JPEG files (reads from disk)."""
    run = measure(f"{CLIP_RETRIEVAL} clip_inference", clip_inference_command(python, shards, output, weights, args), env)
    images, steady = _clip_inference_counts(output)
    note = "reads local webdataset shards of the same JPEGs (no download, no checks); steady = its stats/0.json"
    return _row(f"{CLIP_RETRIEVAL} clip_inference (files)", images, run["wall_s"], run["cpu_s"], steady, note=note)


def run_job(img2dataset: Path, clip_python: Path, urls: list[str], captions: list[str], work: Path, weights: dict, args, env: dict) -> dict:
    """The LAION user's job: img2dataset downloads + resizes into shards, clip_inference embeds them."""
    url_list = work / "job-urls.parquet"
    pq.write_table(pa.table({"url": urls, "caption": captions}), url_list)
    shards_dir = work / "job-shards"
    per_shard = math.ceil(len(urls) / (2 * args.workers))  # as for the files rows: shards for every DataLoader worker
    command = [
        str(img2dataset), str(REPO / "bench" / "download" / "run_img2dataset.py"), str(url_list), str(shards_dir),
        str(IMG2DATASET_THREADS), str(IMAGE_SIZE), "border", "webdataset", str(per_shard),
    ]  # fmt: skip
    download = measure(f"{IMG2DATASET} download", command, env)
    tars = sorted(shards_dir.glob("*.tar"))
    # img2dataset names shards 00000.tar, 00001.tar, ... : clip_inference's brace pattern fits them.
    infer = measure(
        f"{CLIP_RETRIEVAL} clip_inference on img2dataset's shards",
        clip_inference_command(clip_python, (shards_dir, len(tars), per_shard), work / "ci-job", weights, args), env,
    )  # fmt: skip
    images, steady = _clip_inference_counts(work / "ci-job")
    note = (
        f"img2dataset {download['wall_s']:.1f} s wall / {download['cpu_s']:.1f} CPU-s, then clip_inference {infer['wall_s']:.1f} s / "
        f"{infer['cpu_s']:.1f} CPU-s; steady = clip_inference's own rate"
    )
    wall, cpu = download["wall_s"] + infer["wall_s"], download["cpu_s"] + infer["cpu_s"]
    return _row(f"{IMG2DATASET} + clip_inference (whole job)", images, wall, cpu, steady, note=note)


def model_alone(weights: dict, args) -> dict:
    """The worker's own image-embedding call on pixels already made (pinned host memory, as the
    decode threads hand them over): the rate the rest of the worker has to keep up with."""
    import torch

    from gpu_workers.models import ModelSpec, load_models

    models = load_models(ModelSpec(clip_model=args.model, checkpoint=weights["checkpoint"], multilingual_text_model=None,
                                   nsfw_head=None, watermark_head=None, aesthetic_head=None, device=args.device))  # fmt: skip
    pixels = torch.randn(args.batch_size, 3, models.image_size, models.image_size).pin_memory()
    for _ in range(5):
        models.embed_images(pixels)
    calls, started = 50, time.perf_counter()
    for _ in range(calls):
        models.embed_images(pixels)  # returns numpy: every call waits for its result
    rate = calls * args.batch_size / (time.perf_counter() - started)
    return _row(f"{args.model} image tower alone (Models.embed_images)", calls * args.batch_size, calls * args.batch_size / rate, 0.0, rate,
                note="random pixels already in pinned memory, bf16 autocast: the GPU-side ceiling, no decode, no text")  # fmt: skip


def _clip_inference_counts(output: Path) -> tuple[int, float]:
    """(images embedded, clip-retrieval's own steady rate after model load and warm-up)."""
    images = json.loads(Path(str(output) + ".json").read_text())["images"]
    stats = [json.loads(p.read_text()) for p in (output / "stats").glob("*.json")]
    steady = sum(s["sample_count"] for s in stats) / max(sum(s["total_duration"] for s in stats), 1e-9)
    return images, steady


def _row(tool: str, images: int, wall_s: float, cpu_s: float, steady_per_s: float, note: str, **extra) -> dict:
    return {
        "tool": tool,
        "images": images,
        "wall_s": round(wall_s, 2),
        "cpu_s": round(cpu_s, 2),
        "images_per_s": round(images / wall_s, 1) if wall_s else 0.0,
        "images_per_cpu_s": round(images / cpu_s, 1) if cpu_s else 0.0,
        "steady_images_per_s": round(steady_per_s, 1),
        "note": note,
        **extra,
    }


def ratios(rows: list[dict]) -> dict[str, float]:
    """altlake's whole worker against each peer row, per CPU-second and per wall-second."""
    ours = next((r for r in rows if r["tool"].startswith("altlake") and "NSFW" in r["tool"] and "cpu decode" in r["tool"]), None)
    if ours is None:
        return {}
    out = {}
    for peer in (r for r in rows if "clip_inference" in r["tool"]):
        name = "job" if "whole job" in peer["tool"] else "inference_only"
        out[f"images_per_cpu_s_vs_{name}"] = round(ours["images_per_cpu_s"] / max(peer["images_per_cpu_s"], 1e-9), 2)
        out[f"images_per_s_vs_{name}"] = round(ours["images_per_s"] / max(peer["images_per_s"], 1e-9), 2)
    return out


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def print_table(report: dict, path: Path) -> None:
    print(
        f"\nCLIP scoring, {report['images']} JPEGs, model {report['model']} ({report['weights']}) on {report['device']}"
        f"{' ' + report['gpu'] if report['gpu'] else ''}, {report['cores']} cores, batch {report['batch_size']}"
    )
    header = f"{'tool':<58} {'images':>6} {'wall s':>7} {'CPU s':>7} {'img/s':>7} {'img/CPU-s':>9} {'steady img/s':>12}"
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        print(
            f"{row['tool']:<58} {row['images']:>6} {row['wall_s']:>7} {row['cpu_s']:>7} {row['images_per_s']:>7} "
            f"{row['images_per_cpu_s']:>9} {row['steady_images_per_s']:>12}"
        )
    print("\nCPU ms per image by stage (altlake rows; `other`: threads outside the stages, e.g. torch's own pool)")
    for row in (r for r in report["results"] if "cpu_ms_per_image" in r):
        stages = "  ".join(f"{name} {ms:g}" for name, ms in row["cpu_ms_per_image"].items())
        print(f"  {row['tool']}: {stages}")
        print(f"    feeding the model: {row['feed_ms_per_image']} ms/image -> {row['vcpus_per_gpu_at_8000']} vCPUs per GPU at {GPU_IMAGES_PER_S} images/s")
    for row in report["results"]:
        print(f"  {row['tool']}: {row['note']}")
    print(f"ratios (altlake cpu decode, with heads, vs peer): {report['ratios']}")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    sys.exit(main())
