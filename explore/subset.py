"""`altlake subset`: a domain-specific subset, as a parquet img2dataset can download directly.

The queries (texts and/or images) are embedded with the release's own CLIP, then every image
embedding of the release is scanned exactly, one memory-mapped block at a time (a subset is a
batch job: exact beats approximate here, and memory stays flat). A pair is kept when its best
cosine over the queries reaches `min_similarity` (and its punsafe is at most `max_punsafe`, if
given); the `max_rows` best are written, best first, with a manifest that counts each drop. With
`within`, only the rows of one of the release's derived subsets (aesthetic, high_resolution,
research, research-safe) are scanned.

Output, in --out:
    subset.parquet          URL, TEXT, similarity (to the best query), query, uid, punsafe, ...
    subset_manifest.json    queries, release, thresholds, counts
Then: img2dataset --url_list subset.parquet --input_format parquet --url_col URL --caption_col TEXT ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from altlake.config import Settings
from explore.encoder import ModelOverrides, QueryEncoder
from explore.errors import QueryError
from explore.release import derived_subset_uids, derived_subsets, open_release, resolve_release
from explore.search import PAIR_SIMILARITY, SearchOptions, load_image

SUBSET_FILE = "subset.parquet"
SUBSET_MANIFEST = "subset_manifest.json"
# Metadata carried into the subset, renamed to LAION's parquet names where LAION has one.
CARRIED_COLUMNS = {"uid": "uid", "punsafe": "punsafe", "pwatermark": "pwatermark", "sha256": "sha256", "width": "WIDTH", "height": "HEIGHT", "language": "LANGUAGE", "similarity": PAIR_SIMILARITY}
_BLOCK_ROWS = 65_536
_MAX_QUERY_IMAGE_BYTES = 50 * 1024 * 1024


def build_subset(
    release_dir: str,
    out_dir: str,
    *,
    queries: list[str] = (),
    query_images: list[str] = (),
    min_similarity: float = 0.3,
    max_rows: int = 100_000,
    max_punsafe: float | None = None,
    within: str | None = None,
    models: ModelOverrides = ModelOverrides(),
    progress: bool = False,
) -> dict:
    """Write subset.parquet + subset_manifest.json into out_dir; return the manifest."""
    if not queries and not query_images:
        raise ValueError("give at least one --query or --query-image")
    if max_rows < 1:
        raise ValueError("--max must be at least 1")
    release = open_release(release_dir)
    inside = derived_subset_uids(release, within) if within else None  # checked before any model is loaded
    encoder = QueryEncoder.for_manifest(release.manifest, models)
    if encoder is None:
        raise ValueError(f"{release.path} records no CLIP model in its manifest, so text/image queries cannot be embedded")
    labels, vectors = [], []
    for text in queries:
        labels.append(text)
        vectors.append(encoder.embed_text(text, multilingual=False))
    for path in query_images:
        body = Path(path).read_bytes()
        if len(body) > _MAX_QUERY_IMAGE_BYTES:
            raise ValueError(f"{path}: query image over {_MAX_QUERY_IMAGE_BYTES} bytes")
        try:
            picture = load_image(body, SearchOptions.max_image_pixels, encoder.models.image_size)
        except QueryError as exc:
            raise ValueError(f"{path}: {exc.message}") from exc
        labels.append(f"image:{Path(path).name}")
        vectors.append(encoder.embed_image(picture))
    matrix = np.stack(vectors).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)

    kept_ids, kept_sims, kept_query = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int32)
    counts = {"scanned": 0, "dropped": {"below_min_similarity": 0, "unsafe": 0, "over_max": 0}}
    total = sum(np.load(s.img_emb, mmap_mode="r").shape[0] for s in release.shards)
    offset = 0
    with tqdm(total=total, desc="subset scan", unit="pair", file=sys.stderr, disable=not progress) as bar:
        for shard in release.shards:
            embeddings = np.load(shard.img_emb, mmap_mode="r")
            if embeddings.shape[1] != matrix.shape[1]:
                raise ValueError(f"{shard.img_emb}: {embeddings.shape[1]}-dim embeddings, the CLIP gives {matrix.shape[1]}")
            punsafe = _punsafe(shard.metadata) if max_punsafe is not None else None
            member = _members(shard.metadata, inside) if inside is not None else None
            for lo in range(0, len(embeddings), _BLOCK_ROWS):
                rows = np.arange(lo, min(lo + _BLOCK_ROWS, len(embeddings)))
                bar.update(len(rows))
                if member is not None:
                    rows = rows[member[rows]]  # a derived subset's rows only: the others are never read
                sims = np.asarray(embeddings[rows], dtype=np.float32) @ matrix.T
                best, which = sims.max(axis=1), sims.argmax(axis=1)
                keep = best >= min_similarity
                counts["dropped"]["below_min_similarity"] += int((~keep).sum())
                if punsafe is not None:
                    safe = punsafe[rows] <= max_punsafe  # unknown (NaN) is not safe
                    counts["dropped"]["unsafe"] += int((keep & ~safe).sum())
                    keep &= safe
                kept_ids = np.concatenate([kept_ids, offset + rows[keep]])
                kept_sims = np.concatenate([kept_sims, best[keep]])
                kept_query = np.concatenate([kept_query, which[keep].astype(np.int32)])
                if len(kept_ids) > 2 * max_rows:  # bound memory: only the best max_rows can win
                    top = np.argpartition(-kept_sims, max_rows - 1)[:max_rows]
                    counts["dropped"]["over_max"] += len(kept_ids) - max_rows
                    kept_ids, kept_sims, kept_query = kept_ids[top], kept_sims[top], kept_query[top]
                counts["scanned"] += len(sims)
            offset += len(embeddings)
    order = np.lexsort((kept_ids, -kept_sims))  # best first, ties by row: deterministic
    counts["dropped"]["over_max"] += max(0, len(order) - max_rows)
    order = order[:max_rows]
    kept_ids, kept_sims, kept_query = kept_ids[order], kept_sims[order], kept_query[order]
    counts["kept"] = len(kept_ids)

    table = _rows(release, kept_ids, kept_sims, [labels[q] for q in kept_query])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / SUBSET_FILE, lambda p: pq.write_table(table, p, compression="zstd"))
    manifest = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "release_id": release.release_id,
        "release_path": str(release.path),
        "clip_model": encoder.models.clip_id,
        "queries": {"text": list(queries), "images": [{"path": str(p), "sha256": _sha256(p)} for p in query_images]},
        "min_similarity": min_similarity,
        "max_rows": max_rows,
        "max_punsafe": max_punsafe,
        "within": {"name": within, **derived_subsets(release)[within]} if within else None,
        "counts": counts,
        "similarity": {"max": float(kept_sims.max()), "min": float(kept_sims.min())} if len(kept_sims) else None,
        "files": {SUBSET_FILE: {"rows": table.num_rows, "sha256": _sha256(out / SUBSET_FILE)}},
        "img2dataset": f"img2dataset --url_list {SUBSET_FILE} --input_format parquet --url_col URL --caption_col TEXT "
        f"--save_additional_columns '[\"uid\",\"similarity\"]' --output_folder images",
    }
    _atomic(out / SUBSET_MANIFEST, lambda p: Path(p).write_text(json.dumps(manifest, indent=2)))
    return manifest


def _punsafe(metadata: Path) -> np.ndarray:
    names = pq.ParquetFile(metadata).schema_arrow.names
    if "punsafe" not in names:
        raise ValueError(f"{metadata} has no punsafe column, so --max-punsafe cannot be applied")
    values = pq.read_table(metadata, columns=["punsafe"]).column(0).to_numpy(zero_copy_only=False)
    return np.where(np.isnan(values.astype(np.float64)), np.inf, values)


def _members(metadata: Path, uids: pa.Array) -> np.ndarray:
    """Mask over a shard's rows: True where its uid is one of `uids`."""
    import pyarrow.compute as pc

    column = pq.read_table(metadata, columns=["uid"]).column("uid")
    return pc.is_in(column, value_set=uids).to_numpy(zero_copy_only=False).astype(bool)


