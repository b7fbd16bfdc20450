"""A release's embeddings and metadata, read in place and memory-mapped.

Two layouts hold the same clip-retrieval files (row i of metadata_N describes row i of both npy):

    <worker output>/img_emb/img_emb_N.npy, text_emb/text_emb_N.npy, metadata/metadata_N.parquet
    <release>/embeddings/<subset>/{img_emb,text_emb,metadata}/...      (spark_jobs.publish)

A release's global row id is its position in one fixed order: subsets in altlake.schemas.SUBSETS
order (then any others by name), shards by N. The indices and the metadata file share that order,
so an index hit is a row number and nothing more. Nothing here loads a whole array: the npy files
are opened with mmap_mode="r", so serving a release larger than RAM only pages in what is touched.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from altlake.config import Settings
from altlake.paths import (
    DEPRECATION,
    EMBEDDING_KINDS,
    INDEX_DIR,
    INDEX_METADATA,
    INDEX_RATINGS,
    MANIFEST,
    RELEASE_EMBEDDINGS_DIR,
    REMOVALS_DIR,
    derived_subset_file,
    embedding_shard_number,
    release_path,
)
from altlake.schemas import SUBSETS



class ReleaseError(ValueError):
    """A release directory that cannot be explored, with the reason."""


@dataclass(frozen=True)
class Shard:
    subset: str  # "" for a worker's flat output
    number: int
    img_emb: Path
    text_emb: Path
    metadata: Path


@dataclass(frozen=True)
class Release:
    path: Path
    release_id: str
    shards: tuple[Shard, ...]
    manifest: dict | None

    @property
    def index_dir(self) -> Path:
        return self.path / INDEX_DIR

    @property
    def metadata_file(self) -> Path:
        return self.index_dir / INDEX_METADATA

    @property
    def ratings_file(self) -> Path:
        return self.index_dir / INDEX_RATINGS

    def deprecation(self) -> dict | None:
        """The notice `altlake deprecate-release` wrote beside the release (None: not deprecated). Read
        on each call, so a running service names a release deprecated after it started."""
        path = self.path / DEPRECATION
        return json.loads(path.read_text()) if path.is_file() else None

    def embeddings(self, modality: str) -> "EmbeddingMatrix":
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be image or text, not {modality!r}")
        return EmbeddingMatrix([s.img_emb if modality == "image" else s.text_emb for s in self.shards])

    def source_fingerprint(self) -> list[list]:
        """(relative path, bytes) of every input file: an index is stale when this changes."""
        files = [p for s in self.shards for p in (s.img_emb, s.text_emb, s.metadata)]
        return [[str(p.relative_to(self.path)), p.stat().st_size] for p in files]


def derived_subsets(release: Release) -> dict[str, dict]:
    """The derived subsets the release publishes, as its manifest records them (name -> filter, rows,
    file...); none for a release from before them."""
    return dict((release.manifest or {}).get("derived_subsets", {}))


def derived_subset_uids(release: Release, name: str) -> pa.Array:
    """The uids of one derived subset's rows (read from its parquet, only that column)."""
    found = derived_subsets(release)
    if name not in found:
        have = ", ".join(sorted(found)) or "none (it predates derived subsets)"
        raise ReleaseError(f"release {release.release_id} has no derived subset {name!r}; it has: {have}")
    return pq.read_table(release.path / derived_subset_file(name), columns=["uid"]).column("uid").combine_chunks()


def resolve_release(release: str, settings: Settings | None = None) -> Path:
    """A path as given, or a release id under Settings.release_dir."""
    if os.path.isdir(release):
        return Path(release).resolve()
    settings = settings or Settings.from_env()
    candidate = release_path(settings.release_dir, release)
    if "://" in candidate:
        raise ReleaseError(f"release {release!r} lives in {candidate}; exploring needs a local copy (download it first)")
    if not os.path.isdir(candidate):
        raise ReleaseError(f"no release {release!r}: neither a directory nor an id under {settings.release_dir}")
    return Path(candidate).resolve()


def open_release(path: str | Path, release_id: str | None = None) -> Release:
    """Discover and check the shards of a release (or a worker output dir). `release_id` names a
    staged release, whose manifest (and so its id) is only written when it is published."""
    root = Path(path)
    manifest_path = root / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if (root / "img_emb").is_dir():
        groups = [("", root)]
    elif (root / RELEASE_EMBEDDINGS_DIR).is_dir():
        names = [p.name for p in (root / RELEASE_EMBEDDINGS_DIR).iterdir() if (p / "img_emb").is_dir()]
        ordered = [s for s in SUBSETS if s in names] + sorted(n for n in names if n not in SUBSETS)
        groups = [(name, root / RELEASE_EMBEDDINGS_DIR / name) for name in ordered]
    else:
        groups = []
    shards = [shard for subset, base in groups for shard in _shards(subset, base)]
    if not shards:
        raise ReleaseError(f"{root} holds no embeddings: expected img_emb/ or embeddings/<subset>/img_emb/ (clip-retrieval layout)")
    release_id = release_id or (manifest or {}).get("release_id") or root.name
    return Release(root, str(release_id), tuple(shards), manifest)


