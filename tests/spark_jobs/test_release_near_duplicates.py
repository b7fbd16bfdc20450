"""Near-duplicate blocking (spark_jobs.release): the bits a band follow the rows so random pairs stay
linear in them, the bands keep the recall, and a crowded bucket compares with its leader only."""

from __future__ import annotations

import math

import numpy as np

from spark_jobs.release import LSH_MAX_BANDS, LSH_PAIRS_PER_ROW, LSH_RECALL, Lsh, choose_lsh, lsh_policy, mark_near_duplicates

DIM = 512
COSINE = 0.96


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _isotropic(n: int, seed: int = 0) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n, DIM)))


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    """CLIP-like: a shared direction plus one of 50 topics plus noise (mean pairwise cosine ~0.35)."""
    rng = np.random.default_rng(seed)
    common, topics, noise = _unit(rng.standard_normal((1, DIM))), _unit(rng.standard_normal((50, DIM))), _unit(rng.standard_normal((n, DIM)))
    return _unit(0.55 * common + 0.45 * topics[rng.integers(0, 50, n)] + 0.6 * noise)


def _random_pairs_per_band(sample: np.ndarray, n_rows: int, bits: int) -> float:
    cosines = (sample @ sample.T)[np.triu_indices(len(sample), 1)]
    together = 1 - np.arccos(np.clip(cosines[cosines < COSINE], -1, 1)) / np.pi
    return n_rows * (n_rows - 1) / 2 * float(np.mean(together**bits))


def test_a_small_release_blocks_as_before_and_a_larger_one_takes_more_bits():
    sample = _isotropic(2000)
    assert choose_lsh(sample, 20, COSINE) == Lsh(16, 16)  # the fixed 16 x 16 every release had
    assert round(Lsh(16, 16).recall(COSINE), 3) == 0.981  # (1 - (1 - (1 - 16.26 / 180)^16)^16
    assert choose_lsh(sample[:0], 0, COSINE) == Lsh(16, 16)
    picks = {n: choose_lsh(sample, n, COSINE) for n in (10_000, 1_000_000, 100_000_000)}
    assert picks[10_000].bits < picks[1_000_000].bits < picks[100_000_000].bits
    for n, lsh in picks.items():
        assert _random_pairs_per_band(sample, n, lsh.bits) <= LSH_PAIRS_PER_ROW * n
        assert _random_pairs_per_band(sample, n, lsh.bits - 1) > LSH_PAIRS_PER_ROW * n or lsh.bits == 16  # the fewest bits that do
        assert lsh.recall(COSINE) >= LSH_RECALL
    # at 16 bits a band, 10^8 random rows would have put ~10^12 random pairs in the buckets
    assert _random_pairs_per_band(sample, 100_000_000, 16) > 1e10


def test_clustered_embeddings_take_more_bits_and_bands_than_isotropic_ones():
    n = 1_000_000
    isotropic, clustered = choose_lsh(_isotropic(2000), n, COSINE), choose_lsh(_clustered(2000), n, COSINE)
    assert clustered.bits > isotropic.bits and clustered.bands > isotropic.bands
    assert _random_pairs_per_band(_clustered(2000, seed=1), n, clustered.bits) < 3 * LSH_PAIRS_PER_ROW * n  # a fresh sample agrees
    capped = choose_lsh(_clustered(2000), 10**10, COSINE)
    assert capped.bands == LSH_MAX_BANDS and capped.recall(COSINE) < LSH_RECALL  # the cap costs recall, which the manifest records


def test_a_manifest_from_before_the_choice_rebuilds_with_16_by_16_every_pair():
    old = {"method": "random-hyperplane LSH, exact cosine within buckets", "bands": 16, "bits": 16, "seed": 20_240_501}
    assert Lsh.from_section(old) == Lsh(16, 16, 20_240_501, None, None)
    assert Lsh.from_section(None) == Lsh(16, 16, 20_240_501, None, None)
    assert Lsh.from_section(Lsh(30, 22).section()) == Lsh(30, 22)
    assert lsh_policy()["max_bucket"] == Lsh(1, 16).max_bucket


