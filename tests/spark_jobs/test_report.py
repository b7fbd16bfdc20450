"""The HTML release report: self-contained plots, the manifest's stage counts, and what an engineer checks
first (every scored row against its threshold, samples, extraction rejects, sizes, licenses, the change)."""

from __future__ import annotations

import base64
import glob
import html
import json
import os
import re
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from altlake.config import Settings
from altlake.schemas import OPT_OUT_SIGNALS, STATUS_MEANINGS
from altlake.stats import RELEASE_STAGES, StageStats, by_name, chain
from spark_jobs.extract import run_extract
from spark_jobs.lake import read_table
from spark_jobs.release import build_release
from spark_jobs.report import main, manifest_stages, render_report, scored_similarity_figure
from spark_jobs.takedowns import TakedownRequest, add_takedowns
from spark_jobs.watgen import generate_wat
from tests.spark_jobs.lakegen import add_candidates, add_scores, candidate, random_unit, result, score_row


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


def _stages_manifest() -> dict:
    """_manifest in today's format: its funnel as the release's stages (altlake.stats)."""
    manifest = {k: v for k, v in _manifest().items() if k != "funnel"}
    return {**manifest, "stages": chain([
        StageStats("scored", 9137, {"page_opted_out": 26, "not_scored": 1100}),
        StageStats("downloaded", 8011, {"timeout": 1200, "http_4xx": 608}),
        StageStats("threshold", 6203, {"below_threshold": 4444}),
        StageStats("exact_dedup", 1759, {"duplicate": 57}),
        StageStats("takedowns", 1702, {"taken_down": 14}),
        StageStats("near_dedup", 1688, marked={"near_duplicate": 41}),
    ])}  # fmt: skip


def test_report_embeds_the_plots_and_each_stages_counts(tmp_path):
    manifest = _stages_manifest()
    page = render_report(manifest)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # stages, three histograms, languages, statuses
    assert len(images) == 6
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "<td>candidates</td><td>9137</td>" in page
    for stage in manifest["stages"]:
        assert f"<td>{RELEASE_STAGES[stage['stage']]}</td><td>{stage['kept']}</td>" in page
        for reason, n in stage["dropped"].items():  # every drop by stage and reason
            assert f"<tr><td>{stage['stage']}</td><td>{reason}</td><td>{n}</td></tr>" in page
    assert "<tr><td>scored</td><td>page_opted_out</td><td>26</td></tr>" in page
    assert "<tr><td>near_dedup</td><td>near_duplicate (marked, kept)</td><td>41</td></tr>" in page
    assert f"<td>timeout: {STATUS_MEANINGS['timeout']}</td><td>1200</td>" in page  # each status says what it means
    assert "<td>en</td><td>0.280</td>" in page and "<td>pairs</td><td>1688</td>" in page

    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    assert main([str(path), str(tmp_path / "report.html")]) == 0
    assert (tmp_path / "report.html").read_text() == page  # deterministic: same manifest, same page


def test_a_manifest_from_before_format_4_renders_its_funnel_as_stages():
    old = _manifest()  # a funnel and statuses, no stages
    stages = manifest_stages(old)
    assert [s["stage"] for s in stages] == list(RELEASE_STAGES)
    assert [s["kept"] for s in stages] == [8011, 6203, 1759, 1702, 1688, 1688]
    assert stages[1]["dropped"] == {"http_4xx": 608, "timeout": 1200} and stages[-1]["marked"] == {"near_duplicate": 41}
    page = render_report(old)
    assert f"<td>{RELEASE_STAGES['threshold']}</td><td>1759</td>" in page
    assert "<tr><td>exact_dedup</td><td>duplicate</td><td>57</td></tr>" in page


