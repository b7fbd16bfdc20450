"""`python -m bench.search`: latency, throughput and recall of `altlake serve` vs clip back.

For each size, one synthetic release (clustered unit vectors, float16, clip-retrieval layout) is
indexed once by `altlake index`; clip-retrieval 2.45.0's clip back (own venv) serves the SAME faiss
files with the tuned nprobe baked in, and the same metadata as Arrow (its fastest provider). Both
servers run locally, one after the other, and get the same embedding_input queries over HTTP on
127.0.0.1 from an asyncio client at several concurrencies, after the same warm-up. Every request
has a deadline, so a stalled server is a counted result, never a hung bench. recall@10 is against
exact brute force. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import faiss
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from altlake.config import Settings
from bench.clip.__main__ import ensure_clip_retrieval_venv
from bench.processes import free_port, stop
from explore.index import build_index, index_path
from explore.knn import exact_topk, recall_at_k
from explore.release import open_release

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench" / "out"
CLIP_BACK_RUN = Path(__file__).resolve().parent / "clip_back_run.py"
K = 10
OURS, THEIRS = "altlake serve", "clip-retrieval clip back"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated vector counts")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension (512: CLIP ViT-B/32)")
    parser.add_argument("--queries", type=int, default=300, help="distinct queries: run once each at concurrency 1 for recall")
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated client concurrencies")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load per concurrency above 1")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request deadline in seconds (a stalled server times out)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="`altlake serve --workers` (default: one per core)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    work = Path(settings.cache_dir) / "bench" / "search"
    venv = ensure_clip_retrieval_venv()
    levels = [int(c) for c in args.concurrency.split(",")]

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        release = make_release(work / f"n{n}-d{args.dim}", n, args.dim)
        started = time.perf_counter()
        info = build_index(str(release), progress=True)
        image = info["indices"]["image"]
        print(f"==> n={n}: index {image['factory']} ({'cached' if info['skipped'] else f'{time.perf_counter() - started:.0f}s'})", file=sys.stderr)
        folder = clip_back_folder(release, info)
        queries = make_queries(release, args.queries)
        truth = exact_topk(open_release(release).embeddings("image"), queries, K)
        bodies = [query_body(q, release.name) for q in queries]
        servers = {
            OURS: [sys.executable, "-m", "altlake_cli.main", "serve", "--release", str(release), "--port", "{port}", "--workers", str(args.workers)],
            THEIRS: [str(venv / "bin" / "python"), str(CLIP_BACK_RUN), str(folder), release.name, "{port}"],
        }
        for label, command in servers.items():
            with running(command, ready_path="/indices-list") as url:
                measured = measure(url + "/knn-service", bodies, truth, levels, args.duration, args.timeout)
            rows.append({
                "vectors": n, "dim": args.dim, "service": label, "index": image["factory"], "nprobe": image.get("nprobe"),
                "rerank_factor": image.get("rerank_factor") if label == OURS else None,
                "workers": args.workers if label == OURS else 1, "index_build_s": info["build_s"], **measured,
            })  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr)

    report = {"bench": "search", "cores": len(os.sched_getaffinity(0)), "k": K, "concurrency": levels,
              "duration_s": args.duration, "timeout_s": args.timeout, "results": rows}  # fmt: skip
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
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([part.replace("{port}", str(port)) for part in command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while not asyncio.run(_ready(url + ready_path)):
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited: {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command[:3]} not ready after {timeout_s}s")
            time.sleep(0.5)
        yield url
    finally:
        stop(process)


async def _ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session, session.get(url) as response:
            return response.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


def measure(url: str, bodies: list[bytes], truth: np.ndarray, levels: list[int], duration_s: float, timeout_s: float) -> dict:
    """Warm-up, then every query once at concurrency 1 (latency + recall), then each higher level for
    `duration_s` cycling the same queries. Only answered requests count toward q/s and latency."""
    asyncio.run(send_queries(url, bodies[:50], 4, len(bodies), timeout_s))  # page cache, lazy imports, connections
    per_level, recall = {}, None
    for concurrency in levels:
        if concurrency == 1:
            stats, found = asyncio.run(send_queries(url, bodies, 1, len(bodies), timeout_s, keep_ids=True))
            answered = [i for i in range(len(bodies)) if i in found]
            if answered:
                recall = round(recall_at_k(np.array([found[i] for i in answered]), truth[answered]), 4)
        else:
            stats, _ = asyncio.run(send_queries(url, bodies, concurrency, None, timeout_s, duration_s=duration_s))
        per_level[str(concurrency)] = stats
        print(f"    c={concurrency}: {stats}", file=sys.stderr)
    clean = [s["qps"] for s in per_level.values() if s["timeouts"] == 0 and s["errors"] == 0]
    return {
        "recall_at_10": recall,
        "queries": len(bodies),
        "levels": per_level,
        "best_qps": max((s["qps"] for s in per_level.values()), default=0.0),
        "best_clean_qps": max(clean) if clean else None,  # best level where nothing timed out or failed
    }


async def send_queries(url, bodies, concurrency, total, timeout_s, duration_s=None, keep_ids=False) -> tuple[dict, dict]:
    """`concurrency` clients, each one request at a time, until `total` requests or `duration_s` pass."""
    latencies: list[float] = []
    found: dict[int, list[int]] = {}
    failures = {"timeouts": 0, "errors": 0}
    issued = 0
    deadline = time.perf_counter() + duration_s if duration_s else None
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal issued
        while (total is None or issued < total) and (deadline is None or time.perf_counter() < deadline):
            i, issued = issued, issued + 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as response:
                    payload = await response.read()
                    if response.status != 200:
                        failures["errors"] += 1
                        continue
            except asyncio.TimeoutError:
                failures["timeouts"] += 1
                continue
            except aiohttp.ClientError:
                failures["errors"] += 1
                continue
            latencies.append(time.perf_counter() - started)
            if keep_ids:
                found[i] = ([r["id"] for r in orjson.loads(payload)] + [-1] * K)[:K]

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    stats = {
        "requests": issued,
        "ok": len(latencies),
        **failures,
        "qps": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2) if latencies else None,
    }
    return stats, found


def print_table(report: dict) -> None:
    levels = [str(c) for c in report["concurrency"]]
    print(f"\nsearch bench: {report['cores']} cores, k={report['k']}, {report['duration_s']:.0f} s per level, "
          f"{report['timeout_s']:.0f} s request deadline; q/s counts answered requests only")  # fmt: skip
    header = f"{'vectors':>9} {'dim':>4}  {'service':<26} {'clients':>7} {'p50 ms':>7} {'p99 ms':>7} {'q/s':>7} {'ok':>6} {'timeout':>7} {'error':>5}  {'recall@10':>9}"
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        for c in levels:
            s = r["levels"][c]
            p50 = f"{s['p50_ms']:>7.2f}" if s["p50_ms"] is not None else f"{'-':>7}"
            p99 = f"{s['p99_ms']:>7.2f}" if s["p99_ms"] is not None else f"{'-':>7}"
            recall = f"{r['recall_at_10']:>9.4f}" if c == levels[0] and r["recall_at_10"] is not None else ""
            print(f"{r['vectors']:>9} {r['dim']:>4}  {r['service']:<26} {c:>7} {p50} {p99} {s['qps']:>7.1f} {s['ok']:>6} {s['timeouts']:>7} {s['errors']:>5}  {recall}")
    by_size: dict[int, dict[str, dict]] = {}
    for r in report["results"]:
        by_size.setdefault(r["vectors"], {})[r["service"]] = r
    print()
    for n, pair in by_size.items():
        if len(pair) == 2:
            ours, theirs = pair[OURS], pair[THEIRS]
            ratio = f"{ours['best_qps'] / theirs['best_qps']:.1f}x" if theirs["best_qps"] else "inf (clip back answered nothing)"
            worst_p99 = max(s["p99_ms"] for s in ours["levels"].values() if s["p99_ms"] is not None)
            print(f"{n:>9}: best q/s {ours['best_qps']:.0f} (altlake, {ours['workers']} workers) vs {theirs['best_qps']:.0f} (clip back) = {ratio}; "
                  f"altlake worst p99 {worst_p99:.1f} ms over all levels")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
