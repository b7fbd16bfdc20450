"""Fixture releases for the explore tests: generated embeddings + metadata in the clip-retrieval layout."""

from __future__ import annotations

import hashlib
import io
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from altlake.schemas import SUBSETS


@pytest.fixture(autouse=True, scope="session")
def _one_faiss_thread() -> None:
    """The test machine runs several suites on 2 cores; spinning OpenMP workers made faiss 4x slower."""
    import faiss

    faiss.omp_set_num_threads(1)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_shard(base: Path, number: int, img: np.ndarray, txt: np.ndarray, metadata: dict) -> None:
    """One clip-retrieval shard: img_emb_N.npy, text_emb_N.npy, metadata_N.parquet (float16 embeddings)."""
    for folder in ("img_emb", "text_emb", "metadata"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    np.save(base / "img_emb" / f"img_emb_{number}.npy", img.astype(np.float16))
    np.save(base / "text_emb" / f"text_emb_{number}.npy", txt.astype(np.float16))
    pq.write_table(pa.table(metadata), base / "metadata" / f"metadata_{number}.parquet")


def synthetic_aesthetic(img: np.ndarray) -> np.ndarray:
    """LAION-Aesthetics-style scores (1-10) rising along the first embedding axis, so the direction
    an aesthetic_score shift should move results in is known (about 4 points per 0.33 of the axis)."""
    return np.clip(5.5 + 12.0 * img[:, 0], 1.0, 10.0).astype(np.float32)


def synthetic_metadata(start: int, n: int, rng: np.random.Generator, img: np.ndarray) -> dict:
    """Metadata for rows whose image embeddings are `img` (the aesthetic score follows them)."""
    ids = range(start, start + n)
    return {
        "uid": [hashlib.sha1(str(i).encode()).hexdigest()[:16] for i in ids],
        "url": [f"http://127.0.0.1:9/img/{i}.jpg" for i in ids],
        "caption": [f"generated pair number {i}" for i in ids],
        "similarity": rng.uniform(0.2, 0.4, n).astype(np.float32),
        "punsafe": rng.uniform(0.0, 1.0, n).astype(np.float32),
        "pwatermark": rng.uniform(0.0, 1.0, n).astype(np.float32),
        "sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in ids],
        "width": np.full(n, 64, np.int32),
        "height": np.full(n, 64, np.int32),
        "language": ["en"] * n,
        "aesthetic": synthetic_aesthetic(img),
    }


def make_release(root: Path, n_per_shard: list[int], dim: int = 32, seed: int = 0, layout: str = "release") -> Path:
    """A release (embeddings/<subset>/...) or worker output (flat) of random unit vectors, with a manifest."""
    rng = np.random.default_rng(seed)
    start = 0
    for k, n in enumerate(n_per_shard):
        base = root / "embeddings" / SUBSETS[k % len(SUBSETS)] if layout == "release" else root
        number = k // len(SUBSETS) if layout == "release" else k
        img, txt = unit_rows(rng, n, dim), unit_rows(rng, n, dim)
        write_shard(base, number, img, txt, synthetic_metadata(start, n, rng, img))
        start += n
    (root / "manifest.json").write_text(json.dumps({"release_id": root.name, "counts": {"total": start}}))
    return root


@pytest.fixture
def synthetic_release(tmp_path: Path) -> Path:
    """600 pairs over two subsets, dim 32, no CLIP model recorded (embedding queries only)."""
    return make_release(tmp_path / "rel-synthetic", [400, 200])


# --- a small real release: demo CLIP embeddings of generated pictures served on 127.0.0.1 -----------


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving `directory`; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def uvicorn_server(app) -> Iterator[str]:
    """The app under a real uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def image_site(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """(base URL, directory) of a live image server the model release's URLs point at."""
    directory = tmp_path_factory.mktemp("images")
    with http_server(directory) as base:
        yield base, directory


@pytest.fixture(scope="session")
def model_release(tmp_path_factory, image_site) -> Path:
    """48 generated scenes embedded with the demo CLIP (every third carries the unsafe proxy
    marker and punsafe 0.9, every fourth from row 1 pwatermark 0.9, blue scenes aesthetic 8.6 and
    the others 2.4), in the worker layout, with a manifest naming the model, indexed."""
    from gpu_workers.demo_models import synthetic
    from gpu_workers.models import ModelSpec, load_models
    from explore.index import build_index

    base, directory = image_site
    models = load_models(ModelSpec(nsfw_head=None, watermark_head=None))
    rng = random.Random(11)
    specs = [synthetic.random_spec(rng, unsafe_proxy=i % 3 == 0) for i in range(48)]
    images = [synthetic.render(spec, size=64) for spec in specs]
    captions = [synthetic.caption(spec) for spec in specs]
    bodies = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
        (directory / f"{i}.png").write_bytes(bodies[-1])
    img = models.embed_images(models.preprocess(images))
    txt = models.embed_texts(captions, ["en"] * len(captions))
    n = len(specs)
    metadata = {
        "uid": [hashlib.sha1(b).hexdigest()[:16] for b in bodies],
        "url": [f"{base}/{i}.png" for i in range(n)],
        "caption": captions,
        "similarity": np.einsum("ij,ij->i", img, txt).astype(np.float32),
        "punsafe": np.array([0.9 if s.unsafe_proxy else 0.05 for s in specs], np.float32),
        "pwatermark": np.array([0.9 if i % 4 == 1 else 0.02 for i in range(n)], np.float32),  # every fourth from 1: watermarked
        "sha256": [hashlib.sha256(b).hexdigest() for b in bodies],
        "width": np.full(n, 64, np.int32),
        "height": np.full(n, 64, np.int32),
        "language": ["en"] * n,
        "aesthetic": np.array([8.6 if s.colour == "blue" else 2.4 for s in specs], np.float32),
    }
    root = tmp_path_factory.mktemp("model") / "rel-demo"
    write_shard(root, 0, img, txt, metadata)
    manifest = {"release_id": "rel-demo", "models": {"clip_model": [models.clip_id], "text_model": [models.text_id]}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    build_index(str(root))
    return root
