"""`python -m bench.near_duplicates`: the release's near-duplicate marking (`cells`: cosine within
two levels of k-means cells, each row meeting its own and a few nearest cells, on local Spark) against
what a user would script instead (`faiss`: an exact flat inner-product index and its range search at
the cosine, every row against every row, on the same cores), side by side in one run, on CLIP-like
clustered embeddings.

Rows are unit float16 vectors from bench/pipeline/generate.image_embeddings, 2% of them near copies
of another row (cosine ~0.99). Per size and method: rows marked and wall seconds of the marking alone
(Spark's frame is cached first). faiss is exact, so against it the cells' recall (rows faiss marks
that the cells mark too) and their links are measured: every link the cells make must be a true one
(at the cosine, to a better row), or the run fails; results go to bench/out/near_duplicates.json.

    python -m bench.near_duplicates [--sizes 10000,50000] [--methods cells,faiss] [--dim 512]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from altlake.config import Settings
from bench.pipeline.generate import image_embeddings
from spark_jobs.release import mark_near_duplicates
from spark_jobs.session import get_spark

REPO = Path(__file__).resolve().parents[2]
METHODS = ("cells", "faiss")
NEAR_SHARE = 0.02
NEAR_NOISE = 0.15  # relative to a unit vector: cosine ~0.989 with its source
SEED = 20_251_205


def vectors(n: int, dim: int, seed: int = SEED) -> np.ndarray:
    """n clustered unit vectors, NEAR_SHARE of them a noisy copy of another row."""
    rng = np.random.default_rng(seed)
    v = image_embeddings(rng, n, dim, seed, "clustered")
    copies = rng.choice(n, int(n * NEAR_SHARE), replace=False)
    noise = rng.standard_normal((len(copies), dim))
    v[copies] = v[rng.integers(0, n, len(copies))] + NEAR_NOISE * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def faiss_marks(v: np.ndarray, uids: list[str], similarity: np.ndarray, min_cosine: float) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """uid -> near_duplicate_of by faiss' exact range search: each row's best (highest similarity, then
    smallest uid) other row at cosine >= min_cosine that ranks before it; and every true link (each
    row with every such better row)."""
    import faiss

    index = faiss.IndexFlatIP(v.shape[1])
    index.add(v)
    limits, _, found = index.range_search(v, min_cosine)
    rank = np.empty(len(v), np.int64)
    rank[np.lexsort((np.array(uids), -similarity))] = np.arange(len(v))
    marks, links = {}, set()
    for row in range(len(v)):
        better = [j for j in found[limits[row] : limits[row + 1]] if rank[j] < rank[row]]
        if better:
            marks[uids[row]] = uids[min(better, key=lambda j: rank[j])]
            links.update((uids[row], uids[j]) for j in better)
    return marks, links


def measure(spark, n: int, dim: int, methods: list[str], min_cosine: float) -> list[dict]:
    """One frame of n rows, marked by each method in turn."""
    v = vectors(n, dim).astype("<f2")  # as a release stores them; both methods read these
    similarity = np.random.default_rng(SEED + 1).uniform(0.28, 0.4, n).astype(np.float32)
    uids = [f"{i:032x}" for i in range(n)]
    rows = [(uids[i], float(similarity[i]), v[i].tobytes()) for i in range(n)]
    df = spark.createDataFrame(rows, "uid string, similarity float, img_emb binary").repartition(8).cache()
    df.count()
    results, truth = [], None
    for method in methods:
        start = time.perf_counter()
        blocking = {}
        if method == "cells":
            marked_df, cells = mark_near_duplicates(df, min_cosine, n)
            marks = {r["uid"]: r["near_duplicate_of"] for r in marked_df.where("near_duplicate_of IS NOT NULL").select("uid", "near_duplicate_of").collect()}
            blocking = cells.section()
        else:
            unit = v.astype(np.float32)
            marks, links = faiss_marks(unit / np.linalg.norm(unit, axis=1, keepdims=True), uids, similarity, min_cosine)
            truth = (marks, links)
        wall = time.perf_counter() - start
        results.append({"method": method, "rows": n, "dim": dim, **blocking, "marked": len(marks), "wall_s": round(wall, 1), "_marks": marks})
        print(f"{n:>9,} {method:<6} {blocking.get('cells', '-'):>5} cells  marked {len(marks):>7,}  {wall:7.1f} s", flush=True)
    df.unpersist()
    for r in results:
        marks = r.pop("_marks")
        if truth is not None and r["method"] != "faiss":
            exact, links = truth
            r["recall"] = round(len(marks.keys() & exact.keys()) / max(1, len(exact)), 5)
            r["same_link"] = round(sum(exact.get(u) == w for u, w in marks.items()) / max(1, len(exact)), 5)
            r["false_links"] = sum((u, w) not in links for u, w in marks.items())
            print(f"{n:>9,} {r['method']:<6} recall {r['recall']:.4f}, the exact best link {r['same_link']:.4f}, false links {r['false_links']}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.near_duplicates", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000", help="comma-separated row counts")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--min-cosine", type=float, default=Settings().near_duplicate_cosine)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "near_duplicates.json"))
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="altlake-neardup-") as lake:
        settings = Settings.from_env(lake_dir=lake, spark_master="local[2]", spark_shuffle_partitions=8)
        results = []
        for n in args.sizes.split(","):  # a session each: one size's cached rows and plans never crowd the next
            spark = get_spark(settings, app_name="bench-near-duplicates")
            results += measure(spark, int(n), args.dim, methods, args.min_cosine)
            spark.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"min_cosine": args.min_cosine, "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if any(r.get("false_links") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
