"""`python -m bench.clip`: images/s of the whole altlake worker vs clip-retrieval's `clip_inference`.

Same machine, same images, same open_clip model (the demo altlake-tiny, registered in both), CPU.
clip-retrieval 2.45.0 is installed into its own venv under the cache dir (its pins predate numpy 2,
so it goes in with --no-deps plus a hand-picked set constrained to our lock). altlake does MORE work
per image: it downloads each image over HTTP from a local server, checks and resizes it, and also
writes results.parquet; clip-retrieval reads files from disk. See README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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

from bench.venvs import peer_venv
from altlake_cli.image_server import ImageServer, photo_files
from gpu_workers.downloader import DownloadConfig
from gpu_workers.images import ImageConfig
from gpu_workers.models import DEMO_CLIP_MODEL, DEMO_DIR, DEMO_FILES, ModelSpec
from gpu_workers.worker import PipelineConfig, score_batch
from gpu_workers.writer import OutputDir, Sample, write_webdataset

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench" / "out"
CLIP_RETRIEVAL = "clip-retrieval==2.45.0"
# clip_inference's import-time needs; everything shared with altlake is pinned to our lock (-c).
# clip-anytorch still imports pkg_resources, which setuptools 81 removed.
CLIP_RETRIEVAL_NO_DEPS = (CLIP_RETRIEVAL, "all_clip==1.3.0", "clip-anytorch==2.6.0", "setuptools<81")
CLIP_RETRIEVAL_DEPS = (
    "torch", "torchvision", "open-clip-torch", "numpy", "pandas", "pyarrow", "pillow", "fsspec", "tqdm",
    "fire<0.6", "braceexpand", "webdataset<0.3", "wandb", "sentence-transformers", "transformers", "ftfy",
    "regex", "flask", "flask_restful", "flask_cors", "faiss-cpu", "h5py", "prometheus-client",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clip", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="number of JPEGs (derived from real photos)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    work = OUT / "clip"
    shutil.rmtree(work, ignore_errors=True)
    images_dir = work / "images"
    captions = make_images(images_dir, args.images)
    venv = ensure_clip_retrieval_venv()

    rows = []
    for label, heads in (("altlake score (CLIP only)", False), ("altlake score (CLIP + NSFW + watermark)", True)):
        rows.append(run_altlake(label, images_dir, captions, work, args.batch_size, cores, heads))
    rows.append(run_clip_retrieval(venv, images_dir, captions, work, args.batch_size, cores))

    report = {
        "bench": "clip",
        "model": DEMO_CLIP_MODEL,
        "device": "cpu",
        "cores": cores,
        "images": args.images,
        "batch_size": args.batch_size,
        "results": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "clip.json").write_text(json.dumps(report, indent=2))
    print_table(report)
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


def ensure_clip_retrieval_venv() -> Path:
    """clip-retrieval in its own venv; its own pins are installed last without dependencies, so
    nothing resolved before upgrades setuptools past pkg_resources again."""
    return peer_venv(
        CLIP_RETRIEVAL.replace("==", "-"), CLIP_RETRIEVAL_DEPS,
        no_deps=CLIP_RETRIEVAL_NO_DEPS, constraints=REPO / "requirements.txt",
    )


def run_altlake(label: str, images_dir: Path, captions: list[str], work: Path, batch_size: int, cores: int, heads: bool) -> dict:
    """The whole worker: HTTP download from a local server, decode/resize, CLIP, heads, writers."""
    files = sorted(p.name for p in images_dir.glob("*.jpg"))
    tag = "heads" if heads else "clip"
    with ImageServer(files_dir=images_dir) as server:
        batch = work / f"altlake-{tag}" / "input.parquet"
        batch.parent.mkdir(parents=True)
        rows = [
            {"uid": f"{i:06d}", "url": server.url(f"files/{name}"), "text": text, "language": "en"}
            for i, (name, text) in enumerate(zip(files, captions))
        ]
        pq.write_table(pa.Table.from_pylist(rows), batch)
        spec = ModelSpec(nsfw_head="demo" if heads else None, watermark_head="demo" if heads else None)
        started = time.perf_counter()
        summary = score_batch(
            str(batch), str(batch.parent / "output"), spec,
            DownloadConfig(allow_hosts=("127.0.0.1",), respect_robots=False),
            ImageConfig(min_bytes=0),
            PipelineConfig(batch_size=batch_size, decode_workers=cores),
            progress=True,
        )  # fmt: skip
        wall_s = time.perf_counter() - started
    ok = summary["statuses"].get("ok", 0)
    return _row(label, ok, wall_s, summary["images_per_s"], cores, f"steady = after model load (worker summary); statuses {summary['statuses']}")


def run_clip_retrieval(venv: Path, images_dir: Path, captions: list[str], work: Path, batch_size: int, cores: int) -> dict:
    """clip-retrieval's clip_inference on the same JPEGs and captions (as webdataset shards), same model."""
    files = sorted(images_dir.glob("*.jpg"))
    shards_dir = work / "clip-retrieval-shards"
    per_shard = math.ceil(len(files) / (2 * cores))  # every DataLoader worker needs shards of its own
    samples = (Sample(path.stem, path.read_bytes(), text, {}) for path, text in zip(files, captions))
    shards = write_webdataset(OutputDir(str(shards_dir)), samples, per_shard)
    command = [
        str(venv / "bin" / "python"), str(Path(__file__).with_name("clip_retrieval_run.py")),
        "--shards", f"{shards_dir}/{{00000..{len(shards) - 1:05d}}}.tar", "--samples-per-shard", str(per_shard),
        "--output", str(work / "clip-retrieval"), "--result", str(work / "clip-retrieval.json"),
        "--model-name", DEMO_CLIP_MODEL, "--model-config", str(DEMO_DIR / f"{DEMO_CLIP_MODEL}.json"),
        "--bpe", str(DEMO_DIR / "altlake_tiny_bpe.txt.gz"), "--checkpoint", str(DEMO_FILES["clip"]),
        "--batch-size", str(batch_size), "--workers", str(cores),
    ]  # fmt: skip
    print(f"==> {CLIP_RETRIEVAL} clip_inference", file=sys.stderr)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"clip-retrieval failed:\n{done.stderr[-4000:]}")
    measured = json.loads((work / "clip-retrieval.json").read_text())
    # clip-retrieval's own per-partition stats: its read + inference loop, after model load and warmup.
    stats = json.loads((work / "clip-retrieval" / "stats" / "0.json").read_text())
    steady = stats["sample_count"] / stats["total_duration"]
    note = (
        "reads local webdataset shards (no download, checks or resize); wall = the clip_inference call, model load "
        f"included like the altlake rows (whole process incl. imports: {wall_s:.1f} s); steady = its stats/0.json"
    )
    return _row(f"{CLIP_RETRIEVAL} clip_inference", measured["images"], measured["wall_s"], steady, cores, note)


def _row(tool: str, images: int, wall_s: float, steady_per_s: float, cores: int, note: str) -> dict:
    per_s = images / wall_s if wall_s else 0.0
    return {
        "tool": tool,
        "images": images,
        "wall_s": round(wall_s, 2),
        "images_per_s": round(per_s, 1),
        "images_per_s_per_core": round(per_s / cores, 1),
        "steady_images_per_s": round(steady_per_s, 1),
        "note": note,
    }


def print_table(report: dict) -> None:
    print(f"\nCLIP scoring, {report['images']} JPEGs, model {report['model']} on {report['device']} ({report['cores']} cores), batch {report['batch_size']}")
    header = f"{'tool':<42} {'images':>7} {'wall s':>8} {'img/s':>8} {'img/s/core':>11} {'steady img/s':>13}"
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        print(
            f"{row['tool']:<42} {row['images']:>7} {row['wall_s']:>8} {row['images_per_s']:>8} "
            f"{row['images_per_s_per_core']:>11} {row['steady_images_per_s']:>13}"
        )
    for row in report["results"]:
        print(f"  {row['tool']}: {row['note']}")
    print(f"\nwritten to {OUT / 'clip.json'}")


if __name__ == "__main__":
    sys.exit(main())
