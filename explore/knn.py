"""The one nearest-neighbour search path: what the index tuner measures is what the service runs.

Exact indices (IndexFlatIP) answer directly. Approximate ones (IVF+PQ) return a shortlist of
`rerank_factor * k` candidates whose true cosine is then computed from the release's own
memory-mapped float16 embeddings, so the similarities a user sees are exact and the ranking loses
only what the shortlist missed. That also means nothing but PQ codes has to stay in RAM.
"""

from __future__ import annotations

import faiss
import numpy as np

from explore.release import EmbeddingMatrix

FLAT = "flat"
IVF_PQ = "ivf_pq"
TOPK_GROUP = 64  # columns a group when exact_topk leaves out whole groups of a block


class Knn:
    """Search one index over one modality's embeddings."""

    def __init__(self, index: faiss.Index, embeddings: EmbeddingMatrix, kind: str, rerank_factor: int = 4):
        if index.ntotal != embeddings.n or index.d != embeddings.dim:
            raise ValueError(f"index ({index.ntotal} x {index.d}) does not match the embeddings ({embeddings.n} x {embeddings.dim})")
        self.index, self.embeddings, self.kind, self.rerank_factor = index, embeddings, kind, rerank_factor
        self.n, self.dim = embeddings.n, embeddings.dim

    def set_nprobe(self, nprobe: int) -> None:
        if self.kind == IVF_PQ:
            faiss.ParameterSpace().set_index_parameter(self.index, "nprobe", int(nprobe))

    def shortlist(self, k: int, rerank_factor: int | None = None) -> int:
        """How many approximate candidates are reranked exactly for a top-k (at this index's factor, or the one given)."""
        return min(self.n, max(k * (rerank_factor or self.rerank_factor), k + 16))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (nq, k), best first; ids are -1 past the end of a short list."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), self.n))
        if self.kind == FLAT:
            return self.index.search(queries, k)
        candidates = self.candidates(queries, self.shortlist(k))
        return best_of(self.exact(queries, candidates), candidates, k)

    def candidates(self, queries: np.ndarray, width: int) -> np.ndarray:
        """The approximate shortlist, (nq, width) ids nearest first by the index; -1 past the end of a short list.
        The first w columns are the shortlist of width w: the tuner measures every width from one search."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), width)[1]

    def exact(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The true cosine of each query with each of its candidates, from the embeddings (-inf for -1)."""
        sims = np.full(candidates.shape, -np.inf, np.float32)
        for q, row in enumerate(candidates):
            found = row >= 0
            if found.any():
                sims[q, found] = self.embeddings.rows(row[found]) @ queries[q]
        return sims


def best_of(sims: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k candidates of highest exact similarity per query, best first (ties in shortlist order); -1 past the end."""
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    best_sims, best_ids = np.take_along_axis(sims, order, axis=1), np.take_along_axis(candidates, order, axis=1)
    best_ids[~np.isfinite(best_sims)] = -1
    return best_sims, best_ids


def exact_topk(embeddings: EmbeddingMatrix, queries: np.ndarray, k: int, block_rows: int = 65_536) -> np.ndarray:
    """Ground-truth ids (nq, k) by brute force over the memory-mapped matrix, one block at a time."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, embeddings.n)
    found_sims, found_ids = [], []
    for start, block in embeddings.chunks(block_rows):
        columns, sims = _top_columns(queries @ block.T, k)
        found_sims.append(sims)
        found_ids.append(columns + start)
    sims, ids = np.concatenate(found_sims, axis=1), np.concatenate(found_ids, axis=1)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1)


def _top_columns(sims: np.ndarray, k: int, group: int = TOPK_GROUP) -> tuple[np.ndarray, np.ndarray]:
    """(columns, similarities), each (nq, at most k), of the k highest similarities of each row, in no
    order. The columns are cut into groups of `group` first and only the k groups of highest maxima are
    ranked: a column of the top k lies in one of them (else k groups each hold a higher one). Ranking
    every column of a 65k-row block was 57% of the tuner's ground truth at 301k rows."""
    rows, width = sims.shape
    whole = width // group * group
    if whole // group <= k:  # too few groups to leave any out
        columns = np.broadcast_to(np.arange(width), sims.shape)
    else:
        maxima = sims[:, :whole].reshape(rows, -1, group).max(axis=2)
        groups = np.argpartition(-maxima, k - 1, axis=1)[:, :k]
        columns = (groups[:, :, None] * group + np.arange(group)).reshape(rows, -1)
        columns = np.hstack([columns, np.broadcast_to(np.arange(whole, width), (rows, width - whole))])
    candidates = np.take_along_axis(sims, columns, axis=1)
    if candidates.shape[1] > k:
        top = np.argpartition(-candidates, k - 1, axis=1)[:, :k]
        columns, candidates = np.take_along_axis(columns, top, axis=1), np.take_along_axis(candidates, top, axis=1)
    return columns, candidates


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k ids that the search returned (LAION's recall@k)."""
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f[:k], t)) for f, t in zip(found, truth))
    return hits / float(truth.size)
