"""The release report: one self-contained HTML page (plots as base64 PNG) rendered from the manifest.

Everything it shows comes from the manifest (stages, counts, histograms, breakdowns, samples), so the
report never disagrees with the release it describes and can be re-rendered from any manifest:
`python -m spark_jobs.report RELEASE/manifest.json OUT.html`. Sections a manifest predates say so.
Sample images are the one thing not inside the page: a release holds URLs, not image bytes, so
they load from their source when viewed online and fall back to their caption offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys

from altlake.paths import MANIFEST, RELEASE_EMBEDDINGS_DIR, RELEASE_GX_DIR, RELEASE_PARQUET_DIR
from altlake.schemas import STATUS_OK
from altlake.stats import RELEASE_STAGES, StageStats, chain, parse

SAMPLE_KINDS = (
    ("kept", "kept pairs"),
    ("rejected", "rejected by the similarity threshold"),
    ("near_threshold", "nearest the threshold, either side"),
)
CAPTION_CHARS = 200  # alt texts run to 2000 characters; a sample card shows the start
NOT_RECORDED = "<p>Not recorded in this manifest (the release predates this section).</p>"


def _png(figure) -> str:
    """The figure as an <img> tag with the PNG inline (no external files, no timestamps)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _histogram(name: str, histogram: dict) -> str:
    """Kept pairs only (punsafe, pwatermark, aesthetic; similarity in manifests without scored_similarity)."""
    import matplotlib.pyplot as plt

    edges, counts = histogram["edges"], histogram["counts"]
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges, edges[1:])], align="edge")
    axis.set_title(f"{name} (pairs)")
    axis.set_xlabel(name)
    axis.set_ylabel("pairs")
    return _png(figure)


def _aesthetic(histograms: dict) -> str:
    """LAION-Aesthetics' rating of the kept pairs, or why there is none."""
    if "aesthetic" not in histograms:
        return "<p>aesthetic: not recorded in this manifest (the release predates the aesthetic score).</p>"
    if not any(histograms["aesthetic"]["counts"]):
        return "<p>aesthetic: no kept pair has one (scored without an aesthetic head).</p>"
    return _histogram("aesthetic", histograms["aesthetic"])


def _bars(title: str, counts: dict[str, int], horizontal: bool = False) -> str:
    import matplotlib.pyplot as plt

    labels, values = list(counts), list(counts.values())
    figure, axis = plt.subplots(figsize=(6, max(2.5, 0.3 * len(labels)) if horizontal else 3))
    if horizontal:
        axis.barh(labels[::-1], values[::-1])
    else:
        axis.bar(labels, values)
        axis.tick_params(axis="x", rotation=45)
    axis.set_title(title)
    return _png(figure)


def _table(rows: list[tuple], header: tuple[str, ...] | None) -> str:
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    return f"<table>{head}{body}</table>"


def _rounded(value: object) -> object:
    """Thresholds and scores for people: three decimals, not float noise."""
    return f"{value:.3f}" if isinstance(value, float) else value


def _facts(manifest: dict) -> str:
    """What a dataset engineer checks first: when, with which models, gates and index, and where the files are."""
    models = manifest.get("models") or {}
    rows = [("created", manifest.get("created_at", "?")), ("pairs", sum(manifest["counts"].values()))]
    rows += [(f"model: {name}", ", ".join(ids) if isinstance(ids, list) else ids) for name, ids in models.items() if ids]
    rows += [
        (f"profile: {name}", f"{profile.get('ok_rows', '?')} ok rows, thresholds "
         + ", ".join(f"{group} {_rounded(value)}" for group, value in (profile.get("thresholds") or {}).items()))
        for name, profile in (manifest.get("profiles") or {}).items()
    ]  # fmt: skip
    gates = [
        (f"GX gate on {table}", f"{'passed' if gate.get('success') else 'FAILED'}: {gate.get('evaluated', '?')} expectations"
         + (f", failed: {', '.join(map(str, gate['failed']))}" if gate.get("failed") else ""))
        for table, gate in (manifest.get("gx") or {}).items()
    ]  # fmt: skip
    indices = [
        (f"KNN index ({modality})", f"{index.get('kind')} ({index.get('factory')}), {index.get('rows')} rows, recall@10 {_rounded(float(index.get('recall_at_10', 0)))}")
        for modality, index in ((manifest.get("index") or {}).get("indices") or {}).items()
    ]  # fmt: skip
    links = " · ".join(
        f'<a href="{href}">{label}</a>'
        for href, label in (*((f, f) for f in (MANIFEST, f"{RELEASE_PARQUET_DIR}/", f"{RELEASE_EMBEDDINGS_DIR}/")), (f"{RELEASE_GX_DIR}/", f"GX Data Docs ({RELEASE_GX_DIR}/)"))
    )  # fmt: skip
    return _table(rows + gates + indices, None) + f"<p>Files: {links}</p>"


