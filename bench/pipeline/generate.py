"""The benchmark's lake generator: WAT shards for the real extraction, and worker outputs written by
the worker's own writer (gpu_workers.writer), so every stage reads what production writes.

WATs come from spark_jobs.watgen (its defaults follow the real Common Crawl sample), in shards of a
fixed page count cached under the work folder: a larger size reuses the shards of a smaller one.
Worker outputs follow tests/spark_jobs/lakegen.write_worker_output (copied, not imported: bench
never depends on tests), with a realistic status mix, similarities around LAION's 0.28 cut, unit
float16 embeddings of the release model's dimension, and a share of exact and near duplicates.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from altlake.paths import RESULTS_FILE
from altlake.schemas import SCORE_STATUSES
from gpu_workers.writer import OutputDir, metadata_table, parquet_bytes, results_table, write_embeddings, write_success
from spark_jobs.watgen import generate_wat

SHARD_PAGES = 5000  # ~52k candidates, ~24 MB gzipped: a size needs whole shards plus one partial
CALIBRATION_PAGES = 300  # per calibration WAT (two of them, different seeds)

# Outcome shares of one scoring run: about 60% ok (LAION-5B's img2dataset runs kept 55-70%), the
# rest spread over the failures real crawls of alt-text URLs hit most (dead links first).
STATUS_MIX: dict[str, float] = {
    "ok": 0.60,
    "http_4xx": 0.135,
    "timeout": 0.05,
    "connect": 0.04,
    "dns": 0.03,
    "not_image": 0.03,
    "decode_error": 0.03,
    "too_small": 0.02,
    "http_5xx": 0.02,
    "robots_disallowed": 0.015,
    "opted_out": 0.01,
    "blocked_address": 0.005,
    "too_large": 0.005,
    "unsupported_format": 0.005,
    "too_many_redirects": 0.005,
}
EXACT_DUPLICATES = 0.02  # of ok rows: same sha256 as another ok row of the batch (the same image at another URL)
NEAR_DUPLICATES = 0.02  # of ok rows: image embedding = another's + tiny noise (cosine ~0.99, above 0.96)
NEAR_NOISE = 0.01  # squared norm of the noise relative to the unit vector: cosine = 1/sqrt(1.01) ~ 0.995
# Image embeddings: `isotropic` (uniform on the sphere: random pairs near cosine 0) or `clustered`,
# CLIP-like: a direction every image shares, one of CLUSTER_TOPICS topics, and noise (mean pairwise
# cosine ~0.35), the distribution that near-duplicate blocking finds hardest.
EMBEDDINGS = ("isotropic", "clustered")
CLUSTER_TOPICS = 50
CLUSTER_WEIGHTS = (0.55, 0.45, 0.6)  # shared direction, topic, noise
SIMILARITY_MEAN, SIMILARITY_SD = 0.275, 0.04  # ~45% of English rows at or above 0.28, more for others (0.26)
TAKEDOWN_DOMAIN_SHARE = 0.001

# The model ids every ok row records: one CLIP per release (no --allow-mixed-models needed). The
# profile stays null, so the release applies LAION-5B's 0.28 / 0.26 thresholds.
MODELS: dict[int, dict[str, str]] = {
    512: {"clip_model": "ViT-B-32@laion2b_s34b_b79k:sha256:bench0000512", "text_model": "ViT-B-32@laion2b_s34b_b79k:sha256:bench0000512",
          "nsfw_model": "laion-nsfw-mlp@sha256:bench0000512", "watermark_model": "laion-watermark-efficientnet_b3@sha256:bench0000000",
          "aesthetic_model": "laion-aesthetic-linear@sha256:bench0000512"},
    768: {"clip_model": "ViT-L-14@openai:sha256:bench0000768", "text_model": "ViT-L-14@openai:sha256:bench0000768",
          "nsfw_model": "laion-nsfw-mlp@sha256:bench0000768", "watermark_model": "laion-watermark-efficientnet_b3@sha256:bench0000000",
          "aesthetic_model": "laion-aesthetic-linear@sha256:bench0000768"},
}  # fmt: skip
ERRORS = {
    "http_4xx": "http_4xx: 404 Not Found",
    "timeout": "timeout: no complete answer within 30 s",
    "connect": "connect: connection refused",
    "dns": "dns: name does not resolve",
    "not_image": "not_image: text/html",
    "decode_error": "decode_error: image file is truncated",
    "too_small": "too_small: 16x16",
    "http_5xx": "http_5xx: 503 Service Unavailable",
    "robots_disallowed": "robots_disallowed: /wp-content/ disallowed for altlake",
    "opted_out": "x_robots_tag: noai",
    "blocked_address": "blocked_address: resolves to a private address",
    "too_large": "too_large: over 32 MB",
    "unsupported_format": "unsupported_format: image/gif",
    "too_many_redirects": "too_many_redirects: more than 10",
}


# --- WAT shards --------------------------------------------------------------------------------


def shard_seed(seed: int, index: int) -> int:
    """Shard `index`'s watgen seed: distinct per shard, the same in every run with this --seed."""
    return seed * 1_000_003 + index


