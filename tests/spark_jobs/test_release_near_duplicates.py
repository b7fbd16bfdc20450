"""Near-duplicate search (spark_jobs.release): exact whatever the cells, every pair compared in one
cell only, a crowd of copies linked to its best row, rows at the edge of the cosine decided by it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spark_jobs.release import NEAR_SINGLE_CELL_ROWS, best_better_neighbours, cell_count, centroid_gaps, mark_near_duplicates, route, train_cells

DIM = 512
COSINE = 0.96


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _isotropic(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n, dim)))


def _clustered(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """CLIP-like: a shared direction plus one of 50 topics plus noise (mean pairwise cosine ~0.35)."""
    rng = np.random.default_rng(seed)
    common, topics, noise = _unit(rng.standard_normal((1, dim))), _unit(rng.standard_normal((50, dim))), _unit(rng.standard_normal((n, dim)))
    return _unit(0.55 * common + 0.45 * topics[rng.integers(0, 50, n)] + 0.6 * noise)


def _with_near_copies(v: np.ndarray, share: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sources = rng.choice(len(v), int(len(v) * share))
    return np.vstack([v, _unit(v[sources] + noise * _unit(rng.standard_normal((len(sources), v.shape[1]))))])


def _every_pair(v: np.ndarray, similarity: np.ndarray, uids: list[str], min_cosine: float) -> dict[str, str]:
    """The oracle: every row against every row (the definition, without blocking)."""
    v = _unit(v.astype("<f2").astype(np.float32))  # as stored: float16
    rank = np.empty(len(v), np.int64)
    rank[np.lexsort((np.array(uids), -similarity.astype(np.float32).astype(np.float64)))] = np.arange(len(v))
    close = v @ v.T >= min_cosine
    marks = {}
    for row in range(len(v)):
        better = np.flatnonzero(close[row] & (rank < rank[row]))
        if len(better):
            marks[uids[row]] = uids[better[np.argmin(rank[better])]]
    return marks


def _frame(spark, vectors: np.ndarray, similarity) -> object:
    rows = [(f"{i:032x}", float(s), vectors[i].astype("<f2").tobytes()) for i, s in enumerate(similarity)]
    return spark.createDataFrame(rows, "uid string, similarity float, img_emb binary").repartition(4)


def _near(marked) -> dict[str, str]:
    df, _ = marked
    return {r["uid"]: r["near_duplicate_of"] for r in df.collect() if r["near_duplicate_of"] is not None}


def test_the_cells_follow_the_rows():
    assert cell_count(10) == cell_count(NEAR_SINGLE_CELL_ROWS) == 1
    assert 1 < cell_count(NEAR_SINGLE_CELL_ROWS + 1) < cell_count(1_000_000) < cell_count(10_000_000)
    assert cell_count(1_000_000) == 500  # sqrt(n) / 2: about 2 sqrt(n) rows a cell


@pytest.mark.parametrize("min_cosine", [0.9, COSINE, 0.99])
def test_every_close_pair_meets_in_exactly_one_cell(min_cosine):
    """Routing alone, no Spark: for every pair at the cosine, the row with the lower home visits the
    other's home (or they share one), and no pair is compared in two cells."""
    v = _clustered(3_000, seed=1, dim=64)
    v = np.vstack([v, *(_with_near_copies(v, 0.05, noise, seed=2)[len(v) :] for noise in (0.1, 0.28, 0.45))])  # cosines ~0.995, 0.96, 0.91
    centroids = train_cells(v[:1_000], 30)
    home, visits = route(v, centroids, centroid_gaps(centroids), min_cosine)
    assert len(set(home.tolist())) > 10  # the data really spreads over the cells
    i, j = np.nonzero(np.triu(v @ v.T >= min_cosine, 1))
    assert len(i) > 100
    low, high = np.where(home[i] <= home[j], i, j), np.where(home[i] <= home[j], j, i)
    met = [home[a] == home[b] or home[b] in set(visits[a].tolist()) for a, b in zip(low, high)]
    assert all(met)
    assert all((visits[a] > home[a]).all() for a in range(len(v)))  # only higher cells: one meeting per pair