def _full_manifest() -> dict:
    """The old test manifest plus every section the report gained (values chosen so each is checkable)."""
    edges = [round(i / 100, 6) for i in range(101)]
    en_below, en_above, other_below, other_above = [0] * 100, [0] * 100, [0] * 100, [0] * 100
    en_below[20], en_below[27], en_above[28], en_above[40] = 900, 300, 250, 50
    other_below[10], other_above[26], other_above[30] = 400, 80, 20
    sample = {"uid": "u1", "url": "https://a.org/x.jpg?a=1&b=2", "text": "a <b>red</b> bike " + "x" * 300,
              "language": "en", "similarity": 0.2791, "threshold": 0.28}  # fmt: skip
    return {
        **_manifest(),
        "scored_similarity": {"edges": edges, "groups": {
            "en": {"threshold": 0.28, "below": en_below, "above": en_above},
            "other": {"threshold": 0.26, "below": other_below, "above": other_above},
        }},
        "samples": {"kept": [{**sample, "uid": "u2", "similarity": 0.31}], "rejected": [], "near_threshold": [sample]},
        "extraction": {"crawl_files_version": 3, "files_done": 2, "files_failed": 1, "raw_pairs": 50, "kept_pairs": 30,
                       "rejected": {"not_http": 4, "text_too_short": 16, "taken_down": 0}},
        "sizes": {"edges": [0, 128, 256], "width": [1, 2, 3], "height": [4, 5, 6]},
        "signals_honoured": {
            "signals": {"meta_robots": {"meaning": "the page says noai", "rows": 12}, "x_robots_tag": {"meaning": "the header says noai", "rows": 5}},
            "robots_txt": {"rule": "RFC 9309 (Protego)", "rows": 31}, "ai_crawler_tokens": ["CCBot", "GPTBot"],
            "takedown_hash_matches": 2, "takedown_requests": {"domain": 3, "sha256": 40},
        },
        "licenses": [[None, 7], ["https://creativecommons.org/licenses/by/4.0/", 2]],
        "previous": {"release_id": "20240401-0000000000", "created_at": "2024-04-01T00:00:00+00:00", "pairs": [1600, 1688],
                     "added": 120, "removed": 32, "subsets": {"en": [950, 1001], "multi": [575, 612], "nolang": [75, 75]},
                     "statuses": {"ok": [6000, 6203], "timeout": [1300, 1200]}, "languages": [["de", 380, 400]]},
        "profiles": {"vit-l14": {"ok_rows": 6203, "models": {"clip_model": ["ViT-L-14@openai"]},
                                 "thresholds": {"en": 0.28, "other": 0.2600001}}},
        "derived_subsets": {
            "aesthetic": {"filter": "aesthetic >= 5.0", "aesthetic_min": 5.0, "preset": "5plus", "rows": 640, "file": "subsets/aesthetic.parquet"},
            "research-safe": {"filter": "punsafe IS NOT NULL AND punsafe <= 0.5", "max_punsafe": 0.5, "rows": 1500, "file": "subsets/research-safe.parquet"},
        },
    }  # fmt: skip


def test_scored_similarity_counts_rejected_rows_and_marks_each_groups_threshold():
    import matplotlib

    matplotlib.use("Agg")
    section = _full_manifest()["scored_similarity"]
    figure = scored_similarity_figure(section)
    (en, other) = figure.axes
    for axis, threshold, total in ((en, 0.28, 1500), (other, 0.26, 500)):
        (line,) = axis.lines
        assert list(line.get_xdata()) == [threshold, threshold]
        assert sum(bar.get_height() for bar in axis.patches) == total  # the rejected rows are drawn too
        low, high = axis.get_xlim()
        assert low < threshold < high
    assert en.get_xlim() == pytest.approx((0.19, 0.42))  # zoomed to the bins holding rows

    page = render_report(_full_manifest())
    assert "<tr><td>en</td><td>0.280</td><td>1500</td><td>1200</td><td>300</td></tr>" in page
    assert "<tr><td>other</td><td>0.260</td><td>500</td><td>400</td><td>100</td></tr>" in page
    assert "Not recorded" not in page
    assert page.count("data:image/png;base64,") == 6  # the scored histogram replaces the kept-only one


