"""One benchmark run of altlake's side: the whole scoring worker on one batch, as its own process.

Runs as `python -m bench.clip.ours` so the parent measures its CPU exactly as it measures
clip-retrieval's (imports and model load included on both sides). The worker downloads every image
from the bench's image server with robots.txt, X-Robots-Tag and the SSRF guard on (127.0.0.1
allow-listed), checks, decodes, resizes, embeds, tags and writes; its _SUCCESS summary (with the
per-stage CPU breakdown) is copied to --summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from altlake.config import Settings
from gpu_workers.downloader import DownloadConfig
from gpu_workers.images import ImageConfig
from gpu_workers.models import Models, ModelSpec, load_models
from gpu_workers.worker import PipelineConfig, score_batch
from gpu_workers.writer import results_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--summary", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", help="open_clip state dict (default: the model's demo/random weights)")
    parser.add_argument("--nsfw", help="NSFW head file, or 'demo'; none: no NSFW head")
    parser.add_argument("--watermark", help="watermark model file, or 'demo'; none: no watermark head")
    parser.add_argument("--aesthetic", help="aesthetic head file, or 'demo'; none: no aesthetic head")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decode", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decode-workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--max-in-flight", type=int, default=PipelineConfig.max_in_flight)
    parser.add_argument("--per-host", type=int, default=32, help="open requests to the image servers' host")
    parser.add_argument("--stub-ms", type=float, default=0.0,
                        help="replace CLIP by a stub that takes this long per batch (a GPU that never waits on the CPU)")
    parser.add_argument("--raw-pixels", action="store_true",
                        help="hand the model uint8 batches as a CUDA worker does: CLIP's preprocessing then runs inside the model call")
    args = parser.parse_args(argv)

    spec = ModelSpec(
        clip_model=args.model, checkpoint=args.checkpoint, multilingual_text_model=None,
        nsfw_head=args.nsfw, watermark_head=args.watermark, aesthetic_head=args.aesthetic, device=args.device,
    )  # fmt: skip
    models = load_models(spec)
    if args.stub_ms:
        stub_model(models, args.stub_ms / 1000)
    if args.raw_pixels:
        raw_pixel_hand_over(models)
    # pyarrow imports pandas on its first conversion of rows: a second once per worker process, paid
    # here with the other imports (both sides' process CPU counts it) rather than in the first
    # batch's write stage, where a 2,000-image run would read it as 0.5 ms per image.
    results_table([])
    summary = score_batch(
        args.input, args.output, spec,
        # Loopback servers stand for the many hosts of a real batch: the per-host politeness cap is the
        # bench's to set (img2dataset has none); robots.txt, X-Robots-Tag and the SSRF guard stay on.
        DownloadConfig.from_settings(Settings.from_env(), allow_hosts=("127.0.0.1",), per_host_concurrency=args.per_host),
        ImageConfig(min_bytes=0),
        PipelineConfig(batch_size=args.batch_size, decode_workers=args.decode_workers, decode=args.decode, max_in_flight=args.max_in_flight),
        models=models,
        progress=True,
    )  # fmt: skip
    with open(args.summary, "w") as f:
        json.dump(summary, f, indent=2, default=str)
    return 0


def stub_model(models: Models, seconds_per_batch: float) -> None:
    """CLIP replaced by a call that sleeps a fixed time per image batch (releasing the GIL, as a GPU
    kernel does) and returns random unit vectors: with download, decode and writing overlapped, the
    worker's rate then equals the stub's (batch size / seconds per batch)."""
    rng = np.random.default_rng(0)

    def vectors(n: int) -> np.ndarray:
        x = rng.standard_normal((n, models.embed_dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def embed_images(batch) -> np.ndarray:
        time.sleep(seconds_per_batch)
        return vectors(len(batch))

    models.embed_images = embed_images
    models.embed_texts = lambda texts, languages: vectors(len(texts))


def raw_pixel_hand_over(models: Models) -> None:
    """The models take raw uint8 batches on the CPU too, as they do on CUDA: the decode threads then
    hand over the stored pixels and the batched resize and normalisation run inside the model call
    (on the GPU there, here on the CPU, where they count as `model`). What the decode threads spend
    is then what a CUDA worker's CPU decode path spends."""
    models.__class__ = type("RawPixelModels", (type(models),), {"preprocesses_on_device": property(lambda self: True)})


if __name__ == "__main__":
    raise SystemExit(main())
