"""The exact search every index is tuned against: the true top k, whatever block or group it lies in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from explore.knn import TOPK_GROUP, exact_topk
from explore.release import EmbeddingMatrix
from tests.explore.conftest import unit_rows


@pytest.mark.parametrize("block_rows", [1_000, 65_536])
def test_exact_topk_finds_the_true_top_k_when_it_crowds_into_one_group_and_straddles_blocks(tmp_path: Path, block_rows: int):
    rng = np.random.default_rng(7)
    dim, k = 32, 10
    rows = unit_rows(rng, 5_003, dim)  # not a multiple of the group: the last columns of a block are no group's
    queries = unit_rows(rng, 40, dim)
    # Query 0's 25 nearest rows sit side by side in one group and across the first block's end: the
    # groups that hold the top k are few, and a group holds more than one of them.
    for i, at in enumerate([*range(3 * TOPK_GROUP, 3 * TOPK_GROUP + 15), *range(995, 1_005)]):
        rows[at] = queries[0] + 0.01 * (i + 1) * rows[at]
    rows[-3:] = queries[1:4]  # and the true best of three queries in the columns past the last whole group
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    paths = []
    for number, part in enumerate(np.array_split(rows.astype(np.float16), [2_500])):  # two shards
        paths.append(tmp_path / f"img_emb_{number}.npy")
        np.save(paths[-1], part)
    matrix = EmbeddingMatrix(paths)

    found = exact_topk(matrix, queries, k, block_rows=block_rows)

    every = queries @ rows.astype(np.float16).astype(np.float32).T
    truth = np.argsort(-every, axis=1, kind="stable")[:, :k]
    assert found.shape == (len(queries), k)
    # the same similarities in the same order (ids may swap only where two rows tie; BLAS may round
    # a product of other shapes in its last bit)
    np.testing.assert_allclose(np.take_along_axis(every, found, axis=1), np.take_along_axis(every, truth, axis=1), rtol=0, atol=1e-6)
    assert set(found[0]) <= {*range(3 * TOPK_GROUP, 3 * TOPK_GROUP + 15), *range(995, 1_005)}
    assert [found[q][0] for q in (1, 2, 3)] == [5_000, 5_001, 5_002]


def test_exact_topk_of_fewer_rows_than_k_returns_every_row_best_first(tmp_path: Path):
    rng = np.random.default_rng(8)
    rows, queries = unit_rows(rng, 6, 16), unit_rows(rng, 3, 16)
    np.save(tmp_path / "img_emb_0.npy", rows.astype(np.float16))

    found = exact_topk(EmbeddingMatrix([tmp_path / "img_emb_0.npy"]), queries, 10)

    every = queries @ rows.astype(np.float16).astype(np.float32).T
    np.testing.assert_array_equal(found, np.argsort(-every, axis=1, kind="stable"))