def test_samples_extraction_sizes_licenses_and_change_are_rendered():
    page = render_report(_full_manifest())
    url = "https://a.org/x.jpg?a=1&amp;b=2"
    caption = "a &lt;b&gt;red&lt;/b&gt; bike " + "x" * (200 - len("a <b>red</b> bike ") - 1) + "\u2026"
    assert f'<img src="{url}" alt="{caption}"' in page  # the caption is the offline fallback
    assert f"<figcaption>{caption}<br><b>similarity 0.279</b> &lt; 0.280 (en)</figcaption>" in page
    assert "<b>similarity 0.310</b> &ge; 0.280" in page
    assert "<h3>rejected by the similarity threshold</h3><div class=\"samples\">none</div>" in page
    assert "<tr><th>reject reason</th><th>pairs dropped</th></tr><tr><td>text_too_short</td><td>16</td></tr><tr><td>not_http</td><td>4</td></tr>" in page
    assert "<td>WAT files failed</td><td>1</td>" in page and "crawl_files version 3" in page
    assert "<tr><td>0-127</td><td>1</td><td>4</td></tr><tr><td>128-255</td><td>2</td><td>5</td></tr><tr><td>&gt;= 256</td><td>3</td><td>6</td></tr>" in page
    assert "<td>none: no Creative Commons link on the page</td><td>7</td>" in page
    assert "<tr><td>meta_robots</td><td>the page says noai</td><td>12</td></tr>" in page
    assert "<tr><td>robots.txt</td><td>RFC 9309 (Protego)</td><td>31</td></tr>" in page
    assert "AI-crawler tokens honoured: CCBot, GPTBot. Takedown requests in force: 3 domain, 40 sha256." in page
    assert "<td>pairs added</td><td>120</td>" in page and "<td>pairs removed</td><td>32</td>" in page
    assert "<tr><td>pairs</td><td>1600</td><td>1688</td><td>+88</td></tr>" in page
    assert "<tr><td>status timeout</td><td>1300</td><td>1200</td><td>-100</td></tr>" in page
    assert "<tr><td>language de</td><td>380</td><td>400</td><td>+20</td></tr>" in page
    assert "First release" not in page
    assert "<td>profile: vit-l14</td><td>6203 ok rows, thresholds en 0.280, other 0.260</td>" in page  # which models scored it
    assert "<tr><td>aesthetic</td><td>640</td><td>aesthetic &gt;= 5.0</td><td>subsets/aesthetic.parquet</td></tr>" in page
    assert "<tr><td>research-safe</td><td>1500</td><td>punsafe IS NOT NULL AND punsafe &lt;= 0.5</td>" in page
    # Self-contained: plots inline, links relative; only the sample images point at their sources.
    assert "<script" not in page and "<link" not in page
    external = {u for u in re.findall(r'(?:src|href)="([^"]+)"', page) if not u.startswith("data:image/png;base64,")}
    assert external == {url, "manifest.json", "parquet/", "embeddings/", "gx/"}

    first = render_report({**_full_manifest(), "previous": None})
    assert "First release: the registry holds no earlier release." in first


def test_a_manifest_from_before_the_new_sections_still_renders():
    page = render_report(_manifest())
    assert page.count("Not recorded in this manifest") == 7  # signals, extraction, change, samples, sizes, licenses, derived subsets
    assert page.count("data:image/png;base64,") == 6  # the kept similarity histogram stands in


def test_the_aesthetic_histogram_is_drawn_or_the_page_says_why_not():
    rated = {**_manifest()}
    rated["histograms"] = {**rated["histograms"], "aesthetic": {"edges": [1 + 0.5 * i for i in range(19)], "counts": [0] * 8 + [4, 9, 2] + [0] * 7}}
    page = render_report(rated)
    assert page.count("data:image/png;base64,") == 7 and "aesthetic: " not in page
    # Scored without an aesthetic head: every count is zero, and the page says so instead of an empty plot.
    unrated = {**rated, "histograms": {**rated["histograms"], "aesthetic": {**rated["histograms"]["aesthetic"], "counts": [0] * 18}}}
    page = render_report(unrated)
    assert page.count("data:image/png;base64,") == 6 and "aesthetic: no kept pair has one (scored without an aesthetic head)" in page
    assert "aesthetic: not recorded in this manifest" in render_report(_manifest())  # a release from before the score


# --- from a real extraction through two real release builds -------------------------------------


