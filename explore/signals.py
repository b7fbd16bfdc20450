"""clip back's embedding-space query options, made from the release itself.

clip back steers a query toward an aesthetic rating by adding `aesthetic_weight` times that
rating's embedding and renormalising, and hides violent results with a zero-shot prompt matrix;
both come from files LAION published for ViT-B/32 and ViT-L/14 only. Here the rating embeddings
are averaged from the release's own rated images and the prompts are encoded by the release's own
CLIP, so both live in the embedding space the release was built in, whatever its model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from explore.encoder import QueryEncoder
from explore.release import EmbeddingMatrix, MetadataStore

AESTHETIC_COLUMN = "aesthetic"  # LAION-Aesthetics' score column, a float on a 1-10 scale
RATINGS = 10  # clip back's aesthetic_score is a rating 0..9
DEFAULT_AESTHETIC_WEIGHT = 0.5  # clip back needs a weight with a score; ClipClient and its front end send 0.5
# clip back's violence matrix has two rows (peaceful, violent); each row here is the mean of a few prompts.
PEACEFUL_PROMPTS = (
    "a photo",
    "a peaceful everyday scene",
    "a photo of people getting along",
    "a calm landscape",
    "a product photo",
)
VIOLENT_PROMPTS = (
    "a photo of violence",
    "a violent fight between people",
    "a bloody injury",
    "a person attacked with a weapon",
    "a war scene with dead bodies",
)


def rated_images(metadata: MetadataStore, images: EmbeddingMatrix) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(aesthetic scores, image embeddings) one metadata batch at a time: a release larger than RAM
    is averaged without loading it."""
    for start, scores in metadata.number_blocks(AESTHETIC_COLUMN):
        yield scores, images.rows(np.arange(start, start + len(scores)))


def rating_embeddings(blocks: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """(RATINGS, dim) float32: for each rating k, the normalised mean of the unit image embeddings
    whose score rounds (half up) to k; scores above 9.5 join rating 9 and unscored (NaN) rows none.

    `blocks` yields (scores, image embeddings) for consecutive rows, so a release of any size is
    averaged one block at a time. A rating no row has takes the embedding of the nearest rating that
    has rows (the lower one on a tie), so every score clip back accepts steers somewhere sensible.
    None when no row has a score.
    """
    sums, counts = None, np.zeros(RATINGS, np.int64)
    for scores, images in blocks:
        scores = np.asarray(scores, np.float64)
        known = np.isfinite(scores)
        ratings = np.full(len(scores), -1, np.int64)
        ratings[known] = np.clip(np.floor(scores[known] + 0.5), 0, RATINGS - 1)
        images = np.asarray(images, np.float32)
        inverse_norms = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", images, images)), 1e-12)
        # (RATINGS, rows) one-hot weighted by 1/norm: sums of unit rows in one matmul, no normalised copy of the block
        one_hot = (ratings[None, :] == np.arange(RATINGS)[:, None]) * inverse_norms[None, :].astype(np.float32)
        block_sums = (one_hot @ images).astype(np.float64)  # blocks add up in float64
        sums = block_sums if sums is None else sums + block_sums
        counts += np.bincount(ratings[known], minlength=RATINGS)
    if sums is None or not counts.any():
        return None
    rated = np.flatnonzero(counts)
    nearest = rated[np.abs(np.arange(RATINGS)[:, None] - rated[None, :]).argmin(axis=1)]  # argmin: first, the lower, on a tie
    means = sums[nearest]
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def violence_prompts(encoder: QueryEncoder) -> np.ndarray:
    """clip back's violence prompt matrix in the release's space: row 0 peaceful, row 1 violent."""
    rows = []
    for prompts in (PEACEFUL_PROMPTS, VIOLENT_PROMPTS):
        mean = np.mean([encoder.embed_text(p, False) for p in prompts], axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows).astype(np.float32)


def violent(prompts: np.ndarray, images: np.ndarray) -> np.ndarray:
    """clip back's get_violent_items as a mask: an image is violent when it is more similar to the
    violent row than to the peaceful one (the peaceful similarity is each image's threshold)."""
    return np.argmax(np.asarray(images, np.float32) @ prompts.T, axis=1) == 1
