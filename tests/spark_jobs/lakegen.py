"""Small generators for the release-side tests: candidate rows and worker-shaped output dirs.

Worker output dirs are written by the worker's own writer (gpu_workers.writer), so merge tests read
exactly what the worker writes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow.compute as pc

from altlake.paths import RESULTS_FILE
from altlake.schemas import CANDIDATES, SCORES
from altlake.urls import canonical_url
from gpu_workers.writer import OutputDir, metadata_table, parquet_bytes, results_table, write_embeddings, write_success
from spark_jobs.lake import table_path
from spark_jobs.wat import pair_uid

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
DIM = 32


def candidate(url: str, text: str, language: str = "en", crawl: str = "CC-MAIN-2024-10", uid: str | None = None) -> dict:
    return {
        "uid": uid or pair_uid(url, text), "url": url, "url_canonical": canonical_url(url), "text": text, "page_url": url.rsplit("/", 1)[0] + "/page.html",
        "wat_path": "test.wat", "language": language, "language_score": 0.9, "license": None, "opt_out": None,
        "first_seen_crawl": crawl, "last_seen_crawl": crawl, "ingested_at": T0,
    }  # fmt: skip


def append_rows(spark, settings, table_name: str, rows: list[dict], schema) -> None:
    """Append rows to a lake table (the tests' stand-in for the upstream stage that fills it)."""
    ddl = schema.spark_ddl()
    df = spark.createDataFrame([tuple(r[c] for c in schema.column_names) for r in rows], ddl)
    df.write.format("delta").mode("append").save(table_path(settings, table_name))


def add_candidates(spark, settings, rows: list[dict]) -> None:
    append_rows(spark, settings, "candidates", rows, CANDIDATES)


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def random_unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    return unit(rng.standard_normal(dim))


def embeddings_for(seed: int, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """An image and a text embedding for an ok row: `scores` refuses an ok row without both."""
    rng = np.random.default_rng(seed)
    return random_unit(rng, dim), random_unit(rng, dim)


def f16_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f2").tobytes()


def result(uid: str, url: str, status: str = "ok", similarity: float | None = 0.3, seed: int = 0,
           scored_at: datetime = T0, batch_id: str = "b", sha256: str | None = None, aesthetic: float | None = 5.5,
           pdq: str | None = None) -> dict:  # fmt: skip
    """One worker result row; ok rows get hashes and scores (a perceptual hash when given), failures an error."""
    ok = status == "ok"
    digest = sha256 or hashlib.sha256(f"image-{uid}-{seed}".encode()).hexdigest()
    return {
        "uid": uid, "url": url, "status": status, "error": None if ok else f"{status} while downloading",
        "http_status": 200 if ok else None, "original_width": 640 if ok else None, "original_height": 480 if ok else None,
        "width": 256 if ok else None, "height": 192 if ok else None,
        "sha256": digest if ok else None, "md5": hashlib.md5(digest.encode()).hexdigest() if ok else None,
        "pdq": pdq if ok else None, "pdq_quality": 100 if ok and pdq else None,
        "similarity": similarity if ok else None, "punsafe": 0.1 if ok else None, "pwatermark": 0.2 if ok else None, "profile": None,
        "aesthetic": aesthetic if ok else None, "aesthetic_model": "laion-aesthetic-linear" if ok and aesthetic is not None else None,
        "clip_model": "ViT-B-32/laion2b" if ok else None, "text_model": "ViT-B-32/laion2b" if ok else None,
        "nsfw_model": "clip-nsfw-linear" if ok else None, "watermark_model": "wm-linear" if ok else None,
        "batch_id": batch_id, "download_s": 0.01, "scored_at": scored_at,
    }  # fmt: skip


def write_worker_output(out_dir: str, rows: list[dict], embeddings: dict[str, tuple[np.ndarray, np.ndarray]],
                        success: bool = True, record: dict | None = None) -> None:  # fmt: skip
    """A batch's output dir written by the worker's own writer: results, the ok rows' aligned
    embeddings and metadata, and `_SUCCESS` last (left out to stand for a worker that died), with
    `record` (the worker's throughput keys) in it when given."""
    out = OutputDir(out_dir)
    results = results_table(rows)
    out.write_bytes(RESULTS_FILE, parquet_bytes(results))
    ok = results.filter(pc.equal(results.column("status"), "ok"))
    uids = ok.column("uid").to_pylist()
    img, text = ([embeddings[uid][i] for uid in uids] for i in (0, 1))
    empty = np.zeros((0, DIM), np.float16)
    write_embeddings(out, np.stack(img).astype(np.float16) if uids else empty, np.stack(text).astype(np.float16) if uids else empty,
                     metadata_table(ok, ["c"] * len(uids), ["en"] * len(uids)))  # fmt: skip
    if success:
        write_success(out, {"rows": results.num_rows, "statuses": dict(Counter(r["status"] for r in rows)), **(record or {})})


def score_row(res: dict, img: np.ndarray | None, text: np.ndarray | None, attempts: int = 1) -> dict:
    """A `scores` table row from a worker result (for tests that start from scored data)."""
    return {**res, "attempts": attempts, "img_emb": None if img is None else f16_bytes(img),
            "text_emb": None if text is None else f16_bytes(text)}  # fmt: skip


def add_scores(spark, settings, rows: list[dict]) -> None:
    append_rows(spark, settings, "scores", rows, SCORES)


def later(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)
