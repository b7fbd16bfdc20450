"""`altlake index`: the image and text KNN indices of a release, tuned and recorded.

Releases up to 50k rows get an exact IndexFlatIP (fast enough, nothing to tune). Larger ones get
IVF + PQ with an inner-product metric, whose shortlist is reranked exactly by explore.knn. (An OPQ
rotation in front, LAION's choice, took half the build at 301k rows, about 29 s a tower, and
changed neither the tuned nprobe and shortlist nor recall@10 beyond 0.002: the exact rerank
absorbs what it buys.) nprobe and the reranked shortlist are tuned upward until recall@k, measured
against exact search on a sample of realistic cross-modal queries (text embeddings against the
image index and vice versa), reaches the target; the curve and the pick go into
index/index_info.json.

The release job builds the index from the STAGED release (`spark_jobs.release.release_indexer`), so the
manifest records it (kind, parameters, recall@10, sample size, file checksums) and the index is as
immutable as the rest of the release. A published release's manifest is never rewritten (its
checksum is in the `releases` table): `altlake index` refuses a release whose manifest records an
index, and for one published without (older releases, worker outputs) writes index/ beside it.

Everything lands under <release>/index/: image.index, text.index, metadata.arrow (the metadata
in global row order, memory-mappable), index_info.json. Files are written to a temporary name
and renamed, and a rebuild over unchanged inputs and parameters is skipped, so re-running the
task is safe.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from altlake.config import Settings
from explore.knn import FLAT, IVF_PQ, Knn, best_of, exact_topk, recall_at_k
from altlake.paths import INDEX_DIR, INDEX_INFO
from explore.release import MetadataStore, Release, ReleaseError, open_release, resolve_release, write_metadata_file
from explore.signals import rated_images, rating_embeddings

FORMAT_VERSION = 1
MODALITIES = ("image", "text")
DEFAULT_EXACT_MAX_ROWS = 50_000  # a flat 512-d scan of 50k rows is ~5 ms on one core
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_RECALL_QUERIES = 200
DEFAULT_RERANK_FACTOR = 4
RECALL_K = 10
_ADD_BLOCK_ROWS = 65_536
_RERANK_FACTORS = (4, 8, 16, 32, 64)  # shortlist widths tried, smallest first, once nprobe saturates
_TRAIN_ROWS_PER_LIST = 64  # faiss wants >= 39 a list (and >= 39 a PQ centroid: 9,984 at 8 bits)
_MAX_TRAIN_ROWS = 65_536  # 64 a list at nlist 1024
# faiss' defaults (k-means 25 rounds; OPQ, where a --factory asks for it, 50 rounds of 4, the first of
# 40) buy little recall once the shortlist is reranked exactly, at 3-5x the build time.
_OPQ_ITERATIONS, _OPQ_FIRST_PQ_ITERATIONS = 6, 10
_KMEANS_ITERATIONS = 10


class IndexRecordedError(ReleaseError):
    """The release's manifest already records its index: published files are never rewritten."""


def index_path(release: Release, modality: str) -> Path:
    return release.index_dir / f"{modality}.index"


