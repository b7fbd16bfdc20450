"""Publishing: a release's files, written deterministically, then copied to the release store once.

Layout of `<release_dir>/<release_id>/` (immutable: publishing refuses an existing release):

    parquet/<subset>/part-00000.parquet           LAION-compatible rows (URL, TEXT, WIDTH, ...)
    embeddings/<subset>/img_emb/img_emb_0.npy     } clip-retrieval layout per subset: row i of
    embeddings/<subset>/text_emb/text_emb_0.npy   } metadata_N describes row i of both npy files
    embeddings/<subset>/metadata/metadata_0.parquet
    subsets/<name>.parquet                        a derived subset (aesthetic, high_resolution, research,
                                                  research-safe): LAION-compatible rows of every language
    gx/<suite>/...                                GX Data Docs of the release gates
    report.html                                   plots and each stage's counts
    manifest.json                                 written last: versions, counts, checksums...

Data files are byte-for-byte reproducible from the same rows: each subset is sharded by uid
range (a derived subset's one file holds those shards as row groups), rows are sorted by uid,
parquet is written by pyarrow with fixed options and no schema metadata, and no file holds a
timestamp. That is what lets `rebuild_release` prove a release.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from altlake import storage
from altlake.paths import DERIVED_SUBSETS_DIR, MANIFEST, RELEASE_EMBEDDINGS_DIR, derived_subset_file, embedding_shard, release_parquet_file
from altlake.schemas import PAIRS, SUBSETS

FORMAT_VERSION = 5  # 2: the aesthetic column; 3: derived subsets (subsets/<name>.parquet, the manifest's derived_subsets);
# 4: the manifest's `stages` (altlake.stats) replace its `funnel`, and its extraction counts are a stage;
# 5: the `pdq` column (perceptual hash), so holders can match perceptual takedowns against their copy
ROWS_PER_FILE = 1_000_000
# Rows the driver's JVM collects at once while a shard is written (its heap and spark.driver.maxResultSize
# bound a collect: a 1M-row shard of 512-d embeddings is ~2.5 GB); the pieces are joined in Python.
COLLECT_ROWS = 100_000
UID_SPACE = 16**8  # shards split the range of the uid's first 8 hex digits

# LAION-5B's column names (and LAION-Aesthetics' `aesthetic`) first, then ours.
LAION_COLUMNS = {
    "URL": "url", "TEXT": "text", "WIDTH": "original_width", "HEIGHT": "original_height",
    "similarity": "similarity", "punsafe": "punsafe", "pwatermark": "pwatermark", "aesthetic": "aesthetic",
    "LANGUAGE": "language", "hash": "md5", "sha256": "sha256", "pdq": "pdq", "uid": "uid", "license": "license",
    "first_seen_crawl": "first_seen_crawl", "near_duplicate_of": "near_duplicate_of",
}  # fmt: skip
METADATA_COLUMNS = {
    "uid": "uid", "url": "url", "caption": "text", "similarity": "similarity", "punsafe": "punsafe",
    "pwatermark": "pwatermark", "aesthetic": "aesthetic", "sha256": "sha256", "md5": "md5", "pdq": "pdq", "width": "width",
    "height": "height", "language": "language", "near_duplicate_of": "near_duplicate_of",
}  # fmt: skip
# Columns a later format added: a release of an older format is rebuilt without them, byte for byte.
COLUMNS_SINCE = {"aesthetic": 2, "pdq": 5}
_ARROW_SCHEMA = pa.schema([f.with_nullable(True) for f in PAIRS.to_arrow()])
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "use_dictionary": True, "version": "2.6"}


class ReleaseExistsError(RuntimeError):
    """Releases are immutable: a published id is never written again."""


def release_id_for(date: str, inputs: dict) -> str:
    """YYYYMMDD-<10 hex of the inputs' hash>: same tables, thresholds and code -> same id."""
    digest = hashlib.sha256(json.dumps({**inputs, "format": FORMAT_VERSION}, sort_keys=True).encode()).hexdigest()
    return f"{date}-{digest[:10]}"


# --- files --------------------------------------------------------------------------------------------