def _frame(spark, vectors: np.ndarray, similarity: list[float]):
    rows = [(f"{i:032x}", float(s), vectors[i].astype("<f2").tobytes()) for i, s in enumerate(similarity)]
    return spark.createDataFrame(rows, "uid string, similarity float, img_emb binary")


def _near(df) -> dict[str, str | None]:
    return {r["uid"]: r["near_duplicate_of"] for r in df.collect()}


def test_a_crowded_bucket_links_its_copies_to_the_leader_as_every_pair_would(spark):
    """Twelve re-encodes of one picture (a placeholder) crowd their buckets past max_bucket=5: each
    is compared with the leader only, which finds what comparing every pair finds; a near pair
    elsewhere, at cosine 0.97, is found in its ordinary bucket; an unrelated row stays unmarked."""
    rng = np.random.default_rng(5)
    base = _isotropic(1, seed=9)[0]
    copies = _unit(base + 0.02 * rng.standard_normal((12, DIM)) / math.sqrt(DIM))
    other = _isotropic(1, seed=10)[0]
    away = rng.standard_normal(DIM)
    away -= (away @ other) * other  # orthogonal to `other`: `near` is at cosine 0.97 from it exactly
    near = 0.97 * other + math.sqrt(1 - 0.97**2) * away / np.linalg.norm(away)
    vectors = np.vstack([copies, other, near, _isotropic(6, seed=11)])
    similarity = [0.30 + 0.001 * i for i in range(12)] + [0.33, 0.32] + [0.3] * 6
    df = _frame(spark, vectors, similarity)
    leader = f"{11:032x}"  # the copies' highest similarity

    crowded = _near(mark_near_duplicates(df, COSINE, Lsh(16, 16, max_bucket=5)))
    every_pair = _near(mark_near_duplicates(df, COSINE, Lsh(16, 16, max_bucket=None, sketch_bits=None)))

    assert crowded == every_pair
    assert {crowded[f"{i:032x}"] for i in range(11)} == {leader} and crowded[leader] is None
    assert crowded[f"{13:032x}"] == f"{12:032x}" and crowded[f"{12:032x}"] is None
    assert all(crowded[f"{i:032x}"] is None for i in range(14, 20))
    # told the row count: past max_bucket it still crowds; at most max_bucket rows skip counting bucket sizes, same marks
    assert _near(mark_near_duplicates(df, COSINE, Lsh(16, 16, max_bucket=5), len(vectors))) == crowded
    assert _near(mark_near_duplicates(df, COSINE, Lsh(16, 16, max_bucket=len(vectors)), len(vectors))) == every_pair


def test_the_sketch_drops_only_pairs_far_from_the_cosine(spark):
    """Pairs from cosine 0.95 to 0.97 around 0.96, and unrelated rows: with the sketch, exactly what
    the exact cosine on every bucket pair finds."""
    rng = np.random.default_rng(8)
    bases = _isotropic(40, seed=12)
    cosines = np.linspace(0.95, 0.97, 40)
    away = rng.standard_normal((40, DIM))
    away -= (away * bases).sum(axis=1, keepdims=True) * bases
    partners = cosines[:, None] * bases + np.sqrt(1 - cosines**2)[:, None] * _unit(away)
    vectors = np.vstack([bases, partners, _clustered(200, seed=13)])
    df = _frame(spark, vectors, [0.35] * 40 + [0.3] * 40 + [0.3] * 200)
    assert Lsh(16, 16).sketch_limit(COSINE) < 256 * 0.5 * 0.5  # random rows differ in half their signs

    sketched = _near(mark_near_duplicates(df, COSINE, Lsh(16, 16)))
    exact = _near(mark_near_duplicates(df, COSINE, Lsh(16, 16, sketch_bits=None)))
    assert sketched == exact
    found = [i for i in range(40) if sketched[f"{40 + i:032x}"] == f"{i:032x}"]
    assert len(found) >= 18 and all(cosines[i] >= COSINE - 0.001 for i in found)  # float16 rounding at the edge