def calibrate(work: Path, seed: int) -> float:
    """Candidates per WAT page (distinct kept pairs over two small WATs of different seeds), measured
    once and cached: how many pages a size needs."""
    from spark_jobs.wat import process_wat

    cache = work / "wat" / f"calibration-{seed}.json"
    if cache.exists():
        return float(json.loads(cache.read_text())["candidates_per_page"])
    uids: set[str] = set()
    for i in range(2):
        wat = work / "wat" / f"calibration-{seed}-{i}.warc.wat.gz"
        generate_wat(wat, CALIBRATION_PAGES, gzip=True, seed=shard_seed(seed, 900_000 + i))
        uids |= {p.uid for p in process_wat(str(wat)).pairs if p.opt_out is None}
        wat.unlink()
    per_page = len(uids) / (2 * CALIBRATION_PAGES)
    cache.write_text(json.dumps({"candidates_per_page": per_page, "pages": 2 * CALIBRATION_PAGES}))
    return per_page


def shard_plan(candidates: int, per_page: float, shard_pages: int = SHARD_PAGES) -> list[int]:
    """Pages per shard for ~`candidates`: whole shards, then one partial shard for the rest."""
    pages = max(1, math.ceil(candidates / per_page))
    whole, rest = divmod(pages, shard_pages)
    return [shard_pages] * whole + ([rest] if rest else [])


def wat_shards(work: Path, candidates: int, seed: int, shard_pages: int = SHARD_PAGES) -> tuple[list[Path], float]:
    """The cached WAT shards for ~`candidates` (generated when missing); (paths, seconds spent generating)."""
    per_page = calibrate(work, seed)
    paths, spent = [], 0.0
    for index, pages in enumerate(shard_plan(candidates, per_page, shard_pages)):
        path = work / "wat" / f"shard-{seed}-{index:05d}-{pages}.warc.wat.gz"
        if not path.exists():
            print(f"    generating WAT shard {path.name} ({pages} pages)", file=sys.stderr)
            started = time.perf_counter()
            partial = path.with_name(path.name + ".partial")
            generate_wat(partial, pages, gzip=True, seed=shard_seed(seed, index))
            partial.rename(path)  # a killed run leaves no half shard that a later run would trust
            spent += time.perf_counter() - started
        paths.append(path)
    return paths, spent


# --- worker outputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOutput:
    rows: int
    statuses: dict[str, int]
    exact_duplicates: int
    near_duplicates: int


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def draw_statuses(rng: np.random.Generator, n: int) -> list[str]:
    names = list(STATUS_MIX)
    shares = np.array([STATUS_MIX[s] for s in names])
    return [names[i] for i in rng.choice(len(names), size=n, p=shares / shares.sum())]


