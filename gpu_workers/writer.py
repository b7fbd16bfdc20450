"""Writer: a batch's outputs, each file atomic, on a local disk or an s3:// prefix.

Layout of one batch's output directory (the names other tools already read):

    results.parquet               one row per input uid, schema altlake.schemas.WORKER_RESULTS
    img_emb/img_emb_0.npy         ok rows' image embeddings, L2-normalised float16  } clip-retrieval /
    text_emb/text_emb_0.npy       ok rows' text embeddings, same rows, same order   } autofaiss layout
    metadata/metadata_0.parquet   row i describes row i of both npy files          }
    00000.tar, 00001.tar, ...     optional webdataset shards (<key>.jpg/.txt/.json, like img2dataset)
    _SUCCESS                      JSON summary with counters per status, written last

A file is either absent or complete (altlake.storage): locally it is written to a temp name and
renamed; on S3 an object only becomes visible once its upload completes, and a failed upload is
removed. So a worker killed at any point leaves no torn file, and `_SUCCESS` (written last) tells
a finished batch from one to redo.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from altlake import storage
from altlake.paths import EMBEDDING_KINDS, SUCCESS_FILE, embedding_shard
from altlake.schemas import SCORE_STATUSES, WORKER_RESULTS

# One shard per batch, in the contracts' layout.
IMG_EMB_FILE, TEXT_EMB_FILE, METADATA_FILE = (embedding_shard(kind, 0) for kind in EMBEDDING_KINDS)
TEMP_MARK = storage.TEMP_MARK  # local temp files carry this in their name; stale ones are swept on re-run
SAMPLES_PER_SHARD = 10_000

# Columns that change between two runs of the same batch; everything else is deterministic.
TIMING_COLUMNS = ("download_s", "scored_at")

# clip-retrieval's metadata has the caption and url of each embedding row; we add the scores.
_METADATA_FROM_RESULTS = (
    "uid", "url", "similarity", "punsafe", "pwatermark", "aesthetic", "width", "height",
    "original_width", "original_height", "sha256", "md5",
)  # fmt: skip


# --- where the files go ---------------------------------------------------------------------------


class OutputDir:
    """A batch's output directory: a local folder or an s3:// prefix, written one atomic file at a
    time through altlake.storage."""

    def __init__(self, url: str, s3_endpoint: str = ""):
        self.url = url.rstrip("/")
        self.s3 = storage.is_object_store(url)
        self._options = storage.S3Options(endpoint=s3_endpoint)

    def path(self, name: str) -> str:
        return f"{self.url}/{name}"

    def write_bytes(self, name: str, data: bytes) -> None:
        storage.write_bytes(self.path(name), data, self._options)

    def write_file(self, name: str, local_path: str) -> None:
        """Move a finished local file (e.g. a tar shard built on scratch disk) into place."""
        storage.move_file(local_path, self.path(name), self._options)

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return storage.read_bytes(self.path(name), self._options)
        except FileNotFoundError:
            return None

    def remove_stale_temps(self) -> int:
        """Delete temp files a killed run left behind (S3 has none: an upload is whole or invisible)."""
        if self.s3 or not os.path.isdir(self.url):
            return 0
        removed = 0
        for folder, _, files in os.walk(self.url):
            for name in files:
                if TEMP_MARK in name:
                    os.remove(os.path.join(folder, name))
                    removed += 1
        return removed


# --- results, embeddings, metadata --------------------------------------------------------------


def results_table(rows: list[dict]) -> pa.Table:
    """Rows -> WORKER_RESULTS table sorted by uid; refuses unknown statuses, duplicates and nulls."""
    schema = WORKER_RESULTS.to_arrow()
    uids = [row["uid"] for row in rows]
    if len(set(uids)) != len(uids):
        raise ValueError("results hold a uid more than once")
    bad = sorted({row["status"] for row in rows} - set(SCORE_STATUSES))
    if bad:
        raise ValueError(f"unknown result status(es) {bad}; expected one of {SCORE_STATUSES}")
    ordered = sorted(rows, key=lambda row: row["uid"])
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in ordered], schema=schema)
    for f in schema:
        if not f.nullable and table.column(f.name).null_count:
            raise ValueError(f"results column {f.name!r} must not be null")
    return table


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def sample_key(index: int) -> str:
    """Key of the index-th ok sample (uid order): names its webdataset files, like img2dataset's keys."""
    return f"{index:09d}"