def _rows(release, ids: np.ndarray, sims: np.ndarray, matched: list[str]) -> pa.Table:
    """Metadata of the kept rows (read per shard, only their columns), in the kept order."""
    offsets = np.cumsum([0] + [pq.ParquetFile(s.metadata).metadata.num_rows for s in release.shards])
    shard_of = np.searchsorted(offsets, ids, side="right") - 1
    columns: dict[str, list] = {"URL": [None] * len(ids), "TEXT": [None] * len(ids), **{v: [None] * len(ids) for v in CARRIED_COLUMNS.values()}}
    for s in np.unique(shard_of):
        shard = release.shards[s]
        names = pq.ParquetFile(shard.metadata).schema_arrow.names
        caption = "caption" if "caption" in names else "text"
        wanted = ["url", caption, *(c for c in CARRIED_COLUMNS if c in names)]
        positions = np.flatnonzero(shard_of == s)
        part = pq.read_table(shard.metadata, columns=wanted).take(pa.array(ids[positions] - offsets[s]))
        for name, target in [("url", "URL"), (caption, "TEXT"), *((c, CARRIED_COLUMNS[c]) for c in CARRIED_COLUMNS if c in names)]:
            for position, value in zip(positions, part.column(name).to_pylist()):
                columns[target][position] = value
    return pa.table({**columns, "similarity": pa.array(sims, pa.float32()), "query": matched, "release_row": pa.array(ids, pa.int64())})


def _atomic(path: Path, write) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    write(str(partial))
    partial.replace(path)


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- CLI -----------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release", required=True, help="release id or path")
    parser.add_argument("--query", action="append", default=[], help="text query (repeatable)")
    parser.add_argument("--query-image", action="append", default=[], help="image file query (repeatable)")
    parser.add_argument("--min-similarity", type=float, default=0.3, help="keep pairs whose image is at least this close to a query")
    parser.add_argument("--max", type=int, default=100_000, dest="max_rows", help="keep at most this many pairs (the closest)")
    parser.add_argument("--max-punsafe", type=float, help="also drop pairs with punsafe above this")
    parser.add_argument("--within", metavar="NAME",
                        help="scan only this derived subset of the release (aesthetic, high_resolution, research, research-safe)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clip-checkpoint", help="CLIP weights file, for releases embedded from a checkpoint")


def run(args: argparse.Namespace) -> int:
    manifest = build_subset(
        str(resolve_release(args.release, Settings.from_env())),
        args.out,
        queries=args.query,
        query_images=args.query_image,
        min_similarity=args.min_similarity,
        max_rows=args.max_rows,
        max_punsafe=args.max_punsafe,
        within=args.within,
        models=ModelOverrides(clip_checkpoint=args.clip_checkpoint, device=args.device),
        progress=True,
    )
    print(json.dumps({k: manifest[k] for k in ("release_id", "counts", "similarity", "img2dataset")}, indent=2))
    return 0