def _visible_range(edges: list[float], counts: list[int], threshold: float) -> tuple[float, float]:
    """Zoom to the bins that hold rows (CLIP similarities crowd into a narrow band), threshold in view."""
    used = [i for i, n in enumerate(counts) if n]
    low = min(edges[used[0]], threshold) if used else threshold
    high = max(edges[used[-1] + 1], threshold) if used else threshold
    step = edges[1] - edges[0]
    return max(edges[0], low - step), min(edges[-1], high + step)


def scored_similarity_figure(section: dict):
    """Every ok row's similarity per threshold group, stacked below / at-or-above the group's threshold
    (a dashed line): the kept-pairs histogram alone hides what the threshold throws away."""
    import matplotlib.pyplot as plt

    edges = section["edges"]
    widths = [b - a for a, b in zip(edges, edges[1:])]
    groups = sorted(section["groups"].items())
    figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3), squeeze=False)
    for axis, (name, group) in zip(axes[0], groups):
        below, above, threshold = group["below"], group["above"], group["threshold"]
        axis.bar(edges[:-1], below, width=widths, align="edge", color="tab:red", label="below: rejected")
        axis.bar(edges[:-1], above, width=widths, align="edge", bottom=below, color="tab:blue", label="at or above")
        axis.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
        axis.set_xlim(*_visible_range(edges, [a + b for a, b in zip(below, above)], threshold))
        axis.set_title(f"{name}: similarity of every scored pair")
        axis.set_xlabel("similarity")
        axis.set_ylabel("pairs")
        axis.legend(fontsize="small")
    return figure


def _scored_similarity(section: dict) -> str:
    rows = [
        (name, _rounded(float(g["threshold"])), sum(g["below"]) + sum(g["above"]), sum(g["below"]), sum(g["above"]))
        for name, g in sorted(section["groups"].items())
    ]
    header = ("threshold group", "threshold", "scored ok rows", "below: rejected", "at or above")
    return _png(scored_similarity_figure(section)) + _table(rows, header)


def _sample(sample: dict) -> str:
    """One card: the image from its source URL (alt text = caption, for offline viewing or a dead link)."""
    text = sample["text"] if len(sample["text"]) <= CAPTION_CHARS else sample["text"][: CAPTION_CHARS - 1] + "\u2026"
    side = "&ge;" if sample["similarity"] >= sample["threshold"] else "&lt;"
    caption, url = html.escape(text), html.escape(sample["url"])
    return (
        f'<figure title="uid {html.escape(sample["uid"])}"><a href="{url}"><img src="{url}" alt="{caption}" loading="lazy" referrerpolicy="no-referrer"></a>'
        f"<figcaption>{caption}<br><b>similarity {sample['similarity']:.3f}</b> {side} {sample['threshold']:.3f}"
        f" ({html.escape(sample['language'])})</figcaption></figure>"
    )


def _samples(samples: dict) -> str:
    intro = "<p>Images load from their source URLs (a release holds no image bytes); offline, each shows its caption instead.</p>"
    cards = {key: "".join(map(_sample, samples[key])) or "none" for key, _ in SAMPLE_KINDS}
    return intro + "".join(f'<h3>{title}</h3><div class="samples">{cards[key]}</div>' for key, title in SAMPLE_KINDS)


