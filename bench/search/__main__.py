"""`python -m bench.search`: query latency, throughput and recall of `altlake serve` vs clip back.

For each size, one synthetic release (clustered unit vectors, float16, clip-retrieval layout) is
indexed once by `altlake index`; clip-retrieval 2.45.0's clip back (own venv) serves the SAME faiss
files with the tuned nprobe baked in, and the same metadata as Arrow (its fastest provider). Both
servers run locally, one after the other, and get the same embedding_input queries over HTTP on
127.0.0.1. recall@10 is against exact brute force. See README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import requests
from tqdm import tqdm

from altlake.config import Settings
from bench.clip.__main__ import ensure_clip_retrieval_venv
from explore.index import build_index, index_path
from explore.knn import exact_topk, recall_at_k
from explore.release import open_release

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench" / "out"
CLIP_BACK_RUN = Path(__file__).resolve().parent / "clip_back_run.py"
K = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated vector counts")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension (256 keeps 1M vectors at 512 MB per modality)")
    parser.add_argument("--queries", type=int, default=300, help="sequential queries for latency and recall")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads for the throughput run")
    parser.add_argument("--load-requests", type=int, default=1200, help="requests in the throughput run")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    work = Path(settings.cache_dir) / "bench" / "search"
    venv = ensure_clip_retrieval_venv(Path(settings.cache_dir) / "bench-venvs")

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        release = make_release(work / f"n{n}-d{args.dim}", n, args.dim)
        started = time.perf_counter()
        info = build_index(str(release), progress=True)
        build_s = info["build_s"] if not info["skipped"] else None
        print(f"==> n={n}: index {info['indices']['image']['factory']} ({'cached' if info['skipped'] else f'{time.perf_counter() - started:.0f}s'})", file=sys.stderr)
        folder = clip_back_folder(release, info)
        queries = make_queries(release, args.queries)
        truth = exact_topk(open_release(release).embeddings("image"), queries, K)
        name = release.name
        bodies = [query_body(q, name) for q in queries]
        servers = {
            "altlake serve": [sys.executable, "-m", "altlake_cli.main", "serve", "--release", str(release), "--port", "{port}"],
            "clip-retrieval clip back": [str(venv / "bin" / "python"), str(CLIP_BACK_RUN), str(folder), name, "{port}"],
        }
        for label, command in servers.items():
            with running(command, ready_path="/indices-list") as url:
                measured = measure(url, bodies, truth, args.concurrency, args.load_requests)
            rows.append({"vectors": n, "dim": args.dim, "service": label, "index": info["indices"]["image"]["factory"],
                         "nprobe": info["indices"]["image"].get("nprobe"), "index_build_s": build_s, **measured})  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr)

    report = {"bench": "search", "cores": len(os.sched_getaffinity(0)), "k": K, "concurrency": args.concurrency, "results": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "search.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    return 0


# --- data -----------------------------------------------------------------------------------------


def make_release(root: Path, n: int, dim: int, clusters: int = 1000, seed: int = 0) -> Path:
    """A worker-layout release of clustered unit vectors (CLIP embeddings are clustered, not uniform);
    text embeddings are noisy copies of their images. Reused when already complete."""
    stamp = root / ".complete"
    if stamp.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for folder in ("img_emb", "text_emb", "metadata"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((clusters, dim)))
    img = np.lib.format.open_memmap(root / "img_emb" / "img_emb_0.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    txt = np.lib.format.open_memmap(root / "text_emb" / "text_emb_0.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    for lo in tqdm(range(0, n, 100_000), desc=f"generate {n}", file=sys.stderr):
        rows = min(100_000, n - lo)
        images = _unit(centers[rng.integers(clusters, size=rows)] + 0.8 * rng.standard_normal((rows, dim)) / np.sqrt(dim))
        img[lo : lo + rows] = images
        txt[lo : lo + rows] = _unit(images + 0.9 * rng.standard_normal((rows, dim)) / np.sqrt(dim))
    img.flush()
    txt.flush()
    ids = np.arange(n)
    metadata = pa.table({
        "uid": pa.array([f"{i:016x}" for i in ids]),
        "url": pa.array([f"https://images.example.com/{i}.jpg" for i in ids]),
        "caption": pa.array([f"synthetic pair {i}" for i in ids]),
        "similarity": rng.uniform(0.26, 0.4, n).astype(np.float32),
        "punsafe": rng.uniform(0, 1, n).astype(np.float32),
        "pwatermark": rng.uniform(0, 1, n).astype(np.float32),
    })  # fmt: skip
    pq.write_table(metadata, root / "metadata" / "metadata_0.parquet")
    (root / "manifest.json").write_text(json.dumps({"release_id": root.name, "synthetic": {"n": n, "dim": dim, "clusters": clusters}}))
    stamp.touch()
    return root


def clip_back_folder(release: Path, info: dict) -> Path:
    """clip back's index folder: our faiss files with the tuned nprobe written in, metadata as Arrow."""
    folder = release / "clip_back"
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    opened = open_release(release)
    for modality in ("image", "text"):
        index = faiss.read_index(str(index_path(opened, modality)))
        if "nprobe" in info["indices"][modality]:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", info["indices"][modality]["nprobe"])
        faiss.write_index(index, str(folder / f"{modality}.index"))
    shutil.copyfile(opened.metadata_file, folder / "metadata" / "0.arrow")
    return folder