@pytest.fixture(scope="module")
def two_releases(tmp_path_factory):
    """Extract a generated WAT, score its candidates (some below, some above the thresholds), release;
    then take one kept and one rejected pair down (by image hash), add one new pair, and release again."""
    from spark_jobs.session import get_spark

    root = tmp_path_factory.mktemp("report")
    settings = Settings.from_env(lake_dir=str(root / "lake"), release_store=str(root / "releases"), spark_master="local[2]",
                                 spark_shuffle_partitions=2)  # fmt: skip
    spark = get_spark(settings, app_name="altlake-tests")
    wat = str(generate_wat(root / "a.warc.wat.gz", 12, gzip=True, seed=5, image_base="http://img-report.test").path)
    extracted = run_extract(settings, "CC-MAIN-2024-10", [wat], spark=spark)
    candidates = sorted((r.asDict() for r in read_table(spark, settings, "candidates").collect()), key=lambda r: r["uid"])
    rng = np.random.default_rng(3)
    scores = []
    for i, c in enumerate(candidates):
        status = "timeout" if i % 9 == 0 else "opted_out" if i % 9 == 4 else "ok"
        # 0.105 ... 0.465: never exactly on a threshold, where float32 storage would decide the side
        res = result(c["uid"], c["url"], status, round(0.105 + (i % 10) * 0.04, 3), seed=i)
        if status == "opted_out":  # as the worker writes it: the signal, then its detail
            res["error"] = "x_robots_tag: noai"
        scores.append(score_row(res, random_unit(rng), random_unit(rng)) if status == "ok" else score_row(res, None, None))
    add_scores(spark, settings, scores)
    first = build_release(spark, settings, date="20240501")

    kept = sorted(r["uid"] for r in read_table(spark, settings, "pairs").collect())
    ok = {s["uid"]: s for s in scores if s["status"] == "ok"}
    language = {c["uid"]: c["language"] for c in candidates}
    rejected = sorted(u for u, s in ok.items() if s["similarity"] < (0.28 if language[u] == "en" else 0.26))
    gone = [ok[kept[0]], ok[rejected[0]]]
    add_takedowns(spark, settings, [TakedownRequest("sha256", s["sha256"], "owner request") for s in gone])
    new = candidate("https://new.example/1.jpg", "a pair from a newer crawl", crawl="CC-MAIN-2024-18")
    add_candidates(spark, settings, [new])
    add_scores(spark, settings, [score_row(result(new["uid"], new["url"], "ok", 0.5, seed=999), random_unit(rng), random_unit(rng))])
    second = build_release(spark, settings, date="20240502")
    releases = []
    for summary in (first, second):
        with open(os.path.join(summary["location"], "manifest.json")) as f:
            manifest = json.load(f)
        with open(os.path.join(summary["location"], "report.html")) as f:
            releases.append((manifest, f.read(), summary["location"]))
    return extracted, candidates, scores, gone, releases


def test_release_report_counts_every_scored_row_against_its_threshold(two_releases):
    _, candidates, scores, _, ((manifest, report, _), _) = two_releases
    language = {c["uid"]: c["language"] for c in candidates}
    expected = {"en": [0, 0], "other": [0, 0]}  # [below, at or above]
    for s in scores:
        if s["status"] == "ok":
            group = "en" if language[s["uid"]] == "en" else "other"
            expected[group][s["similarity"] >= (0.28 if group == "en" else 0.26)] += 1
    groups = manifest["scored_similarity"]["groups"]
    assert {name: [sum(g["below"]), sum(g["above"])] for name, g in groups.items()} == expected
    assert expected["en"][0] > 0 and expected["other"][0] > 0  # rejected rows are in the histogram
    stages = by_name(manifest["stages"])
    assert sum(map(sum, expected.values())) == stages["downloaded"].kept
    assert sum(e[1] for e in expected.values()) == stages["threshold"].kept
    assert (groups["en"]["threshold"], groups["other"]["threshold"]) == (0.28, 0.26)
    for name, (below, above) in expected.items():
        threshold = "0.280" if name == "en" else "0.260"
        assert f"<tr><td>{name}</td><td>{threshold}</td><td>{below + above}</td><td>{below}</td><td>{above}</td></tr>" in report


