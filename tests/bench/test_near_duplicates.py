"""bench/near_duplicates: its rows carry the promised near copies, and one small run marks the same
rows, each with the same better row, through the release's cells and faiss' exact range search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.near_duplicates.__main__ import NEAR_SHARE, vectors

REPO = Path(__file__).resolve().parents[2]


def test_the_rows_are_unit_vectors_with_near_copies_above_the_cosine():
    v = vectors(1_000, 64)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    cosines = v @ v.T
    np.fill_diagonal(cosines, -1)
    near = (cosines.max(axis=1) >= 0.96).sum()
    # each copy and (usually) its source; random clustered pairs stay far below the cosine
    assert NEAR_SHARE * len(v) <= near <= 2 * NEAR_SHARE * len(v)
    assert np.median(cosines[cosines > -1]) > 0.2  # clustered, not isotropic


@pytest.mark.bench
def test_both_methods_mark_the_same_rows(tmp_path):
    out = tmp_path / "nd.json"
    run = subprocess.run([sys.executable, "-m", "bench.near_duplicates", "--sizes", "2000", "--dim", "128", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["cells", "faiss"]
    assert all(r["same_rows_as_other_methods"] for r in results)
    assert results[0]["marked"] == results[1]["marked"] >= 0.8 * NEAR_SHARE * 2000  # one of each copy and its source
    assert results[0]["cells"] == 1 and results[0]["recall"] == 1.0
