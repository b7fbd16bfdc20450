"""`python -m bench.near_duplicates.routing`: what the near-duplicate search's caps cost, at sizes where
Spark and faiss' flat search are too slow to ask: the release's own `Blocking` and `route` (numpy, no
Spark) on CLIP-like rows, against every pair at the cosine found by comparing every row with every
row of its topic (rows of two topics sit near cosine 0.35, far below it).

Rows come from bench/pipeline/generate.clustered_embeddings, 2% of them a copy of another row moved
a distance drawn uniformly up to the cosine's radius (cosine ~1 down to the threshold: the hardest
copies to find). Per probes: recall (pairs compared / pairs at the cosine), visits and comparisons
per row (a cell's home rows with each other and with its visitors: what the Spark step computes),
and seconds of routing. Results: bench/out/near_duplicates_routing.json.

    python -m bench.near_duplicates.routing [--rows 300000] [--probes 2,4,6,8] [--coarse-probes 2] [--dim 512]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from altlake.config import Settings
from bench.pipeline.generate import clustered_embeddings
from spark_jobs.release import NEAR_COARSE_PROBES, NEAR_SAMPLE_MAX, NEAR_SAMPLE_PER_CELL, Blocking, cell_count, route

REPO = Path(__file__).resolve().parents[2]
SEED = 20_251_206
COPIES = 0.02
BATCH = 10_000  # rows routed at once, as an Arrow batch in Spark


def rows_with_copies(n: int, dim: int, min_cosine: float, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """n unit rows and their topics, the last COPIES of them each a copy of an earlier row moved by a
    distance uniform in [0.03, radius], orthogonally (so the cosine is 1 - distance^2 / 2)."""
    rng = np.random.default_rng(seed)
    v, topic = clustered_embeddings(rng, n, dim, seed)
    copies = int(COPIES * n)
    source = rng.integers(0, n - copies, copies)
    away = rng.standard_normal((copies, dim))
    away -= (away * v[source]).sum(axis=1, keepdims=True) * v[source]
    distance = rng.uniform(0.03, math.sqrt(2 - 2 * min_cosine), copies)
    moved = v[source] + distance[:, None] * away / np.linalg.norm(away, axis=1, keepdims=True)
    v[n - copies :], topic[n - copies :] = moved / np.linalg.norm(moved, axis=1, keepdims=True), topic[source]
    return v.astype(np.float32), topic


def close_pairs(v: np.ndarray, topic: np.ndarray, min_cosine: float) -> np.ndarray:
    """Every pair (i < j) at the cosine: each row against every row of its topic."""
    pairs = []
    for t in np.unique(topic):
        rows = np.flatnonzero(topic == t)
        for start in range(0, len(rows), 4096):
            i, j = np.nonzero(v[rows[start : start + 4096]] @ v[rows].T >= min_cosine)
            i, j = rows[start + i], rows[j]
            pairs.append(np.stack([i[i < j], j[i < j]], axis=1))
    return np.concatenate(pairs)


def measure(v: np.ndarray, pairs: np.ndarray, blocking: Blocking, min_cosine: float, probes: int, coarse_probes: int) -> dict:
    start = time.perf_counter()
    home = np.empty(len(v), np.int64)
    visitor, visited = [], []
    for first in range(0, len(v), BATCH):
        h, visits = route(v[first : first + BATCH], blocking, min_cosine, probes, coarse_probes)
        home[first : first + BATCH] = h
        visitor.append(np.repeat(np.arange(first, first + len(h)), [len(x) for x in visits]))
        visited.append(np.concatenate(visits) if visits else np.zeros(0, np.int64))
    seconds = time.perf_counter() - start
    visitor, visited = np.concatenate(visitor), np.concatenate(visited)
    a, b = pairs[:, 0], pairs[:, 1]
    low, high_home = np.where(home[a] <= home[b], a, b), np.maximum(home[a], home[b])
    met = set(zip(visitor.tolist(), visited.tolist()))
    found = (home[a] == home[b]) | np.array([(int(x), int(c)) in met for x, c in zip(low, high_home)], bool)
    at_home = np.bincount(home, minlength=blocking.cells).astype(np.float64)
    visitors = np.bincount(visited, minlength=blocking.cells)
    return {"probes": probes, "recall": round(float(found.mean()), 5), "visits_per_row": round(len(visited) / len(v), 2),
            "comparisons_per_row": round(float((at_home * (at_home + visitors)).sum() / len(v))),
            "fullest_cell": int(at_home.max()), "route_s": round(seconds, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.near_duplicates.routing", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--probes", default="2,4,6,8", help="comma-separated caps on the cells a row visits")
    parser.add_argument("--coarse-probes", type=int, default=NEAR_COARSE_PROBES, help="cap on the coarse cells a row is routed through")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--min-cosine", type=float, default=Settings().near_duplicate_cosine)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "near_duplicates_routing.json"))
    args = parser.parse_args(argv)
    v, topic = rows_with_copies(args.rows, args.dim, args.min_cosine)
    pairs = close_pairs(v, topic, args.min_cosine)
    cells = cell_count(args.rows)
    sample = v[np.random.default_rng(SEED + 1).choice(len(v), min(len(v), NEAR_SAMPLE_MAX, NEAR_SAMPLE_PER_CELL * cells), replace=False)]
    blocking = Blocking.train(sample, cells)
    print(f"{args.rows:,} rows, {len(pairs):,} pairs at cosine {args.min_cosine}, {blocking.cells} cells in {len(blocking.fine)} coarse")
    results = []
    for probes in (int(p) for p in args.probes.split(",")):
        results.append(measure(v, pairs, blocking, args.min_cosine, probes, args.coarse_probes))
        print("  " + ", ".join(f"{k} {v}" for k, v in results[-1].items()), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": args.rows, "dim": args.dim, "min_cosine": args.min_cosine, "pairs": len(pairs),
                                          "cells": blocking.cells, "coarse_cells": len(blocking.fine), "coarse_probes": args.coarse_probes, "results": results}, indent=1) + "\n")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