def test_release_report_shows_samples_extraction_rejects_sizes_and_licenses(two_releases):
    extracted, candidates, scores, _, ((manifest, report, location), _) = two_releases
    samples = manifest["samples"]
    assert len(samples["rejected"]) == 4 and all(s["similarity"] < s["threshold"] for s in samples["rejected"])
    assert len(samples["kept"]) == 4 and all(s["similarity"] >= s["threshold"] for s in samples["kept"])
    language = {c["uid"]: c["language"] for c in candidates}
    distances = sorted(abs(s["similarity"] - (0.28 if language[s["uid"]] == "en" else 0.26)) for s in scores if s["status"] == "ok")
    assert [round(abs(s["similarity"] - s["threshold"]), 5) for s in samples["near_threshold"]] == [round(d, 5) for d in distances[:4]]
    for sample in samples["kept"] + samples["rejected"] + samples["near_threshold"]:
        assert f'<img src="{html.escape(sample["url"])}" alt="{html.escape(sample["text"])}"' in report

    rules = extracted["totals"]["stages"][0]
    assert rules["stage"] == "rules" and manifest["extraction"]["stages"] == [rules] and sum(rules["dropped"].values()) > 0
    for reason, n in rules["dropped"].items():
        assert f"<tr><td>{reason}</td><td>{n}</td></tr>" in report
    assert rules["in"] == extracted["totals"]["raw_pairs"] and rules["kept"] == extracted["totals"]["kept_pairs"]
    assert f"<td>kept as candidates</td><td>{extracted['totals']['kept_pairs']}</td>" in report

    n = sum(manifest["counts"].values())
    assert manifest["sizes"]["width"] == [0, 0, 0, n, 0, 0, 0]  # every image 640 x 480 (lakegen.result)
    assert f"<tr><td>256-511</td><td>0</td><td>{n}</td></tr><tr><td>512-1023</td><td>{n}</td><td>0</td></tr>" in report
    published = [pq.read_table(path).to_pylist() for path in glob.glob(os.path.join(location, "parquet", "*", "*.parquet"))]
    published = [row for part in published for row in part]
    assert {s["uid"] for s in samples["kept"]} <= {row["uid"] for row in published}
    assert not {s["uid"] for s in samples["rejected"]} & {row["uid"] for row in published}
    licenses = Counter(row["license"] for row in published)
    assert dict((license, count) for license, count in manifest["licenses"]) == licenses and len(licenses) > 1
    for license, count in licenses.items():
        assert f"<tr><td>{html.escape(license or 'none: no Creative Commons link on the page')}</td><td>{count}</td></tr>" in report
    assert "First release: the registry holds no earlier release." in report

    # Every opt-out signal with the rows it kept out (the worker's by the first word of its error).
    honoured = manifest["signals_honoured"]
    opted = sum(s["status"] == "opted_out" for s in scores)
    assert opted > 0 and honoured["signals"]["x_robots_tag"]["rows"] == opted
    assert set(honoured["signals"]) == set(OPT_OUT_SIGNALS) and sum(v["rows"] for v in honoured["signals"].values()) == opted
    assert honoured["takedown_requests"] == {} and honoured["robots_txt"]["rows"] == 0
    assert f"<tr><td>x_robots_tag</td><td>{html.escape(OPT_OUT_SIGNALS['x_robots_tag'])}</td><td>{opted}</td></tr>" in report


def test_the_next_release_reports_what_changed(two_releases):
    _, _, _, gone, ((first, _, _), (second, report, _)) = two_releases
    previous = second["previous"]
    assert previous["release_id"] == first["release_id"]
    assert (previous["added"], previous["removed"]) == (1, 1)  # the new pair in, the taken-down kept pair out
    before, after = sum(first["counts"].values()), sum(second["counts"].values())
    assert previous["pairs"] == [before, after] and before == after
    assert "<td>pairs added</td><td>1</td>" in report and "<td>pairs removed</td><td>1</td>" in report
    assert f"<tr><td>pairs</td><td>{before}</td><td>{after}</td><td>+0</td></tr>" in report
    ok = first["statuses"]["ok"]
    assert f"<tr><td>status ok</td><td>{ok}</td><td>{ok + 1}</td><td>+1</td></tr>" in report
    shown = {s["uid"] for kind in second["samples"].values() for s in kind}
    assert gone[1]["uid"] in {s["uid"] for s in first["samples"]["rejected"]}  # the first release showed it...
    assert not shown & {s["uid"] for s in gone}  # ...taken down, it is never shown again
    assert second["signals_honoured"]["takedown_requests"] == {"sha256": 2}  # the two hash requests in force
