"""`python -m bench.near_duplicates`: the release's near-duplicate marking, the fixed 16 bands x 16 bits
that every release used before (`fixed`) against the blocking each release now picks from its rows
(`adaptive`), side by side in one run, on CLIP-like clustered embeddings (the distribution where
fixed blocking put the most random pairs in one bucket).

Rows are unit float16 vectors from bench/pipeline/generate.image_embeddings, 2% of them near copies
of another row (cosine ~0.98), marked by `spark_jobs.release.mark_near_duplicates` on local Spark.
Per size and method: the blocking, its recall at the cosine, rows marked, and wall seconds of the
marking alone. Both methods must mark the same rows; results go to bench/out/near_duplicates.json.

    python -m bench.near_duplicates [--sizes 10000,50000] [--methods fixed,adaptive] [--dim 512]
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
from spark_jobs.release import LSH_SAMPLE, Lsh, choose_lsh, mark_near_duplicates
from spark_jobs.session import get_spark

REPO = Path(__file__).resolve().parents[2]
METHODS = ("fixed", "adaptive")
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


def blocking(method: str, v: np.ndarray, min_cosine: float) -> Lsh:
    if method == "fixed":
        return Lsh(16, 16, max_bucket=None, sketch_bits=None)
    return choose_lsh(v[:LSH_SAMPLE], len(v), min_cosine)


def measure(spark, n: int, dim: int, methods: list[str], min_cosine: float) -> list[dict]:
    """One frame of n rows, marked by each method in turn."""
    v = vectors(n, dim)
    similarity = np.random.default_rng(SEED + 1).uniform(0.28, 0.4, n)
    rows = [(f"{i:032x}", float(similarity[i]), v[i].astype("<f2").tobytes()) for i in range(n)]
    df = spark.createDataFrame(rows, "uid string, similarity float, img_emb binary").repartition(8).cache()
    df.count()
    results = []
    for method in methods:
        lsh = blocking(method, v, min_cosine)
        start = time.perf_counter()
        marked = sorted(r["uid"] for r in mark_near_duplicates(df, min_cosine, lsh).where("near_duplicate_of IS NOT NULL").select("uid").collect())
        wall = time.perf_counter() - start
        results.append({"method": method, "rows": n, "dim": dim, **lsh.section(), "recall": round(lsh.recall(min_cosine), 4),
                        "marked": len(marked), "wall_s": round(wall, 1), "_uids": marked})  # fmt: skip
        print(f"{n:>9,} {method:<9} {lsh.bands:>3} x {lsh.bits:<3} recall {lsh.recall(min_cosine):.3f}  marked {len(marked):>7,}  {wall:7.1f} s", flush=True)
    df.unpersist()
    same = len({tuple(r.pop("_uids")) for r in results}) == 1
    for r in results:
        r["same_rows_as_other_methods"] = same
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
        spark = get_spark(settings, app_name="bench-near-duplicates")
        results = [r for n in args.sizes.split(",") for r in measure(spark, int(n), args.dim, methods, args.min_cosine)]
        spark.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"min_cosine": args.min_cosine, "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["same_rows_as_other_methods"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
