"""One served release, and a clip back query against it end to end.

Order of work for /knn-service, as clip back does it: embed the query, take the `num_result_ids`
nearest rows, drop what the filters reject (safe mode by punsafe, duplicate URLs, near-duplicate
images by image-embedding cosine among the results), then return the first `num_images` with
their metadata. Every input problem raises QueryError (a 4xx with a message), never anything else.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from explore.encoder import QueryEncoder
from explore.errors import QueryError
from explore.index import load_index_info, load_knn, open_metadata
from explore.release import Release, Removals

# Metadata's own `similarity` (image-text CLIP score) is renamed: in a result, `similarity` is the
# query's, as clip back returns it.
PAIR_SIMILARITY = "clip_similarity"
QUERY_IMAGE_SIDE = 224  # CLIP's usual input side, for checking an image where no model is loaded


@dataclass(frozen=True)
class SearchOptions:
    unsafe_threshold: float = 0.5  # safe mode hides punsafe above this (and unknown punsafe)
    near_duplicate_cosine: float = 0.96  # "hide near-duplicate images" above this image cosine
    max_image_pixels: int = 40_000_000  # query images above this are refused before decoding
    removals_reload_s: float = 30.0  # how often the release's removals addenda are checked for new ones


class Explorer:
    """The indices, metadata and query encoder of one release, opened memory-mapped."""

    def __init__(self, release: Release, encoder: QueryEncoder | None, options: SearchOptions):
        info = load_index_info(release)
        self.release, self.encoder, self.options, self.info = release, encoder, options, info
        self.name = release.release_id
        self.knn = {modality: load_knn(release, modality, info["indices"][modality]) for modality in ("image", "text")}
        self.metadata = open_metadata(release)
        self.removals = Removals(release.path, self.metadata, options.removals_reload_s)
        self.dim = self.knn["image"].dim
        if encoder is not None and encoder.dim != self.dim:
            raise ValueError(f"{self.name}: the CLIP embeds into {encoder.dim} dims, the index holds {self.dim}")
        if self.metadata.n != self.knn["image"].n:
            raise ValueError(f"{self.name}: {self.metadata.n} metadata rows for {self.knn['image'].n} vectors")

    # -- the query vector --
    def query_vector(self, text: str | None, image: bytes | None, embedding: list[float] | None, use_mclip: bool) -> np.ndarray:
        """clip back's precedence: non-empty text, then an image (uploaded or fetched from image_url
        by the caller), then embedding."""
        if text:
            vector = self._require_encoder("text").embed_text(text, use_mclip)
        elif image is not None:  # checked as an image first: a bad upload is named even where no CLIP is recorded
            side = self.encoder.models.image_size if self.encoder else QUERY_IMAGE_SIDE
            picture = load_image(image, self.options.max_image_pixels, side)
            vector = self._require_encoder("image").embed_image(picture)
        elif embedding is not None:
            vector = np.asarray(embedding, dtype=np.float64)
            if vector.shape != (self.dim,):
                raise QueryError(400, f"embedding_input has {vector.size} values; index {self.name!r} expects {self.dim}")
        else:
            raise QueryError(400, "give one of text, image (base64), image_url or embedding_input")
        return unit(vector)

    def _require_encoder(self, what: str) -> QueryEncoder:
        if self.encoder is None:
            raise QueryError(400, f"{what} queries need the release's CLIP model, and {self.name!r} records none; query with embedding_input")
        return self.encoder

    # -- search and filters --
    def knn_search(
        self,
        vector: np.ndarray,
        modality: str,
        num_images: int,
        num_result_ids: int,
        safe_mode: bool,
        hide_duplicate_urls: bool,
        hide_near_duplicates: bool,
    ) -> list[dict]:
        sims, ids = self.knn[modality].search(vector[None, :], max(num_result_ids, num_images))
        return self.results(sims[0], ids[0], num_images, safe_mode, hide_duplicate_urls, hide_near_duplicates)

    def results(
        self,
        sims: np.ndarray,
        ids: np.ndarray,
        num_images: int,
        safe_mode: bool,
        hide_duplicate_urls: bool,
        hide_near_duplicates: bool,
        hidden: dict[str, int] | None = None,
    ) -> list[dict]:
        """One query's neighbours (best first, -1 padded), filtered, cut to num_images, with metadata.

        `hidden`, when given, receives how many neighbours each filter removed (by filter name).
        """
        hidden = {} if hidden is None else hidden
        keep = ids >= 0
        removed = self.removals.refresh()
        if removed is not None:  # taken down since publication: never served, whatever the filters
            keep &= ~removed[np.where(keep, ids, 0)]
        sims, ids = sims[keep], ids[keep]

        def apply(name: str, mask: np.ndarray) -> None:
            nonlocal sims, ids
            hidden[name] = int(len(mask) - np.count_nonzero(mask))
            sims, ids = sims[mask], ids[mask]

        if safe_mode:
            punsafe = np.array([math.nan if p is None else p for p in self.metadata.column("punsafe", ids)], dtype=np.float64)
            apply("unsafe", punsafe <= self.options.unsafe_threshold)  # NaN (unknown) compares False: hidden
        if hide_duplicate_urls:
            seen: set[str] = set()
            apply("duplicate_urls", np.array([not (url in seen or seen.add(url)) for url in self.metadata.column("url", ids)], dtype=bool))
        if hide_near_duplicates and len(ids) > 1:
            apply("near_duplicates", first_of_near_duplicates(self.knn["image"].embeddings.rows(ids), self.options.near_duplicate_cosine))
        sims, ids = sims[:num_images], ids[:num_images]
        return [
            {**_rename(meta), "id": int(i), "similarity": float(s)}
            for meta, i, s in zip(self.metadata.take(ids), ids, sims)
        ]

    def metadata_for(self, ids: list[int]) -> list[dict]:
        bad = [i for i in ids if not 0 <= i < self.metadata.n]
        if bad:
            raise QueryError(400, f"ids out of range for {self.name!r} (0..{self.metadata.n - 1}): {bad[:10]}")
        removed = self.removals.refresh()
        ids = [i for i in ids if removed is None or not removed[i]]  # as clip back omits ids it has no row for
        return [{"id": i, "metadata": _rename(meta)} for i, meta in zip(ids, self.metadata.take(np.array(ids, dtype=np.int64)))]


def unit(vector: np.ndarray) -> np.ndarray:
    """L2-normalised float32, refusing vectors that cannot be normalised."""
    vector = np.asarray(vector, dtype=np.float64)
    if not np.all(np.isfinite(vector)):
        raise QueryError(400, "the query embedding contains NaN or infinite values")
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm < 1e-12:
        raise QueryError(400, "the query embedding has zero (or non-finite) length and cannot be normalised")
    return (vector / norm).astype(np.float32)


def decode_base64_image(value: str) -> bytes:
    """Strict base64 (a data: URL prefix is allowed, as browsers produce one)."""
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    try:
        body = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise QueryError(400, f"image is not valid base64: {exc}") from exc
    if not body:
        raise QueryError(400, "image is empty")
    return body


def load_image(body: bytes, max_pixels: int, side: int):
    """Decode a query image -> RGB PIL image whose shorter side is at most `side` (the model's input).

    The worker's limits (format, pixels, side lengths, aspect ratio) are checked on the header
    before any pixel is decoded; a larger picture is decoded at a reduced scale where the format
    allows it and resized to `side`, so CLIP's own preprocessing never enlarges a strip of
    200,000 x 1 pixels into gigabytes.
    """
    from gpu_workers.images import ImageConfig, ImageRejected, decode, read_header

    limits = ImageConfig(min_bytes=1, max_pixels=max_pixels, size=None, resize_mode="no", encode_format=None)
    try:
        header = read_header(body, limits)
        bounded = min(header.width, header.height) > side
        return decode(body, dataclasses.replace(limits, size=side, resize_mode="keep_ratio") if bounded else limits).image
    except ImageRejected as exc:
        raise QueryError(415 if exc.status in ("not_image", "unsupported_format") else 400, f"image rejected: {exc}") from exc


def first_of_near_duplicates(embeddings: np.ndarray, min_cosine: float) -> np.ndarray:
    """Keep mask: a result is dropped when a better-ranked kept result is within `min_cosine`."""
    norms = np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    unit_rows = embeddings / norms
    cosines = unit_rows @ unit_rows.T
    keep = np.ones(len(embeddings), dtype=bool)
    for i in range(1, len(embeddings)):
        if np.any(cosines[i, :i][keep[:i]] >= min_cosine):
            keep[i] = False
    return keep


def _rename(meta: dict) -> dict:
    if "similarity" in meta:
        meta[PAIR_SIMILARITY] = meta.pop("similarity")
    return meta