def choose_factory(n: int, dim: int, exact_max_rows: int = DEFAULT_EXACT_MAX_ROWS) -> str:
    """Exact up to `exact_max_rows`; above, IVF+PQ sized for the release (about sqrt(n) lists)."""
    if n <= exact_max_rows:
        return "Flat"
    nlist = 2 ** max(4, round(math.log2(math.sqrt(n))))
    nlist = min(nlist, 2 ** int(math.log2(max(16, n // 39))))  # faiss wants >= 39 training points per list
    m = next(m for m in (dim // 4, dim // 8, dim // 2, dim) if m >= 1 and dim % m == 0 and m <= 256)
    nbits = 8 if n >= 256 * 39 else 4
    return f"IVF{nlist},PQ{m}x{nbits}"


def build_index(
    release_dir: str,
    *,
    exact_max_rows: int = DEFAULT_EXACT_MAX_ROWS,
    target_recall: float = DEFAULT_TARGET_RECALL,
    recall_queries: int = DEFAULT_RECALL_QUERIES,
    rerank_factor: int = DEFAULT_RERANK_FACTOR,
    factory: str | None = None,
    force: bool = False,
    progress: bool = False,
    seed: int = 0,
    release_id: str | None = None,
) -> dict:
    """Build (or confirm up to date) both indices and the metadata file of a release; return index_info."""
    release = open_release(release_dir, release_id)
    if release.manifest and release.manifest.get("index"):
        raise IndexRecordedError(
            f"{release.path} was published with its index recorded in manifest.json "
            f"(image recall@10 {release.manifest['index']['indices']['image'].get('recall_at_10')}); published releases are "
            "immutable, so it is served as is: copy the release elsewhere to index it differently"
        )
    params = {
        "exact_max_rows": exact_max_rows,
        "target_recall": target_recall,
        "recall_queries": recall_queries,
        "rerank_factor": rerank_factor,
        "factory": factory,
        "seed": seed,
    }
    source = release.source_fingerprint()
    info_path = release.index_dir / INDEX_INFO
    if not force and info_path.is_file():
        previous = json.loads(info_path.read_text())
        files = [release.metadata_file, *(index_path(release, m) for m in MODALITIES)]
        current = previous.get("source") == source and previous.get("params") == params and "aesthetic_ratings_file" in previous
        if current and all(f.is_file() for f in files):
            return {**previous, "skipped": True}

    started = time.perf_counter()
    release.index_dir.mkdir(parents=True, exist_ok=True)
    rows = write_metadata_file(release, release.metadata_file)
    indices = {}
    for modality in MODALITIES:
        embeddings = release.embeddings(modality)
        if embeddings.n != rows:
            raise ValueError(f"{modality} embeddings have {embeddings.n} rows, the metadata {rows}")
        spec = factory or choose_factory(embeddings.n, embeddings.dim, exact_max_rows)
        index = _train_and_fill(spec, embeddings, seed, progress, desc=f"index {modality}")
        _write_atomically(index_path(release, modality), lambda partial: faiss.write_index(index, str(partial)))
        other = release.embeddings("text" if modality == "image" else "image")
        indices[modality] = {
            "file": f"index/{modality}.index",
            "factory": spec,
            "kind": FLAT if spec == "Flat" else IVF_PQ,
            "rows": embeddings.n,
            "dim": embeddings.dim,
            "bytes": index_path(release, modality).stat().st_size,
            **_tune(release, modality, other, spec, target_recall, recall_queries, rerank_factor, seed),
        }
    ratings = _write_ratings(release)
    info = {
        "format_version": FORMAT_VERSION,
        "release_id": release.release_id,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_s": round(time.perf_counter() - started, 2),
        "metric": "inner_product (cosine on L2-normalised embeddings)",
        "rows": rows,
        "metadata_file": f"index/{release.metadata_file.name}",
        "aesthetic_ratings_file": ratings,
        "indices": indices,
        "params": params,
        "source": source,
    }
    _write_atomically(info_path, lambda partial: partial.write_text(json.dumps(info, indent=2, sort_keys=True)))
    return {**info, "skipped": False}


def manifest_section(info: dict) -> dict:
    """What a release manifest records of its index. `files` lists paths; the publisher, which
    checksums every file of the release, replaces it with {path: {sha256, bytes}}."""
    files = [info["metadata_file"], *(i["file"] for i in info["indices"].values()), f"{INDEX_DIR}/{INDEX_INFO}"]
    files += [info["aesthetic_ratings_file"]] if info.get("aesthetic_ratings_file") else []
    return {
        "format_version": info["format_version"],
        "metric": info["metric"],
        "rows": info["rows"],
        "build_s": info["build_s"],
        "params": info["params"],
        "indices": _without_curves(info["indices"]),
        "files": sorted(files),
    }


def _without_curves(indices: dict) -> dict:
    """Each index's record without its nprobe/recall curve (kept in index_info.json only)."""
    return {m: {k: v for k, v in i.items() if k != "recall_curve"} for m, i in indices.items()}


def _train_and_fill(spec: str, embeddings, seed: int, progress: bool, desc: str) -> faiss.Index:
    index = faiss.index_factory(embeddings.dim, spec, faiss.METRIC_INNER_PRODUCT)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter, transform.niter_pq_0 = _OPQ_ITERATIONS, _OPQ_FIRST_PQ_ITERATIONS
    if "IVF" in spec:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.niter = _KMEANS_ITERATIONS
        if isinstance(ivf, faiss.IndexIVFPQ):
            ivf.pq.cp.niter = _KMEANS_ITERATIONS
            ivf.do_polysemous_training = False  # minutes of simulated annealing for a search mode we never use
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(embeddings.n, size=min(embeddings.n, train_rows(index)), replace=False))
        index.train(embeddings.rows(sample))
    with tqdm(total=embeddings.n, desc=desc, unit="vec", file=sys.stderr, disable=not progress) as bar:
        for _, block in embeddings.chunks(_ADD_BLOCK_ROWS):
            index.add(block)
            bar.update(len(block))
    return index


def train_rows(index: faiss.Index) -> int:
    """Rows an untrained index is trained on: 64 a list (k-means time grows with the sample, and more
    trained no better at 301k rows), at least 39 a PQ centroid, at most _MAX_TRAIN_ROWS."""
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:  # no inverted lists (a PQ or flat index behind a transform)
        return _MAX_TRAIN_ROWS
    pq = getattr(ivf, "pq", None)
    return min(_MAX_TRAIN_ROWS, max(_TRAIN_ROWS_PER_LIST * ivf.nlist, 39 * (pq.ksub if pq is not None else 0)))


def _tune(release: Release, modality: str, queries_from, spec: str, target: float, n_queries: int, rerank: int, seed: int) -> dict:
    """Measure recall@10 through the serving path on the written (memory-mapped) index; pick nprobe."""
    knn = load_knn(release, modality, {"kind": FLAT if spec == "Flat" else IVF_PQ}, rerank)
    rng = np.random.default_rng(seed + 1)
    sample = np.sort(rng.choice(queries_from.n, size=min(queries_from.n, n_queries), replace=False))
    queries = queries_from.rows(sample)
    queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    truth = exact_topk(knn.embeddings, queries, RECALL_K)
    if knn.kind == FLAT:
        return {"recall_at_10": round(recall_at_k(knn.search(queries, RECALL_K)[1], truth), 4), "recall_queries": len(sample)}
    nlist = faiss.extract_index_ivf(knn.index).nlist
    # One index search per nprobe at the widest shortlist: its first w columns are the shortlist of
    # width w, so every rerank factor is measured from it (a search per factor, each climbing from
    # nprobe 1 again, spent most of the tuning on the widest lists). A factor is given up once more
    # lists stop adding recall; the pick is the narrowest shortlist that reaches the target, at its
    # fewest lists.
    factors = sorted({rerank, *(f for f in _RERANK_FACTORS if f > rerank)})
    widths = {factor: knn.shortlist(RECALL_K, factor) for factor in factors}
    curve, reached, live, previous = [], {}, set(factors), dict.fromkeys(factors, -1.0)
    nprobe = 1
    while nprobe <= nlist and any(f in live for f in factors if f < min(reached, default=math.inf)):
        knn.set_nprobe(nprobe)
        candidates = knn.candidates(queries, max(widths.values()))
        sims = knn.exact(queries, candidates)
        for factor in sorted(live):
            width = widths[factor]
            recall = recall_at_k(best_of(sims[:, :width], candidates[:, :width], RECALL_K)[1], truth)
            curve.append({"nprobe": nprobe, "rerank_factor": factor, "recall_at_10": round(recall, 4)})
            if recall >= target:
                reached[factor] = curve[-1]
            if recall >= target or recall - previous[factor] < 0.005:
                live.discard(factor)  # reached, or more lists no longer help this shortlist
            previous[factor] = recall
        nprobe *= 2
    chosen = reached[min(reached)] if reached else None
    pick = chosen or max(curve, key=lambda point: point["recall_at_10"])
    return {
        "nlist": nlist,
        "nprobe": pick["nprobe"],
        "rerank_factor": pick["rerank_factor"],
        "recall_at_10": pick["recall_at_10"],
        "recall_target_met": chosen is not None,
        "recall_curve": curve,
        "recall_queries": len(sample),
    }


def load_knn(release: Release, modality: str, info: dict, rerank_factor: int | None = None) -> Knn:
    """Open an index memory-mapped (codes and inverted lists stay on disk) with its tuned nprobe."""
    path = str(index_path(release, modality))
    flags = faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP_IFC if info["kind"] == FLAT else faiss.IO_FLAG_MMAP)
    knn = Knn(faiss.read_index(path, flags), release.embeddings(modality), info["kind"], rerank_factor or info.get("rerank_factor", DEFAULT_RERANK_FACTOR))
    if "nprobe" in info:
        knn.set_nprobe(info["nprobe"])
    return knn


def load_index_info(release: Release) -> dict:
    path = release.index_dir / INDEX_INFO
    if not path.is_file():
        raise FileNotFoundError(f"{release.path} has no index yet: run `altlake index --release {release.path}`")
    info = json.loads(path.read_text())
    if info.get("source") != release.source_fingerprint():
        raise ValueError(f"the index of {release.path} is stale (its embeddings or metadata changed): run `altlake index` again")
    return info


def open_metadata(release: Release) -> MetadataStore:
    return MetadataStore(release.metadata_file)


def _write_ratings(release: Release) -> str | None:
    """The rating embeddings clip back's aesthetic_score steers toward (explore.signals), averaged
    here once from the release's rated images rather than by every serving process at start; their
    path relative to the release, or None when no row has an aesthetic score."""
    ratings = rating_embeddings(rated_images(MetadataStore(release.metadata_file), release.embeddings("image")))
    if ratings is None:
        release.ratings_file.unlink(missing_ok=True)
        return None

    def save(partial: Path) -> None:
        with partial.open("wb") as out:  # a file object: given a name, np.save would append ".npy" to it
            np.save(out, ratings)

    _write_atomically(release.ratings_file, save)
    return f"{INDEX_DIR}/{release.ratings_file.name}"


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` into a partial file beside `path`, then rename: a reader never sees half a file."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    write(partial)
    partial.replace(path)


# --- CLI -----------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release", required=True, help="release directory, or a release id under the release store")
    parser.add_argument("--exact-max-rows", type=int, default=DEFAULT_EXACT_MAX_ROWS, help="largest release indexed exactly (Flat)")
    parser.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL, help="recall@10 nprobe is tuned to reach")
    parser.add_argument("--recall-queries", type=int, default=DEFAULT_RECALL_QUERIES, help="sampled queries for recall")
    parser.add_argument("--rerank-factor", type=int, default=DEFAULT_RERANK_FACTOR, help="smallest shortlist (factor x k, reranked exactly) tried")
    parser.add_argument("--factory", help="faiss index_factory string overriding the size-based choice")
    parser.add_argument("--force", action="store_true", help="rebuild even if the index is up to date")


def run(args: argparse.Namespace) -> int:
    path = resolve_release(args.release, Settings.from_env())
    try:
        info = build_index(
            str(path),
            exact_max_rows=args.exact_max_rows,
            target_recall=args.target_recall,
            recall_queries=args.recall_queries,
            rerank_factor=args.rerank_factor,
            factory=args.factory,
            force=args.force,
            progress=sys.stderr.isatty(),  # a bar on a terminal, nothing in a pipe or a log
        )
    except IndexRecordedError as error:
        print(f"altlake index: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"release": str(path), "rows": info["rows"], "skipped": info["skipped"], "indices": _without_curves(info["indices"])}, indent=2))
    return 0
