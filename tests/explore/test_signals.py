"""Aesthetic rating embeddings and the violence detector's decision, on arrays built by hand."""

from __future__ import annotations

import numpy as np

from explore.signals import RATINGS, rating_embeddings, violent


def _axis(dim: int, i: int, scale: float = 1.0) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = scale
    return v


def test_each_rating_is_the_unit_mean_of_its_rows_and_empty_ratings_borrow_the_nearest():
    # ratings 2 (two rows), 5 and 9 (one row scored 10, clipped; one 9.5, rounded half up); unscored and NaN rows ignored
    scores = np.array([2.2, 1.6, 5.0, 10.0, 9.5, np.nan, np.nan])
    images = np.stack([_axis(4, 0, 2.0), _axis(4, 1), _axis(4, 2), _axis(4, 3), _axis(4, 3), _axis(4, 0), _axis(4, 1)])
    by_rating = rating_embeddings([(scores, images)])
    assert by_rating.shape == (RATINGS, 4) and by_rating.dtype == np.float32
    two = np.array([1, 1, 0, 0]) / np.sqrt(2)  # rows are normalised before averaging: the 2.0 row weighs like the other
    np.testing.assert_allclose(by_rating[2], two, atol=1e-6)
    np.testing.assert_allclose(by_rating[5], _axis(4, 2), atol=1e-6)
    np.testing.assert_allclose(by_rating[9], _axis(4, 3), atol=1e-6)
    for rating, source in {0: 2, 1: 2, 3: 2, 4: 5, 6: 5, 7: 5, 8: 9}.items():  # 7 is 2 from 5 and 9: the lower wins
        np.testing.assert_array_equal(by_rating[rating], by_rating[source])


def test_blocks_give_the_same_embeddings_as_one_pass():
    rng = np.random.default_rng(0)
    scores = rng.uniform(1, 10, 500)
    images = rng.standard_normal((500, 16)).astype(np.float32)
    whole = rating_embeddings([(scores, images)])
    blocks = rating_embeddings((scores[i : i + 64], images[i : i + 64]) for i in range(0, 500, 64))
    np.testing.assert_allclose(whole, blocks, atol=1e-6)


def test_no_scores_means_no_rating_embeddings():
    assert rating_embeddings([]) is None
    assert rating_embeddings([(np.full(3, np.nan), np.eye(3, dtype=np.float32))]) is None


def test_an_image_is_violent_when_nearer_the_violent_row():
    prompts = np.stack([_axis(3, 0), _axis(3, 1)])  # row 0 peaceful, row 1 violent, as clip back's matrix
    images = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.0, 0.0, 1.0], [-0.5, -0.4, 0.0]], np.float32)
    assert violent(prompts, images).tolist() == [False, True, False, True]
    assert violent(prompts, np.zeros((0, 3), np.float32)).tolist() == []
