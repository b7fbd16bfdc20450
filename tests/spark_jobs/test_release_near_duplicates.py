"""Near-duplicate search (spark_jobs.release): with its caps lifted every pair at the cosine is
compared in one cell only (the bound is sound at both levels), with them a row visits a bounded number
of cells and still finds nearly every pair, cells are evened out, links are always true, a crowd of
copies is linked to its best row, rows at the edge of the cosine are decided by it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spark_jobs.release import (
    NEAR_CELL_ROWS,
    NEAR_FILTER_SHARE,
    NEAR_PROBES,
    NEAR_SINGLE_CELL_ROWS,
    Blocking,
    Partition,
    best_better_neighbours,
    cell_count,
    mark_near_duplicates,
    route,
)

DIM = 512
COSINE = 0.96
UNCAPPED = 10**6  # probes and coarse probes: every cell the bound allows


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


def _better_and_close(v: np.ndarray, similarity: np.ndarray, uids: list[str], min_cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """Every row against every row: which pairs are at the cosine, and each row's rank (0: the best)."""
    v = _unit(v.astype("<f2").astype(np.float32))  # as stored: float16
    rank = np.empty(len(v), np.int64)
    rank[np.lexsort((np.array(uids), -similarity.astype(np.float32).astype(np.float64)))] = np.arange(len(v))
    return v @ v.T >= min_cosine, rank


def _every_pair(v: np.ndarray, similarity: np.ndarray, uids: list[str], min_cosine: float) -> dict[str, str]:
    """The oracle: every row against every row (the definition, without blocking)."""
    close, rank = _better_and_close(v, similarity, uids, min_cosine)
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
    assert cell_count(1_000_000) * NEAR_CELL_ROWS == 1_000_000 and cell_count(10_000_000) == 10 * cell_count(1_000_000)  # rows a cell: fixed


def _rows_with_copies_around_the_cosine() -> np.ndarray:
    v = _clustered(3_000, seed=1, dim=64)
    return np.vstack([v, *(_with_near_copies(v, 0.05, noise, seed=2)[len(v) :] for noise in (0.1, 0.28, 0.45))])  # cosines ~0.995, 0.96, 0.91