def _shards(subset: str, base: Path) -> list[Shard]:
    found: dict[str, dict[int, Path]] = {kind: {} for kind in EMBEDDING_KINDS}
    for kind in found:
        folder = base / kind
        for p in folder.iterdir() if folder.is_dir() else ():
            number = embedding_shard_number(kind, p.name)
            if number is not None:
                found[kind][number] = p
    numbers = sorted(found["img_emb"])
    for kind in ("text_emb", "metadata"):
        if sorted(found[kind]) != numbers:
            raise ReleaseError(f"{base}: {kind} shards {sorted(found[kind])} do not match img_emb shards {numbers}")
    shards = []
    for n in numbers:
        shard = Shard(subset, n, found["img_emb"][n], found["text_emb"][n], found["metadata"][n])
        rows = {
            "img_emb": _npy_shape(shard.img_emb)[0],
            "text_emb": _npy_shape(shard.text_emb)[0],
            "metadata": pq.ParquetFile(shard.metadata).metadata.num_rows,
        }
        if len(set(rows.values())) != 1:
            raise ReleaseError(f"{base} shard {n}: row counts differ {rows}; row i must describe the same pair everywhere")
        shards.append(shard)
    return shards


def _npy_shape(path: Path) -> tuple[int, ...]:
    return np.load(path, mmap_mode="r").shape


class EmbeddingMatrix:
    """The concatenation of npy shards as one (N, D) matrix, memory-mapped, read as float32."""

    def __init__(self, files: list[Path]):
        self.parts = [np.load(f, mmap_mode="r") for f in files]
        dims = {p.shape[1] for p in self.parts if p.ndim == 2}
        if any(p.ndim != 2 for p in self.parts) or len(dims) != 1:
            raise ReleaseError(f"embedding shards must be 2-D with one dimension, got {[p.shape for p in self.parts]}")
        self.dim = dims.pop()
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.n = int(self.offsets[-1])

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows by global id (any order, repeats allowed) as float32."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.parts) == 1:
            return np.asarray(self.parts[0][ids], dtype=np.float32)
        out = np.empty((len(ids), self.dim), np.float32)
        part_of = np.searchsorted(self.offsets, ids, side="right") - 1
        for p in np.unique(part_of):
            mask = part_of == p
            out[mask] = self.parts[p][ids[mask] - self.offsets[p]]
        return out

    def chunks(self, rows: int = 65_536):
        """(first id, float32 block) over the whole matrix, one block in memory at a time."""
        for part, start in zip(self.parts, self.offsets[:-1]):
            for lo in range(0, len(part), rows):
                yield int(start + lo), np.asarray(part[lo : lo + rows], dtype=np.float32)


