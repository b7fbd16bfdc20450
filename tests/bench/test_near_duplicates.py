"""bench/near_duplicates: its rows carry the promised near copies, and small runs measure the
release's cells against faiss' exact range search: one cell marks exactly what faiss marks, and
several cells with their caps find nearly every row, with true links only."""

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


def _run(tmp_path, size: int) -> list[dict]:
    out = tmp_path / f"nd-{size}.json"
    run = subprocess.run([sys.executable, "-m", "bench.near_duplicates", "--sizes", str(size), "--dim", "128", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["cells", "faiss"]
    return results


@pytest.mark.bench
def test_one_cell_marks_what_faiss_marks(tmp_path):
    cells, faiss = _run(tmp_path, 2000)
    assert cells["cells"] == 1 and cells["exact"] and cells["recall"] == cells["same_link"] == 1.0 and cells["false_links"] == 0
    assert cells["marked"] == faiss["marked"] >= 0.8 * NEAR_SHARE * 2000  # one of each copy and its source


@pytest.mark.bench
def test_many_cells_find_nearly_every_row_with_true_links_only(tmp_path):
    cells, faiss = _run(tmp_path, 40_000)
    assert cells["cells"] > 20 and not cells["exact"]
    assert cells["false_links"] == 0 and cells["recall"] >= 0.99 and faiss["marked"] >= 0.8 * NEAR_SHARE * 40_000


def test_the_routing_bench_finds_more_pairs_the_more_cells_a_row_visits(tmp_path):
    """bench.near_duplicates.routing on a small lake: its truth holds every planted copy, a row never
    visits more cells than its cap, and recall rises with the cap to every pair."""
    from bench.near_duplicates import routing

    capped, uncapped = tmp_path / "capped.json", tmp_path / "uncapped.json"
    assert routing.main(["--rows", "30000", "--probes", "1,6", "--dim", "64", "--out", str(capped)]) == 0
    assert routing.main(["--rows", "30000", "--probes", "100000", "--coarse-probes", "100000", "--dim", "64", "--out", str(uncapped)]) == 0
    run = json.loads(capped.read_text())
    assert run["cells"] >= 25 and run["pairs"] >= routing.COPIES * run["rows"]
    (low, default), (every,) = run["results"], json.loads(uncapped.read_text())["results"]
    assert low["visits_per_row"] <= 1 < default["visits_per_row"] <= 6
    assert low["recall"] < default["recall"] <= every["recall"] == 1.0
    assert low["comparisons_per_row"] < default["comparisons_per_row"] < every["comparisons_per_row"]