def _close_pairs(v: np.ndarray, home: np.ndarray, min_cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair at the cosine, as (the row with the lower home, the other)."""
    i, j = np.nonzero(np.triu(v @ v.T >= min_cosine, 1))
    return np.where(home[i] <= home[j], i, j), np.where(home[i] <= home[j], j, i)


@pytest.mark.parametrize("min_cosine", [0.9, COSINE, 0.99])
def test_uncapped_every_close_pair_meets_in_exactly_one_cell(min_cosine):
    """Routing alone, no Spark, two levels of cells with their weights: for every pair at the cosine,
    the row with the lower home visits the other's home (or they share one), and no pair is compared
    in two cells."""
    v = _rows_with_copies_around_the_cosine()
    blocking = Blocking.train(v[:1_000], 30)
    assert len(blocking.fine) > 1 and blocking.cells > 20
    home, visits = route(v, blocking, min_cosine, UNCAPPED, UNCAPPED)
    assert len(set(home.tolist())) > 10  # the data really spreads over the cells
    low, high = _close_pairs(v, home, min_cosine)
    assert len(low) > 100
    assert all(home[a] == home[b] or home[b] in set(visits[a].tolist()) for a, b in zip(low, high))
    assert all((visits[a] > home[a]).all() for a in range(len(v)))  # only higher cells: one meeting per pair


def test_a_row_visits_fewer_cells_the_closer_a_near_duplicate_must_be():
    v = _clustered(3_000, seed=1, dim=64)
    blocking = Blocking.train(v[:1_000], 30)
    visited = {c: np.mean([len(x) for x in route(v, blocking, c, UNCAPPED, UNCAPPED)[1]]) for c in (0.9, COSINE, 0.99)}
    home = route(v, blocking, COSINE)[0]
    higher = np.mean(blocking.cells - 1 - home)
    assert visited[0.99] < visited[COSINE] < visited[0.9] <= higher


def test_capped_a_row_visits_at_most_its_probes_and_still_meets_nearly_every_close_pair():
    v = _rows_with_copies_around_the_cosine()
    blocking = Blocking.train(v[:2_000], 60)
    home, uncapped = route(v, blocking, COSINE, UNCAPPED, UNCAPPED)
    _, capped = route(v, blocking, COSINE)
    assert max(len(x) for x in capped) == NEAR_PROBES < max(len(x) for x in uncapped)
    assert all(set(c.tolist()) <= set(u.tolist()) for c, u in zip(capped, uncapped))  # the nearest of the same cells
    low, high = _close_pairs(v, home, COSINE)
    met = [home[a] == home[b] or home[b] in set(capped[a].tolist()) for a, b in zip(low, high)]
    assert len(met) > 100 and np.mean(met) >= 0.97


def test_the_fine_cells_are_evened_out():
    """k-means alone leaves some cells much fuller than others on CLIP-like rows; the cells' weights
    bring the comparisons (a cell's rows squared) down, and every row lands in its own cell."""
    rng = np.random.default_rng(3)
    v = _unit(0.7 * _isotropic(1, seed=4) + 0.6 * _isotropic(40_000, seed=5))  # one topic of CLIP-like rows, as a coarse cell holds
    sample = v[rng.choice(len(v), 1_600, replace=False)]  # 32 a cell, as a release samples
    plain, weighted = Partition.train(sample, 50, rounds=0), Partition.train(sample, 50)
    rows = {name: np.bincount(p.planes(v)[0], minlength=50).astype(float) for name, p in (("plain", plain), ("weighted", weighted))}
    comparisons = {name: (r * r).sum() for name, r in rows.items()}  # what a cell's rows cost: their square
    assert weighted.weights.any() and not plain.weights.any()
    assert comparisons["weighted"] < 0.6 * comparisons["plain"] and rows["weighted"].max() < rows["plain"].max()
    home, to_plane = weighted.planes(v[:100])
    assert (to_plane[np.arange(100), home] == 0).all() and (to_plane >= 0).all()


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


def test_the_projection_filter_finds_the_same_neighbours_as_every_cosine():
    """A cell of CLIP-like rows with copies at cosines around the threshold: with the blocking's
    basis, or any orthonormal one, each row gets the same best better neighbour as from every cosine
    (a projection is never farther apart than its rows)."""
    v = _with_near_copies(_clustered(1_200, seed=12), 0.1, 0.28, seed=13)
    rank = np.random.default_rng(14).permutation(len(v)).astype(np.float32)
    home, visitors = np.arange(0, len(v), 3), np.setdiff1d(np.arange(len(v)), np.arange(0, len(v), 3))
    plain = best_better_neighbours(v[home], v[visitors], rank[home], rank[visitors], COSINE)
    assert 20 < np.isfinite(plain[0]).sum() and 20 < np.isfinite(plain[1]).sum()
    trained = Blocking.train(v[:1_000], 20).basis
    assert trained.shape == (DIM, DIM // NEAR_FILTER_SHARE) and np.allclose(trained.T @ trained, np.eye(DIM // NEAR_FILTER_SHARE), atol=1e-5)
    any_axes = np.linalg.qr(np.random.default_rng(15).standard_normal((DIM, 64)))[0].astype(np.float32)
    for basis in (trained, any_axes):
        filtered = best_better_neighbours(v[home], v[visitors], rank[home], rank[visitors], COSINE, basis)
        assert np.array_equal(filtered[0], plain[0]) and np.array_equal(filtered[1], plain[1])


def test_the_marking_is_what_comparing_every_pair_gives_for_any_number_of_cells(spark):
    """CLIP-like rows with near copies at cosines around the threshold: one cell, and 9 or 40 cells
    with the caps lifted, mark exactly what every row against every row marks; with the caps every
    link made is one of those, and nearly all are made."""
    v = _with_near_copies(_clustered(1_500, seed=6), 0.06, 0.28, seed=7)  # copies at cosine ~0.96
    similarity = np.random.default_rng(8).uniform(0.28, 0.4, len(v)).round(2)  # ties: the smaller uid wins
    df = _frame(spark, v, similarity).cache()
    expected = _every_pair(v, similarity, [f"{i:032x}" for i in range(len(v))], COSINE)
    assert 40 < len(expected) < 150

    for cells in (1, 9, 40):
        marked = mark_near_duplicates(df, COSINE, len(v), cells, probes=UNCAPPED, coarse_probes=UNCAPPED)
        assert abs(marked[1].cells - cells) <= 2 and marked[1].section()["exact"] == (cells == 1)
        assert _near(marked) == expected, cells
    capped = _near(mark_near_duplicates(df, COSINE, len(v), 40))
    close, rank = _better_and_close(v, similarity, [f"{i:032x}" for i in range(len(v))], COSINE)
    assert all(close[int(u, 16), int(w, 16)] and rank[int(w, 16)] < rank[int(u, 16)] for u, w in capped.items())  # every link is true
    assert capped.keys() <= expected.keys() and len(capped) >= 0.95 * len(expected)
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