def texts_at(rng: np.random.Generator, img: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Unit text embeddings at exactly `similarity` cosine to the unit image embeddings, as a CLIP pair is."""
    other = rng.standard_normal(img.shape)
    other = _unit(other - (other * img).sum(axis=1, keepdims=True) * img)  # orthogonal to the image
    s = similarity[:, None].astype(np.float64)
    return s * img + np.sqrt(1 - s * s) * other


def image_embeddings(rng: np.random.Generator, n: int, dim: int, seed: int, kind: str = "isotropic") -> np.ndarray:
    """n unit image embeddings; a clustered lake's shared direction and topics come from the run's seed
    alone, so every batch draws from the same clusters."""
    if kind == "isotropic":
        return _unit(rng.standard_normal((n, dim)))
    if kind != "clustered":
        raise ValueError(f"embeddings must be one of {EMBEDDINGS}, not {kind!r}")
    return clustered_embeddings(rng, n, dim, seed)[0]


def clustered_embeddings(rng: np.random.Generator, n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n CLIP-like unit embeddings and the topic of each (near-duplicate benchmarks find every close
    pair within a topic: rows of two topics sit near cosine 0.35)."""
    shared = np.random.default_rng([seed, dim])
    common, topics = _unit(shared.standard_normal((1, dim))), _unit(shared.standard_normal((CLUSTER_TOPICS, dim)))
    w_common, w_topic, w_noise = CLUSTER_WEIGHTS
    topic = rng.integers(0, CLUSTER_TOPICS, n)
    return _unit(w_common * common + w_topic * topics[topic] + w_noise * _unit(rng.standard_normal((n, dim)))), topic


def write_batch_output(input_path: str, output_dir: str, batch_id: str, dim: int, seed: int, embeddings: str = "isotropic") -> BatchOutput:
    """One batch's worker output for its input parquet, through the worker's own writer: results,
    the ok rows' aligned embeddings and metadata, and `_SUCCESS` last."""
    batch = pq.read_table(input_path, columns=["uid", "url", "text", "language"])
    rng = np.random.default_rng([seed, int(hashlib.sha256(batch_id.encode()).hexdigest()[:12], 16)])
    n = batch.num_rows
    statuses = draw_statuses(rng, n)
    ok_index = [i for i, s in enumerate(statuses) if s == "ok"]
    n_ok = len(ok_index)
    similarity = np.clip(rng.normal(SIMILARITY_MEAN, SIMILARITY_SD, n_ok), -0.2, 0.6)
    img = image_embeddings(rng, n_ok, dim, seed, embeddings)
    sha = [hashlib.sha256(f"{batch_id}-{i}-{seed}".encode()).hexdigest() for i in range(n_ok)]
    picks = rng.permutation(n_ok)
    n_exact = int(round(EXACT_DUPLICATES * n_ok)) if n_ok > 1 else 0
    n_near = int(round(NEAR_DUPLICATES * n_ok)) if n_ok > 1 else 0
    originals = picks[n_exact + n_near:]  # duplicates copy only rows that stay themselves: exact counts
    for j in picks[:n_exact]:  # the same image bytes at another URL: same hash, same embedding
        source = originals[rng.integers(len(originals))]
        sha[j], img[j] = sha[source], img[source]
    for j in picks[n_exact:n_exact + n_near]:  # the same picture re-encoded or resized
        source = originals[rng.integers(len(originals))]
        img[j] = _unit((img[source] + rng.standard_normal(dim) * math.sqrt(NEAR_NOISE / dim))[None, :])[0]
    text = texts_at(rng, img, similarity)
    punsafe = rng.beta(0.4, 6.0, n_ok)
    pwatermark = rng.beta(1.0, 5.0, n_ok)
    aesthetic = np.clip(rng.normal(5.2, 0.8, n_ok), 1.0, 10.0)
    side = np.clip(rng.lognormal(math.log(700), 0.6, n_ok), 64, 6000).astype(int)
    aspect = rng.choice([1.0, 0.75, 1.333, 0.5625, 1.5], n_ok)
    models = MODELS.get(dim, {k: v.replace("512", str(dim)) for k, v in MODELS[512].items()})
    now = datetime.now(timezone.utc)
    uids, urls = batch.column("uid").to_pylist(), batch.column("url").to_pylist()
    rows, k = [], 0
    for i, status in enumerate(statuses):
        row = {"uid": uids[i], "url": urls[i], "status": status, "batch_id": batch_id, "scored_at": now,
               "download_s": float(rng.lognormal(-1.5, 0.8)), "profile": None}  # fmt: skip
        if status == "ok":
            w, h = int(side[k]), max(16, int(side[k] * aspect[k]))
            scale = 256 / max(w, h)
            row.update(
                error=None, http_status=200, original_width=w, original_height=h, width=max(1, round(w * scale)), height=max(1, round(h * scale)),
                sha256=sha[k], md5=hashlib.md5(sha[k].encode()).hexdigest(), similarity=float(similarity[k]),
                punsafe=float(punsafe[k]), pwatermark=float(pwatermark[k]), aesthetic=float(aesthetic[k]), **models,
            )  # fmt: skip
            k += 1
        else:
            row.update(error=ERRORS[status], http_status=404 if status == "http_4xx" else (503 if status == "http_5xx" else None))
        rows.append(row)
    out = OutputDir(output_dir)
    results = results_table(rows)
    out.write_bytes(RESULTS_FILE, parquet_bytes(results))
    ok = results.filter(pc.equal(results.column("status"), "ok"))
    # results_table sorts by uid: put the embeddings and captions in the same (uid) order.
    position = {uids[i]: k for k, i in enumerate(ok_index)}
    order = [position[u] for u in ok.column("uid").to_pylist()]
    text_of = dict(zip(uids, batch.column("text").to_pylist()))
    language_of = dict(zip(uids, batch.column("language").to_pylist()))
    ok_uids = ok.column("uid").to_pylist()
    write_embeddings(out, img[order].astype(np.float16), text[order].astype(np.float16),
                     metadata_table(ok, [text_of[u] for u in ok_uids], [language_of[u] for u in ok_uids]))  # fmt: skip
    counts = dict(Counter(statuses))
    write_success(out, {"rows": results.num_rows, "statuses": counts})
    return BatchOutput(n, counts, n_exact, n_near)


def write_worker_outputs(batches: list[dict], dim: int, seed: int, embeddings: str = "isotropic") -> dict:
    """Every planned batch's output folder (batches: rows of the `batches` table); totals per status."""
    totals: Counter = Counter()
    exact = near = rows = 0
    for batch in batches:
        written = write_batch_output(batch["input_path"], batch["output_path"], batch["batch_id"], dim, seed, embeddings)
        totals.update(written.statuses)
        exact, near, rows = exact + written.exact_duplicates, near + written.near_duplicates, rows + written.rows
    return {"batches": len(batches), "rows": rows, "statuses": dict(sorted(totals.items())), "exact_duplicates": exact, "near_duplicates": near}


def takedown_domains(hosts: list[str], seed: int, share: float = TAKEDOWN_DOMAIN_SHARE) -> list[str]:
    """~`share` of the distinct hosts (at least one), drawn with the seed: the takedown requests."""
    distinct = sorted(set(filter(None, hosts)))
    if not distinct:
        return []
    count = max(1, round(share * len(distinct)))
    rng = np.random.default_rng(seed)
    return sorted(distinct[i] for i in rng.choice(len(distinct), size=count, replace=False))


def host_of(url: str) -> str | None:
    return urlsplit(url).hostname


assert set(STATUS_MIX) <= set(SCORE_STATUSES), "STATUS_MIX names a status the worker cannot write"