def test_a_row_visits_fewer_cells_the_closer_a_near_duplicate_must_be():
    v = _clustered(3_000, seed=1, dim=64)
    centroids = train_cells(v[:1_000], 30)
    gaps = centroid_gaps(centroids)
    visited = {c: np.mean([len(x) for x in route(v, centroids, gaps, c)[1]]) for c in (0.9, COSINE, 0.99)}
    home = route(v, centroids, gaps, COSINE)[0]
    higher = np.mean(len(centroids) - 1 - home)
    assert visited[0.99] < visited[COSINE] < visited[0.9] <= higher
    assert visited[COSINE] < 0.5 * higher


def test_within_a_cell_each_row_gets_its_best_better_neighbour():
    v = _with_near_copies(_isotropic(300, seed=3, dim=32), 0.3, 0.2, seed=4)
    rank = np.random.default_rng(5).permutation(len(v)).astype(np.float32)
    home, visitors = np.arange(0, len(v), 2), np.arange(1, len(v), 2)
    best_home, best_visitors = best_better_neighbours(v[home], v[visitors], rank[home], rank[visitors], 0.9)
    close = v @ v.T >= 0.9
    close[np.ix_(visitors, visitors)] = False  # visitors of one cell meet elsewhere
    expected = np.where(close & (rank[None, :] < rank[:, None]), rank[None, :], np.inf).min(axis=1)
    assert np.isfinite(expected).sum() > 20
    assert np.array_equal(best_home, expected[home]) and np.array_equal(best_visitors, expected[visitors])


def test_the_marking_is_what_comparing_every_pair_gives_for_any_number_of_cells(spark):
    """CLIP-like rows with near copies at cosines around the threshold: one cell, 9 cells and 40 cells
    mark exactly what every row against every row marks."""
    v = _with_near_copies(_clustered(1_500, seed=6), 0.06, 0.28, seed=7)  # copies at cosine ~0.96
    similarity = np.random.default_rng(8).uniform(0.28, 0.4, len(v)).round(2)  # ties: the smaller uid wins
    df = _frame(spark, v, similarity).cache()
    expected = _every_pair(v, similarity, [f"{i:032x}" for i in range(len(v))], COSINE)
    assert 40 < len(expected) < 150

    for cells in (1, 9, 40):
        marked = mark_near_duplicates(df, COSINE, len(v), cells)
        assert marked[1].cells == cells and marked[1].section()["recall"] == 1.0
        assert _near(marked) == expected, cells
    df.unpersist()


def test_a_crowd_of_copies_links_each_to_the_best_and_an_edge_pair_is_decided_by_the_cosine(spark):
    """Twelve re-encodes of one picture (a placeholder) each name the one with the highest similarity;
    a pair at cosine 0.97 is found, one at 0.95 is not; unrelated rows stay unmarked."""
    rng = np.random.default_rng(5)
    base = _isotropic(1, seed=9)[0]
    copies = _unit(base + 0.02 * rng.standard_normal((12, DIM)) / math.sqrt(DIM))

    def at_cosine(anchor: np.ndarray, cosine: float) -> np.ndarray:
        away = rng.standard_normal(DIM)
        away -= (away @ anchor) * anchor
        return cosine * anchor + math.sqrt(1 - cosine**2) * away / np.linalg.norm(away)

    near_anchor, far_anchor = _isotropic(2, seed=10)
    vectors = np.vstack([copies, near_anchor, at_cosine(near_anchor, 0.97), far_anchor, at_cosine(far_anchor, 0.95), _isotropic(6, seed=11)])
    similarity = [0.30 + 0.001 * i for i in range(12)] + [0.33, 0.32, 0.33, 0.32] + [0.3] * 6
    leader = f"{11:032x}"  # the copies' highest similarity
    for cells in (1, 3):
        near = _near(mark_near_duplicates(_frame(spark, vectors, similarity), COSINE, len(vectors), cells))
        assert {near[f"{i:032x}"] for i in range(11)} == {leader} and leader not in near
        assert near[f"{13:032x}"] == f"{12:032x}" and f"{12:032x}" not in near
        assert f"{15:032x}" not in near and not any(f"{i:032x}" in near for i in range(16, 22))
        assert len(near) == 12


def test_an_empty_frame_is_marked_with_nothing(spark):
    df = spark.createDataFrame([], "uid string, similarity float, img_emb binary")
    marked, cells = mark_near_duplicates(df, COSINE)
    assert marked.count() == 0 and cells.cells == 1
