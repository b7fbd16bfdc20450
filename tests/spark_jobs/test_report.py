"""The HTML release report: self-contained plots and the manifest's funnel numbers."""

from __future__ import annotations

import base64
import re

from altlake.schemas import STATUS_MEANINGS
from spark_jobs.report import FUNNEL_STEPS, main, render_report


def _manifest() -> dict:
    edges = [i / 4 for i in range(5)]
    return {
        "release_id": "20240501-abcdef0123",
        "funnel": {"candidates": 9137, "scored": 8011, "ok": 6203, "above_threshold": 1759,
                   "after_exact_dedup": 1702, "after_takedowns": 1688, "near_duplicates_marked": 41},
        "counts": {"en": 1001, "multi": 612, "nolang": 75},
        "thresholds": {"en": 0.28, "multi": 0.26, "nolang": 0.26, "near_duplicate_cosine": 0.96},
        "histograms": {name: {"edges": edges, "counts": [3, 5, 7, 2]} for name in ("similarity", "punsafe", "pwatermark")},
        "languages": {"en": 1001, "de": 400, "fr": 212, "nolang": 75},
        "statuses": {"ok": 6203, "timeout": 1200, "http_4xx": 608},
        "sources": {"candidates": 12, "scores": 30, "pairs": 4, "takedowns": 2},
    }  # fmt: skip


def test_report_embeds_the_plots_and_the_funnel(tmp_path):
    manifest = _manifest()
    page = render_report(manifest)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # funnel, three histograms, languages, statuses
    assert len(images) == 6
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    for key, label in FUNNEL_STEPS:
        assert f"<td>{label}</td><td>{manifest['funnel'][key]}</td>" in page
    assert f"<td>{manifest['funnel']['near_duplicates_marked']}</td>" in page
    assert f"<td>timeout: {STATUS_MEANINGS['timeout']}</td><td>1200</td>" in page  # each status says what it means
    assert "<td>en</td><td>0.280</td>" in page and "<td>pairs</td><td>1688</td>" in page

    path = tmp_path / "manifest.json"
    path.write_text(__import__("json").dumps(manifest))
    assert main([str(path), str(tmp_path / "report.html")]) == 0
    assert (tmp_path / "report.html").read_text() == page  # deterministic: same manifest, same page
