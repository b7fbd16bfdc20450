"""bench/images: every candidate does the worker's job (same geometry), and a tiny run reports a
per-stage cost and a quality figure for each library in altlake's own environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.images.methods import geometry
from gpu_workers.images import border_offsets, scaled_size

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("size", [(1024, 683), (683, 1024), (300, 300), (2000, 37)])
def test_the_candidates_use_the_workers_border_geometry(size):
    new_width, new_height, left, top = geometry(*size, 256)
    assert (new_width, new_height) == scaled_size(size, 256, "border")
    assert (left, top) == border_offsets((new_width, new_height), 256, "border")


def test_a_tiny_run_reports_each_stage_and_the_quality(tmp_path):
    out = tmp_path / "images.json"
    methods = "altlake,pillow,simplejpeg+pillow,opencv,opencv-reduced"
    env = {**os.environ, "ALTLAKE_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "bench.images", "--images", "6", "--source-size", "700", "--repeats", "1",
                          "--methods", methods, "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    results = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert list(results) == methods.split(",")
    for method, result in results.items():
        assert result["images"] == 6, method
        ms = result["ms_per_image"]
        assert all(ms[stage] > 0 for stage in ("decode", "resize", "encode")), method
        assert ms["total"] == pytest.approx(ms["decode"] + ms["resize"] + ms["encode"])
        assert 28 < result["psnr_db"] < 70, method  # the same pictures, resampled: close to the reference, not equal
    # a full decode resized by area averaging is nearer the full-size reference than any reduced-scale decode
    assert results["opencv"]["psnr_db"] > max(results[m]["psnr_db"] for m in ("altlake", "pillow", "opencv-reduced"))
    assert "altlake" in run.stdout and "PSNR" in run.stdout