def write_metadata_file(release: Release, out: Path) -> int:
    """All metadata shards, in global row order, as one uncompressed Arrow IPC file (memory-mappable).

    Column names follow clip-retrieval: `caption` (a worker's `text` is renamed); a published
    release gets a `subset` column. Returns the row count.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + f".{os.getpid()}.part")
    schema, rows = None, 0
    writer = None
    try:
        for shard in release.shards:
            table = pq.read_table(shard.metadata)
            if "caption" not in table.column_names and "text" in table.column_names:
                table = table.rename_columns(["caption" if c == "text" else c for c in table.column_names])
            if shard.subset:
                table = table.append_column("subset", pa.array([shard.subset] * table.num_rows, pa.string()))
            if schema is None:
                schema = table.schema.remove_metadata()
                writer = pa.ipc.new_file(str(partial), schema)
            try:
                table = table.select(schema.names).cast(schema)
            except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ReleaseError(f"{shard.metadata}: columns differ from the first shard's {schema.names}: {exc}") from exc
            for batch in table.to_batches(max_chunksize=65_536):
                writer.write_batch(batch)
            rows += table.num_rows
        writer.close()
        writer = None
        partial.replace(out)
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    return rows


class MetadataStore:
    """Row lookups in the memory-mapped metadata file: only the touched pages are read.

    A query wants ~10 rows scattered over the file. pyarrow's take + to_pylist per record batch cost
    ~0.5 ms per touched batch (6 ms a query at 1M rows), so values are read one by one straight from
    the Arrow buffers instead (string offsets + bytes, numeric arrays), all still memory-mapped.
    """

    def __init__(self, path: Path):
        if not path.is_file():
            raise ReleaseError(f"{path} is missing: run `altlake index --release ...` first")
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        self.batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        self.offsets = np.cumsum([0] + [b.num_rows for b in self.batches])
        self.n = int(self.offsets[-1])
        self.columns = reader.schema.names
        self._views: dict[tuple[int, str], _ColumnView] = {}  # built on first touch: a huge file has many batches

    def take(self, ids: np.ndarray, columns: list[str] | None = None) -> list[dict]:
        names = self.columns if columns is None else [c for c in columns if c in self.columns]
        return [{name: self._view(b, name).get(local) for name in names} for b, local in self._locate(ids)]

    def rows_with(self, name: str, values: set[str] | pa.Array) -> np.ndarray:
        """Mask over every row: True where column `name` holds one of `values` (vectorised, for
        millions of rows; an arrow array of values is used as it is, never made Python strings)."""
        import pyarrow.compute as pc

        if not len(values) or name not in self.columns:
            return np.zeros(self.n, dtype=bool)
        wanted = values.cast(pa.string()) if isinstance(values, pa.Array) else pa.array(sorted(values), pa.string())
        parts = [pc.is_in(b.column(name).cast(pa.string()), value_set=wanted).to_numpy(zero_copy_only=False) for b in self.batches]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def number_blocks(self, name: str) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float64 values) per record batch of a numeric column, nulls as NaN; nothing
        when the column is absent. One batch in memory at a time, for whole-release statistics."""
        if name not in self.columns:
            return
        for start, batch in zip(self.offsets[:-1].tolist(), self.batches):
            try:
                values = batch.column(name).cast(pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ReleaseError(f"metadata column {name!r} is not numeric ({batch.column(name).type}): {exc}") from exc
            yield start, values.to_numpy(zero_copy_only=False)

    def column(self, name: str, ids: np.ndarray) -> list:
        if name not in self.columns:
            return [None] * len(ids)
        return [self._view(b, name).get(local) for b, local in self._locate(ids)]

    def _locate(self, ids: np.ndarray) -> list[tuple[int, int]]:
        ids = np.asarray(ids, dtype=np.int64)
        batch_of = np.searchsorted(self.offsets, ids, side="right") - 1
        return list(zip(batch_of.tolist(), (ids - self.offsets[batch_of]).tolist()))

    def _view(self, batch: int, name: str) -> "_ColumnView":
        view = self._views.get((batch, name))
        if view is None:
            view = self._views[(batch, name)] = _ColumnView(self.batches[batch].column(name))
        return view


class _ColumnView:
    """One column of one record batch, read value by value from its buffers (no copies, no kernels)."""

    def __init__(self, array: pa.Array):
        self.array, self.offset = array, array.offset
        buffers = array.buffers()
        self.validity = np.frombuffer(buffers[0], np.uint8) if array.null_count and buffers[0] is not None else None
        kind = array.type
        self.strings = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        self.numbers = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        if self.strings:
            self.value_offsets = np.frombuffer(buffers[1], np.int64 if pa.types.is_large_string(kind) else np.int32)
            self.data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
        elif self.numbers:
            self.values = np.frombuffer(buffers[1], kind.to_pandas_dtype())

    def get(self, i: int):
        j = i + self.offset
        if self.validity is not None and not (self.validity[j >> 3] >> (j & 7)) & 1:
            return None
        if self.strings:
            return str(self.data[self.value_offsets[j] : self.value_offsets[j + 1]], "utf-8")
        if self.numbers:
            return self.values[j].item()
        return self.array[i].as_py()  # other types (bool, timestamps, lists): rare in metadata, exact via pyarrow


class Removals:
    """The rows a release's removals addenda list (removals/*.parquet beside its immutable files,
    see spark_jobs.removals), re-read when the addenda change: checked at most every `reload_s`
    seconds, so a served release stops returning removed rows without rebuilding its index."""

    def __init__(self, root: Path, metadata: "MetadataStore", reload_s: float):
        self.folder, self.metadata, self.reload_s = Path(root, REMOVALS_DIR), metadata, reload_s
        self.checked_at, self.seen, self.mask = -math.inf, (), None
        self.refresh()

    def refresh(self) -> np.ndarray | None:
        """The current mask over metadata rows (True: removed), or None when nothing is removed."""
        now = time.monotonic()
        if now - self.checked_at < self.reload_s:
            return self.mask
        self.checked_at = now
        files = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in self.folder.glob("*.parquet"))) if self.folder.is_dir() else ()
        if files != self.seen:
            uids = {uid for name, _ in files for uid in pq.read_table(self.folder / name, columns=["uid"]).column("uid").to_pylist()}
            mask = self.metadata.rows_with("uid", uids)
            self.seen, self.mask = files, mask if mask.any() else None
        return self.mask