def _extraction(extraction: dict) -> str:
    """Pairs the LAION-5B rules dropped in the WATs, before anything became a candidate."""
    if "stages" in extraction:
        rules = StageStats.from_dict(extraction["stages"][0])
    else:  # a manifest from before format 4
        rules = StageStats("rules", extraction["raw_pairs"], extraction["rejected"])
    totals = [
        ("WAT files processed", extraction["files_done"]),
        ("WAT files failed", extraction["files_failed"]),
        ("distinct image + alt-text pairs found", rules.taken),
        ("kept as candidates", rules.kept),
    ]
    reasons = sorted(((r, n) for r, n in rules.dropped.items() if n), key=lambda item: (-item[1], item[0]))
    note = f"<p>Summed per WAT file over crawl_files version {extraction['crawl_files_version']}: a pair found in two WATs counts in each.</p>"
    return _table(totals, None) + _table(reasons, ("reject reason", "pairs dropped")) + note


def _signals(honoured: dict) -> str:
    """Each opt-out signal with the rows it kept out, robots.txt refusals and the takedowns in force."""
    rows = [(name, signal["meaning"], signal["rows"]) for name, signal in honoured["signals"].items()]
    rows.append(("robots.txt", honoured["robots_txt"]["rule"], honoured["robots_txt"]["rows"]))
    rows.append(("takedown hash lists", "the image's sha256 or md5 is on a takedown list, or its PDQ hash is within a request's distance (at merge)", honoured["takedown_hash_matches"]))
    requests = ", ".join(f"{n} {kind}" for kind, n in honoured["takedown_requests"].items()) or "none"
    tokens = ", ".join(honoured["ai_crawler_tokens"])
    note = f"<p>AI-crawler tokens honoured: {html.escape(tokens)}. Takedown requests in force: {html.escape(requests)}.</p>"
    return _table(rows, ("signal", "what it means", "rows kept out")) + note


def _sizes(sizes: dict) -> str:
    edges = sizes["edges"]
    labels = [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f">= {edges[-1]}"]
    return _table(list(zip(labels, sizes["width"], sizes["height"])), ("original side (px)", "width", "height"))


def _licenses(licenses: list[list]) -> str:
    rows = [(license or "none: no Creative Commons link on the page", n) for license, n in licenses]
    return _table(rows, ("license (top 20)", "pairs"))


def _change(previous: dict | None) -> str:
    """What moved since the newest earlier release in the registry."""
    if previous is None:
        return "<p>First release: the registry holds no earlier release.</p>"
    facts = [
        ("previous release", f"{previous['release_id']} ({previous['created_at']})"),
        ("pairs added", previous["added"]),
        ("pairs removed", previous["removed"]),
    ]
    rows = [("pairs", *previous["pairs"])]
    rows += [(f"subset {name}", *counts) for name, counts in sorted(previous["subsets"].items())]
    rows += [(f"status {name}", *counts) for name, counts in sorted(previous["statuses"].items())]
    rows += [(f"language {language}", before, after) for language, before, after in previous["languages"]]
    changes = [(label, before, after, f"{after - before:+d}") for label, before, after in rows]
    return _table(facts, None) + _table(changes, ("rows", "previous", "this release", "change"))


def _derived_subsets(section: dict[str, dict]) -> str:
    """Each derived subset's rows and the filter that defines it (numbers included)."""
    rows = [(name, entry["rows"], entry["filter"], entry["file"]) for name, entry in section.items()]
    return _table(rows, ("derived subset", "pairs", "filter", "file"))


def _section(manifest: dict, key: str, render) -> str:
    """Older manifests still render: a section they predate says so instead of failing."""
    return render(manifest[key]) if key in manifest else NOT_RECORDED


def manifest_stages(manifest: dict) -> list[dict]:
    """The release's stages (altlake.stats); a manifest from before format 4 has them from its funnel."""
    if "stages" in manifest:
        return manifest["stages"]
    funnel, statuses = manifest["funnel"], manifest["statuses"]
    not_ok = {status: n for status, n in statuses.items() if status != STATUS_OK}
    not_ok["ok_without_embeddings"] = statuses.get(STATUS_OK, 0) - funnel["ok"]
    return chain([
        StageStats("scored", funnel["candidates"], {"not_scored": funnel["candidates"] - funnel["scored"]}),
        StageStats("downloaded", funnel["scored"], not_ok),
        StageStats("threshold", funnel["ok"], {"below_threshold": funnel["ok"] - funnel["above_threshold"]}),
        StageStats("exact_dedup", funnel["above_threshold"], {"duplicate": funnel["above_threshold"] - funnel["after_exact_dedup"]}),
        StageStats("takedowns", funnel["after_exact_dedup"], {"taken_down": funnel["after_exact_dedup"] - funnel["after_takedowns"]}),
        StageStats("near_dedup", funnel["after_takedowns"], marked={"near_duplicate": funnel["near_duplicates_marked"]}),
    ])  # fmt: skip


