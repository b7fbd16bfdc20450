"""One served release, and a clip back query against it end to end.

Order of work for /knn-service, as clip back does it: embed the query (steered toward an aesthetic
rating when asked), take the `num_result_ids` nearest rows, drop what the filters reject (safe mode
by punsafe, the violence detector, duplicate URLs, near-duplicate images by image-embedding cosine
among the results), then return the first `num_images` with their metadata. Every input problem
raises QueryError (a 4xx with a message), never anything else; an option the release cannot honour
is a 422, never silently skipped.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from explore.encoder import QueryEncoder
from explore.errors import QueryError
from explore.index import load_index_info, load_knn, open_metadata
from explore.knn import Knn
from explore.release import Release, Removals, derived_subset_uids, derived_subsets
from explore.signals import AESTHETIC_COLUMN, DEFAULT_AESTHETIC_WEIGHT, rated_images, rating_embeddings, violence_prompts, violent

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
    """The indices, metadata and query encoder of one release, opened memory-mapped, with what
    clip back's options need computed once: the aesthetic rating embeddings (from the release's
    `aesthetic` column), whether any row has a punsafe, and the violence prompts (from its CLIP)."""

    def __init__(self, release: Release, encoder: QueryEncoder | None, options: SearchOptions):
        info = load_index_info(release)
        self.release, self.encoder, self.options, self.info = release, encoder, options, info
        self.name = release.release_id
        self.knn = {modality: load_knn(release, modality, info["indices"][modality]) for modality in ("image", "text")}
        self.metadata = open_metadata(release)
        self.removals = Removals(release.path, self.metadata, options.removals_reload_s)
        self.allowed: np.ndarray | None = None  # a derived subset's view serves only these rows
        self.dim = self.knn["image"].dim
        if encoder is not None and encoder.dim != self.dim:
            raise ValueError(f"{self.name}: the CLIP embeds into {encoder.dim} dims, the index holds {self.dim}")
        if self.metadata.n != self.knn["image"].n:
            raise ValueError(f"{self.name}: {self.metadata.n} metadata rows for {self.knn['image'].n} vectors")
        self.aesthetic = self._ratings(info)
        self.has_punsafe = any(np.isfinite(values).any() for _, values in self.metadata.number_blocks("punsafe"))
        self.violence = violence_prompts(encoder) if encoder is not None else None

    @property
    def rows(self) -> int:
        """Rows this index serves (a derived subset's view: the subset's)."""
        return self.knn["image"].n

    def within(self, subset: str, allowed: np.ndarray) -> Explorer:
        """This release restricted to one of its derived subsets, served as `<release>/<subset>`: the same
        index, metadata and removals behind an allow-mask, so results and counts are the subset's alone."""
        view = copy.copy(self)
        view.name, view.allowed = f"{self.name}/{subset}", allowed
        view.knn = {modality: AllowedKnn(knn, allowed) for modality, knn in self.knn.items()}
        return view

    def subset_views(self) -> list[Explorer]:
        """A view per derived subset the release publishes (none for a release from before them)."""
        return [
            self.within(name, self.metadata.rows_with("uid", derived_subset_uids(self.release, name)))
            for name in derived_subsets(self.release)
        ]

    def _ratings(self, info: dict) -> np.ndarray | None:
        """The rating embeddings `altlake index` stored; averaged here for an index built before it
        stored them (a published release's index is never rebuilt)."""
        if "aesthetic_ratings_file" not in info:
            return rating_embeddings(rated_images(self.metadata, self.knn["image"].embeddings))
        recorded = info["aesthetic_ratings_file"]
        return None if recorded is None else np.load(self.release.path / recorded)

    def check_options(self, aesthetic_score: int | None, safe_mode: bool, hide_violent: bool) -> None:
        """A 422 for an option this release cannot honour, raised before any work on the query."""
        if aesthetic_score is not None and self.aesthetic is None:
            raise QueryError(
                422, f"aesthetic_score: {self.name!r} has no aesthetic scores (no {AESTHETIC_COLUMN!r} column with values), "
                "so results cannot be steered toward a rating; leave aesthetic_score unset",
            )  # fmt: skip
        if safe_mode and not self.has_punsafe:
            raise QueryError(
                422, f"use_safety_model: {self.name!r} has no punsafe scores (built without the safety model), so safe mode "
                "would hide every result; set use_safety_model to false",
            )  # fmt: skip
        if hide_violent and self.violence is None:
            raise QueryError(
                422, f"use_violence_detector: {self.name!r} records no CLIP model to encode the detector's prompts "
                "(an embedding-only release); set use_violence_detector to false",
            )  # fmt: skip

    def steer(self, vector: np.ndarray, aesthetic_score: int | None, aesthetic_weight: float | None) -> np.ndarray:
        """clip back's aesthetic shift: the query plus weight x the rating's embedding, renormalised.
        A weight without a score has nothing to scale (clip-retrieval's front end always sends one)."""
        if aesthetic_score is None:
            return vector
        self.check_options(aesthetic_score, False, False)
        weight = DEFAULT_AESTHETIC_WEIGHT if aesthetic_weight is None else aesthetic_weight
        return unit(vector + weight * self.aesthetic[aesthetic_score])

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
        hide_violent: bool = False,
        hidden: dict[str, int] | None = None,
    ) -> list[dict]:
        """One query's neighbours (best first, -1 padded), filtered, cut to num_images, with metadata.

        `hidden`, when given, receives how many neighbours each filter removed (by filter name).
        """
        self.check_options(None, safe_mode, hide_violent)
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
        if hide_violent:
            apply("violence", ~violent(self.violence, self.knn["image"].embeddings.rows(ids)))
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
        # As clip back omits ids it has no row for: removed rows, and rows outside a derived subset's view.
        ids = [i for i in ids if (removed is None or not removed[i]) and (self.allowed is None or self.allowed[i])]
        return [{"id": i, "metadata": _rename(meta)} for i, meta in zip(ids, self.metadata.take(np.array(ids, dtype=np.int64)))]


class AllowedKnn:
    """A Knn over only the rows of an allow-mask: the search deepens (from the depth expected to hold k
    allowed rows, doubling) until k allowed rows are found or the index is exhausted, so the results
    are those of an index holding only the allowed rows."""

    def __init__(self, knn: Knn, allowed: np.ndarray):
        self.knn, self.allowed = knn, allowed
        self.embeddings, self.kind, self.dim = knn.embeddings, knn.kind, knn.dim
        self.n = int(np.count_nonzero(allowed))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids) as Knn.search gives them, ids limited to allowed rows."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), self.n))
        sims = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if self.n == 0:
            return sims, ids
        depth = min(self.knn.n, k * math.ceil(self.knn.n / self.n))
        while True:
            found_sims, found_ids = self.knn.search(queries, depth)
            complete = True
            for q, row in enumerate(found_ids):
                hits = np.flatnonzero((row >= 0) & self.allowed[np.maximum(row, 0)])[:k]
                sims[q], ids[q] = -np.inf, -1  # a deeper search's list replaces the shallower one
                sims[q, : len(hits)], ids[q, : len(hits)] = found_sims[q, hits], row[hits]
                complete &= len(hits) == k
            if complete or depth >= self.knn.n:
                return sims, ids
            depth = min(self.knn.n, depth * 2)


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