def metadata_table(ok_results: pa.Table, captions: list[str], languages: list[str]) -> pa.Table:
    """clip-retrieval metadata for the ok rows, in embedding order (key, caption, url, scores...)."""
    n = ok_results.num_rows
    if len(captions) != n or len(languages) != n:
        raise ValueError("one caption and one language per ok row")
    columns = {
        "key": pa.array([sample_key(i) for i in range(n)], pa.string()),
        "caption": pa.array(captions, pa.string()),
        "language": pa.array(languages, pa.string()),
    }
    columns.update({name: ok_results.column(name) for name in _METADATA_FROM_RESULTS})
    return pa.table(columns)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_embeddings(out: OutputDir, img_emb: np.ndarray, text_emb: np.ndarray, metadata: pa.Table) -> None:
    """The clip-retrieval layout: row i of metadata describes row i of both embedding files."""
    if not (img_emb.shape[0] == text_emb.shape[0] == metadata.num_rows):
        raise ValueError(
            f"embedding rows differ: {img_emb.shape[0]} image, {text_emb.shape[0]} text, {metadata.num_rows} metadata"
        )
    if img_emb.dtype != np.float16 or text_emb.dtype != np.float16:
        raise ValueError("embeddings are stored as float16")
    out.write_bytes(IMG_EMB_FILE, npy_bytes(img_emb))
    out.write_bytes(TEXT_EMB_FILE, npy_bytes(text_emb))
    out.write_bytes(METADATA_FILE, parquet_bytes(metadata))


# --- webdataset shards --------------------------------------------------------------------------


@dataclass
class ImageSpool:
    """The ok rows' stored JPEGs on scratch disk, in arrival order.

    Downloads finish in any order but shards are written in uid order (deterministic output); the
    spool keeps only offsets in memory, so a 100k-row batch does not hold 100k images in RAM.
    """

    directory: str | None = None
    _offsets: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._file = tempfile.TemporaryFile(dir=self.directory)

    def add(self, uid: str, data: bytes) -> None:
        self._file.seek(0, os.SEEK_END)
        self._offsets[uid] = (self._file.tell(), len(data))
        self._file.write(data)

    def get(self, uid: str) -> bytes:
        offset, length = self._offsets[uid]
        self._file.seek(offset)
        return self._file.read(length)

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Sample:
    key: str
    image: bytes  # encoded as the `image_ext` given to write_webdataset
    caption: str
    meta: dict


def write_webdataset(
    out: OutputDir, samples: Iterable[Sample], samples_per_shard: int = SAMPLES_PER_SHARD, image_ext: str = "jpg"
) -> list[str]:
    """Write 00000.tar, 00001.tar, ... with <key>.jpg/.txt/.json members; returns the shard names.

    Members carry fixed owners and mtimes so the same samples always give the same bytes.
    """
    shards: list[str] = []
    tar: tarfile.TarFile | None = None
    scratch = ""
    count = 0
    for sample in samples:
        if tar is None or count == samples_per_shard:
            if tar is not None:
                tar.close()
                out.write_file(shards[-1], scratch)
            handle, scratch = tempfile.mkstemp(suffix=".tar")
            os.close(handle)
            tar = tarfile.open(scratch, "w", format=tarfile.PAX_FORMAT)
            shards.append(f"{len(shards):05d}.tar")
            count = 0
        meta = json.dumps({"key": sample.key, "caption": sample.caption, **sample.meta}, sort_keys=True)
        for suffix, data in ((image_ext, sample.image), ("txt", sample.caption.encode()), ("json", meta.encode())):
            info = tarfile.TarInfo(f"{sample.key}.{suffix}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
        count += 1
    if tar is not None:
        tar.close()
        out.write_file(shards[-1], scratch)
    return shards


# --- the completion marker ----------------------------------------------------------------------


def write_success(out: OutputDir, summary: dict) -> None:
    out.write_bytes(SUCCESS_FILE, json.dumps(summary, indent=2, sort_keys=True).encode())


def read_success(out: OutputDir) -> dict | None:
    """The recorded summary of a finished batch, or None when the batch has not finished."""
    data = out.read_bytes(SUCCESS_FILE)
    return None if data is None else json.loads(data)