def _stages(stages: list[StageStats]) -> str:
    """Rows left after each stage (a table and bars), then every drop and mark by stage and reason."""
    steps = [("candidates", stages[0].taken)] + [(RELEASE_STAGES.get(s.name, s.name), s.kept) for s in stages]
    reasons = [(s.name, reason, n) for s in stages for reason, n in sorted(s.dropped.items()) if n]
    reasons += [(s.name, f"{flag} (marked, kept)", n) for s in stages for flag, n in sorted(s.marked.items()) if n]
    return (
        _table(steps, ("after stage", "rows"))
        + _bars("stages: candidates to pairs", dict(steps[:-1]), horizontal=True)
        + _table(reasons, ("stage", "dropped or marked, by reason", "rows"))
    )


def render_report(manifest: dict) -> str:
    """The report page for one release manifest."""
    import matplotlib

    from altlake.schemas import STATUS_MEANINGS

    matplotlib.use("Agg")
    stages = parse(manifest_stages(manifest))
    statuses = [(f"{status}: {STATUS_MEANINGS.get(status, '')}", n) for status, n in manifest["statuses"].items()]
    if "scored_similarity" in manifest:
        similarity = _scored_similarity(manifest["scored_similarity"])
    else:  # a manifest from before it: kept pairs only
        similarity = _histogram("similarity", manifest["histograms"]["similarity"])
    sections = [
        f"<h1>altlake release {html.escape(manifest['release_id'])}</h1>",
        _facts(manifest),
        "<h2>Stages: what each kept and dropped</h2>",
        _stages(stages),
        "<h2>Opt-out signals honoured</h2>",
        _section(manifest, "signals_honoured", _signals),
        "<h2>Extraction rejects by reason</h2>",
        _section(manifest, "extraction", _extraction),
        "<h2>Change since the previous release</h2>",
        _section(manifest, "previous", _change),
        "<h2>Subsets</h2>",
        _table(list(manifest["counts"].items()), ("subset", "pairs")),
        "<h2>Derived subsets (every language)</h2>",
        _section(manifest, "derived_subsets", _derived_subsets),
        "<h2>Thresholds</h2>",
        _table([(name, _rounded(value)) for name, value in manifest["thresholds"].items()], ("filter", "value")),
        "<h2>Similarity of every scored pair</h2>",
        similarity,
        "<h2>Samples</h2>",
        _section(manifest, "samples", _samples),
        "<h2>Distributions (kept pairs)</h2>",
        *(_histogram(name, manifest["histograms"][name]) for name in ("punsafe", "pwatermark")),
        _aesthetic(manifest["histograms"]),
        "<h2>Image sizes (kept pairs)</h2>",
        _section(manifest, "sizes", _sizes),
        "<h2>Licenses (kept pairs)</h2>",
        _section(manifest, "licenses", _licenses),
        "<h2>Languages</h2>",
        _bars("pairs per language (top 20)", manifest["languages"]),
        "<h2>Download and scoring outcomes</h2>",
        _bars("scored candidates per status", manifest["statuses"]),
        _table(statuses, ("status: what it means", "rows")),
        "<h2>Sources</h2>",
        _table(list(manifest["sources"].items()), ("Delta table", "version")),
    ]
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
        ".samples{display:flex;flex-wrap:wrap;gap:8px}figure{width:160px;margin:0;font-size:small;overflow-wrap:anywhere}"
        "figure img{width:160px;height:160px;object-fit:contain;background:#eee}"
    )
    return f'<!doctype html><html><head><meta charset="utf-8"><title>altlake {html.escape(manifest["release_id"])}</title><style>{style}</style></head><body>{"".join(sections)}</body></html>'


def write_report(manifest: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_report(manifest))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m spark_jobs.report MANIFEST.json OUT.html", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        write_report(json.load(f), args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