def make_queries(release: Path, n: int, seed: int = 1) -> np.ndarray:
    """Text embeddings of random rows, perturbed: text-to-image queries that are not stored rows."""
    rng = np.random.default_rng(seed)
    texts = open_release(release).embeddings("text")
    rows = texts.rows(np.sort(rng.choice(texts.n, size=n, replace=False)))
    return _unit(rows + 0.3 * rng.standard_normal(rows.shape) / np.sqrt(rows.shape[1])).astype(np.float32)


def query_body(vector: np.ndarray, name: str) -> bytes:
    """What ClipClient sends for an embedding query (no filters, so both servers do the same work)."""
    return json.dumps({
        "text": None, "image": None, "image_url": None, "embedding_input": [round(float(x), 6) for x in vector],
        "modality": "image", "num_images": K, "num_result_ids": K, "indice_name": name, "use_mclip": False,
        "deduplicate": False, "use_safety_model": False, "use_violence_detector": False,
        "aesthetic_score": "", "aesthetic_weight": "",
    }).encode()  # fmt: skip


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- servers and load -----------------------------------------------------------------------------


@contextmanager
def running(command: list[str], ready_path: str, timeout_s: float = 900):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([part.replace("{port}", str(port)) for part in command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if requests.get(url + ready_path, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command[:3]} not ready after {timeout_s}s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(url: str, bodies: list[bytes], truth: np.ndarray, concurrency: int, load_requests: int) -> dict:
    session = requests.Session()
    headers = {"Content-Type": "application/json"}

    def call(body: bytes, s=session) -> tuple[float, list[int]]:
        started = time.perf_counter()
        response = s.post(url + "/knn-service", data=body, headers=headers, timeout=60)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed, [r["id"] for r in response.json()]

    for body in bodies[:20]:  # warm up: page cache, lazy imports, connection
        call(body)
    latencies, found = [], []
    for body in bodies:
        elapsed, ids = call(body)
        latencies.append(elapsed)
        found.append((ids + [-1] * K)[:K])

    def worker(offset: int) -> list[float]:
        own = requests.Session()
        return [call(bodies[(offset + i * concurrency) % len(bodies)], own)[0] for i in range(load_requests // concurrency)]

    measured = {
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2),
        "sequential_qps": round(len(latencies) / sum(latencies), 1),
        "recall_at_10": round(recall_at_k(np.array(found), truth), 4),
        "queries": len(bodies),
    }
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            loaded = [t for batch in pool.map(worker, range(concurrency)) for t in batch]
    except requests.RequestException as exc:  # a server that cannot keep up is a result, not a crash
        return {**measured, "qps": None, "load_error": f"{type(exc).__name__} under {concurrency} concurrent clients: {exc}"[:300]}
    wall = time.perf_counter() - started
    return {
        **measured,
        "qps": round(len(loaded) / wall, 1),
        "loaded_p50_ms": round(1000 * statistics.median(loaded), 2),
        "loaded_p99_ms": round(1000 * float(np.percentile(loaded, 99)), 2),
    }


def print_table(report: dict) -> None:
    header = f"{'vectors':>9}  {'service':<26} {'index':<24} {'p50 ms':>7} {'p99 ms':>7} {'QPS(1)':>7} {'QPS':>7} {'recall@10':>9}"
    print(f"\nsearch bench: {report['cores']} cores, k={report['k']}; QPS(1) = one client, QPS = {report['concurrency']} concurrent clients")
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        qps = f"{r['qps']:>7.1f}" if r["qps"] is not None else f"{'failed':>7}"
        print(f"{r['vectors']:>9}  {r['service']:<26} {r['index']:<24} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['sequential_qps']:>7.1f} {qps} {r['recall_at_10']:>9.4f}")
        if "load_error" in r:
            print(f"{'':>11}{r['load_error']}")
    by_size: dict[int, dict[str, dict]] = {}
    for r in report["results"]:
        by_size.setdefault(r["vectors"], {})[r["service"]] = r
    for n, pair in by_size.items():
        if len(pair) == 2 and all(r["qps"] for r in pair.values()):
            ours, theirs = pair["altlake serve"], pair["clip-retrieval clip back"]
            print(f"{n:>9}  altlake/clip back throughput: {ours['qps'] / theirs['qps']:.1f}x, p99 {ours['p99_ms']:.1f} vs {theirs['p99_ms']:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