def write_release_files(pairs, out_dir: str, rows_per_file: int = ROWS_PER_FILE, format_version: int = FORMAT_VERSION) -> dict[str, int]:
    """Write the parquet and embedding files of every subset from the pairs DataFrame, in the columns
    of `format_version` (a rebuild passes its manifest's).

    Each shard is collected on the driver on its own, so the driver holds one shard at a time.
    Returns rows per subset.
    """
    from pyspark.sql import functions as F

    counts = {}
    by_subset = {r["subset"]: r["count"] for r in pairs.groupBy("subset").count().collect()}
    for subset in SUBSETS:
        n = int(by_subset.get(subset, 0))
        shards = max(1, math.ceil(n / rows_per_file))
        bounds = _shard_bounds(shards)
        written = 0
        for shard, (low, high) in enumerate(zip(bounds, bounds[1:])):
            rows = pairs.where(F.col("subset") == subset)
            written += _write_shard(collect_by_uid(rows, n // shards, low, high), out_dir, subset, shard, format_version)
        if written != n:  # e.g. uids that are not hex fall in no shard: never publish a partial subset
            raise ValueError(f"subset {subset}: wrote {written} of {n} rows; uids must be hex hashes")
        counts[subset] = n
    return counts


def write_derived_subsets(pairs, out_dir: str, filters: dict[str, str], rows_per_file: int = ROWS_PER_FILE, format_version: int = FORMAT_VERSION) -> dict[str, int]:
    """Write each derived subset (name -> Spark SQL filter over the pairs) as one LAION-compatible parquet
    of every language's rows, sorted by uid; returns rows per subset.

    Each subset is sharded by uid range as the language groups are, each shard appended as its own row
    groups, so the file depends on nothing but its rows. All subsets come from one pass: the pairs are collected
    in uid pieces with a flag per subset, split at every subset's shard bounds, and each piece feeds
    every subset's pending shard (a pass per subset counted and collected the pairs four times over).
    The driver holds one piece plus each subset's unwritten shard.
    """
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    if not filters:
        return {}
    laion_columns = list(_columns(LAION_COLUMNS, format_version).values())  # no embeddings: their bytes are never read
    flags = {name: f"_in_{i}" for i, name in enumerate(filters)}
    selected = pairs.select(*laion_columns, *[F.coalesce(F.expr(c), F.lit(False)).alias(flags[name]) for name, c in filters.items()])
    totals = selected.agg(F.count("*").alias("_all"), *[F.count(F.when(F.col(flag), 1)).alias(flag) for flag in flags.values()]).first()
    counts = {name: int(totals[flag]) for name, flag in flags.items()}
    shards = {name: max(1, math.ceil(n / rows_per_file)) for name, n in counts.items()}
    ends = {name: set(_shard_bounds(shards[name])[1:]) for name in filters}
    bounds = sorted({0}.union(*ends.values()))
    pending: dict[str, list] = {name: [] for name in filters}
    written, writers = dict.fromkeys(filters, 0), {}
    try:
        for low, high in zip(bounds, bounds[1:]):
            piece = collect_by_uid(selected, int(totals["_all"] * (high - low) // UID_SPACE), low, high)
            for name, flag in flags.items():
                pending[name].append(piece.filter(piece.column(flag)))
                if high in ends[name]:  # the end of one of this subset's shards
                    shard = pa.concat_tables(pending[name]).combine_chunks()
                    laion = _laion_table(shard, format_version)
                    if name not in writers:
                        _mkdir_for(path := os.path.join(out_dir, derived_subset_file(name)))
                        writers[name] = pq.ParquetWriter(path, laion.schema, **PARQUET_OPTIONS)
                    writers[name].write_table(laion)
                    written[name] += laion.num_rows
                    pending[name] = []
    finally:
        for writer in writers.values():
            writer.close()
    for name, n in counts.items():
        if written[name] != n:
            raise ValueError(f"derived subset {name}: wrote {written[name]} of {n} rows; uids must be hex hashes")
    return counts


def _shard_bounds(shards: int) -> list[int]:
    """The uid-prefix bounds of `shards` equal uid ranges, 0 to UID_SPACE (shard i is [b[i], b[i+1]))."""
    return [shard * UID_SPACE // shards for shard in range(shards + 1)]


def collect_by_uid(rows, expected_rows: int, low: int = 0, high: int = UID_SPACE):
    """The rows whose uid prefix is in [low, high), sorted by uid, as one contiguous Arrow table: collected
    in uid sub-ranges of about COLLECT_ROWS rows each, so the driver's JVM never holds more than one piece.
    The same table (and so the same file bytes) whatever the number of pieces."""
    import pyarrow as pa

    pieces = max(1, math.ceil(expected_rows / COLLECT_ROWS))
    bounds = [low + i * (high - low) // pieces for i in range(pieces + 1)]
    if (low, high) == (0, UID_SPACE) and pieces == 1:
        # the whole range: no filter, so no uid is left out. Spark sorts it, as it always has: parquet
        # pages follow the table's chunks, and Spark's sorted batches are what published files were cut from.
        return rows.orderBy("uid").toArrow()
    # Each piece is sorted here, not by Spark: an orderBy is a sampling job and a shuffle of the piece's
    # embeddings, and a sort of 100k uids on the driver takes milliseconds. Spark and Arrow both order
    # strings by their bytes, and the pieces are joined into one chunk, so the files are the same.
    tables = [rows.where(_uid_prefix_in(a, b)).toArrow().sort_by("uid") for a, b in zip(bounds, bounds[1:])]
    return pa.concat_tables(tables).combine_chunks()


def _uid_prefix_in(low: int, high: int):
    """uid's first 8 hex digits in [low, high). Also said as bounds on the uid string (the same rows
    for lowercase hex uids), which Delta and parquet can skip files and row groups by: the pairs
    table is clustered by uid (`spark_jobs.release.write_pairs`)."""
    from pyspark.sql import functions as F

    prefix = F.conv(F.substring("uid", 1, 8), 16, 10).cast("long")
    inside = (prefix >= low) & (F.col("uid") >= f"{low:08x}")
    return inside & (prefix < high) & (F.col("uid") < f"{high:08x}") if high < UID_SPACE else inside


def _laion_table(table, format_version: int):
    """Rows of the pairs schema (the embeddings may be left out) -> the release parquet's LAION columns,
    in one fixed arrow schema (all nullable, no metadata) whatever nullability Spark reported."""
    columns = _columns(LAION_COLUMNS, format_version)
    schema = pa.schema([_ARROW_SCHEMA.field(column) for column in columns.values()])
    return table.select(list(columns.values())).cast(schema).replace_schema_metadata(None).rename_columns(list(columns))


def _columns(names: dict[str, str], format_version: int) -> dict[str, str]:
    """The release columns (release name -> pairs column) a format version has."""
    return {name: column for name, column in names.items() if COLUMNS_SINCE.get(column, 1) <= format_version}


def _write_shard(table, out_dir: str, subset: str, shard: int, format_version: int) -> int:
    """Write one shard's files; returns its row count."""
    import pyarrow.parquet as pq

    table = table.select(PAIRS.column_names).cast(_ARROW_SCHEMA).replace_schema_metadata(None)
    laion = _laion_table(table, format_version)
    _mkdir_for(path := os.path.join(out_dir, release_parquet_file(subset, shard)))
    pq.write_table(laion, path, **PARQUET_OPTIONS)
    if table.num_rows == 0:
        return 0  # no vectors: an empty subset has no embedding files (its dimension is unknown)
    base = os.path.join(out_dir, RELEASE_EMBEDDINGS_DIR, subset)
    columns = _columns(METADATA_COLUMNS, format_version)
    metadata = table.select(list(columns.values())).rename_columns(list(columns))
    _mkdir_for(path := os.path.join(base, embedding_shard("metadata", shard)))
    pq.write_table(metadata, path, **PARQUET_OPTIONS)
    for column in ("img_emb", "text_emb"):
        _mkdir_for(path := os.path.join(base, embedding_shard(column, shard)))
        np.save(path, arrow_embeddings(table.column(column)), allow_pickle=False)
    return table.num_rows


def embeddings_array(blobs: list[bytes]) -> np.ndarray:
    """float16 little-endian blobs (one per row) -> an (N, D) float16 array."""
    return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), -1)


def arrow_embeddings(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A binary column of float16 little-endian blobs, one per row and all of one length -> an (N, D)
    float16 array read from the column's value buffer: no Python bytes object a row (300k of them
    took a second and a half a release at 301k pairs)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise TypeError(f"embeddings must be a binary column, not {array.type}")
    if array.null_count:
        raise ValueError(f"{array.null_count} of {len(array)} embeddings are null")
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], offset_type, len(array) + 1, array.offset * np.dtype(offset_type).itemsize)
    lengths = np.diff(offsets)
    if len(array) == 0 or (lengths != lengths[0]).any() or lengths[0] % 2:
        raise ValueError(f"embeddings must be non-empty blobs of one even length, got lengths {sorted(set(lengths.tolist()))[:5]}")
    values = np.frombuffer(array.buffers()[2], np.uint8, int(offsets[-1] - offsets[0]), int(offsets[0]))
    return values.view("<f2").reshape(len(array), -1)


def _mkdir_for(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)


def file_checksums(root: str) -> dict[str, dict]:
    """relative path -> {sha256, bytes} for every file under root (the manifest's inventory)."""
    inventory = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            inventory[path.relative_to(root).as_posix()] = {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}
    return inventory


def data_files(inventory: dict[str, dict]) -> dict[str, dict]:
    """The reproducible part of a release (what a rebuild must match byte for byte)."""
    return {k: v for k, v in inventory.items() if k.startswith(("parquet/", "embeddings/", f"{DERIVED_SUBSETS_DIR}/"))}


def manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


# --- the release store: a local directory or s3://bucket/prefix --------------------------------------


class ReleaseStore:
    """Where releases live, through altlake.storage (`s3`: the endpoint and keys of an S3 store;
    Airflow passes its connection's)."""

    def __init__(self, location: str, s3: storage.S3Options | None = None):
        self.location = location.rstrip("/")
        self.is_s3 = storage.is_object_store(self.location)
        self.s3 = s3

    def url(self, release_id: str) -> str:
        return f"{self.location}/{release_id}"

    def file_url(self, release_id: str, name: str) -> str:
        return storage.join(self.url(release_id), name)

    def exists(self, release_id: str) -> bool:
        """Published = its manifest exists (files without one are leftovers of a crashed publish)."""
        return storage.exists(self.file_url(release_id, MANIFEST), self.s3)

    def read_manifest(self, release_id: str) -> dict:
        return json.loads(storage.read_bytes(self.file_url(release_id, MANIFEST), self.s3))

    def add_file(self, release_id: str, name: str, data: bytes) -> str:
        """Add a file beside a published release (a removals addendum); files are never overwritten."""
        url = self.file_url(release_id, name)
        try:
            storage.write_bytes(url, data, self.s3, exclusive=True)
        except storage.ObjectExistsError:
            raise ReleaseExistsError(f"{url} already exists; release files are never rewritten") from None
        return url

    def list_files(self, release_id: str, prefix: str) -> list[str]:
        """Names (relative to the release) under `prefix`, sorted."""
        return [name for name in storage.list_files(self.url(release_id), self.s3, recursive=True) if name.startswith(prefix)]

    def read_file(self, release_id: str, name: str) -> bytes:
        return storage.read_bytes(self.file_url(release_id, name), self.s3)

    def publish(self, staging_dir: str, release_id: str, manifest: bytes) -> str:
        """Copy a staged release in, manifest last, refusing an existing release id."""
        if self.exists(release_id):
            raise ReleaseExistsError(f"release {release_id} already exists at {self.url(release_id)}; releases are immutable")
        Path(staging_dir, MANIFEST).write_bytes(manifest)
        if not self.is_s3:
            target = os.path.join(self.location, release_id)
            shutil.rmtree(target, ignore_errors=True)  # leftovers of a crashed publish (no manifest)
            os.makedirs(self.location, exist_ok=True)
            if _same_device(staging_dir, self.location):
                os.rename(staging_dir, target)  # atomic: the release appears whole
            else:
                shutil.copytree(staging_dir, target)
            return target
        files = sorted(p for p in Path(staging_dir).rglob("*") if p.is_file() and p.name != MANIFEST)
        for path in [*files, Path(staging_dir, MANIFEST)]:
            storage.upload_file(path, self.file_url(release_id, path.relative_to(staging_dir).as_posix()), self.s3)
        return self.url(release_id)


def _same_device(a: str, b: str) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev
