"""The release report: one self-contained HTML page (plots as base64 PNG) rendered from the manifest.

Everything it shows comes from the manifest (funnel, counts, histograms, breakdowns), so the
report never disagrees with the release it describes and can be re-rendered from any manifest:
`python -m spark_jobs.report RELEASE/manifest.json OUT.html`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys

FUNNEL_STEPS = (
    ("candidates", "candidates"),
    ("scored", "scored"),
    ("ok", "downloaded and embedded (ok)"),
    ("above_threshold", "similarity above threshold"),
    ("after_exact_dedup", "after exact dedup (url+text, sha256)"),
    ("after_takedowns", "after takedowns = pairs"),
)


def _png(figure) -> str:
    """The figure as an <img> tag with the PNG inline (no external files, no timestamps)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _histogram(name: str, histogram: dict) -> str:
    import matplotlib.pyplot as plt

    edges, counts = histogram["edges"], histogram["counts"]
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges, edges[1:])], align="edge")
    axis.set_title(f"{name} (pairs)")
    axis.set_xlabel(name)
    axis.set_ylabel("pairs")
    return _png(figure)


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


def _table(rows: list[tuple[str, object]], header: tuple[str, str] | None) -> str:
    body = "".join(f"<tr><td>{html.escape(str(a))}</td><td>{html.escape(str(b))}</td></tr>" for a, b in rows)
    head = f"<tr><th>{header[0]}</th><th>{header[1]}</th></tr>" if header else ""
    return f"<table>{head}{body}</table>"


def _rounded(value: object) -> object:
    """Thresholds and scores for people: three decimals, not float noise."""
    return f"{value:.3f}" if isinstance(value, float) else value


def _facts(manifest: dict) -> str:
    """What a dataset engineer checks first: when, with which models, gates and index, and where the files are."""
    models = manifest.get("models") or {}
    rows = [("created", manifest.get("created_at", "?")), ("pairs", sum(manifest["counts"].values()))]
    rows += [(f"model: {name}", ", ".join(ids) if isinstance(ids, list) else ids) for name, ids in models.items() if ids]
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
        for href, label in (("manifest.json", "manifest.json"), ("parquet/", "parquet/"), ("embeddings/", "embeddings/"), ("gx/", "GX Data Docs (gx/)"))
    )  # fmt: skip
    return _table(rows + gates + indices, None) + f"<p>Files: {links}</p>"


def render_report(manifest: dict) -> str:
    """The report page for one release manifest."""
    import matplotlib

    from altlake.schemas import STATUS_MEANINGS

    matplotlib.use("Agg")
    funnel = manifest["funnel"]
    steps = [(label, funnel[key]) for key, label in FUNNEL_STEPS]
    statuses = [(f"{status}: {STATUS_MEANINGS.get(status, '')}", n) for status, n in manifest["statuses"].items()]
    sections = [
        f"<h1>altlake release {html.escape(manifest['release_id'])}</h1>",
        _facts(manifest),
        "<h2>Funnel</h2>",
        _table(steps + [("near-duplicates marked (kept)", funnel["near_duplicates_marked"])], ("step", "rows")),
        _bars("funnel: candidates to pairs", dict(steps), horizontal=True),
        "<h2>Subsets</h2>",
        _table(list(manifest["counts"].items()), ("subset", "pairs")),
        "<h2>Thresholds</h2>",
        _table([(name, _rounded(value)) for name, value in manifest["thresholds"].items()], ("filter", "value")),
        "<h2>Distributions</h2>",
        *(_histogram(name, manifest["histograms"][name]) for name in ("similarity", "punsafe", "pwatermark")),
        "<h2>Languages</h2>",
        _bars("pairs per language (top 20)", manifest["languages"]),
        "<h2>Download and scoring outcomes</h2>",
        _bars("scored candidates per status", manifest["statuses"]),
        _table(statuses, ("status: what it means", "rows")),
        "<h2>Sources</h2>",
        _table(list(manifest["sources"].items()), ("Delta table", "version")),
    ]
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
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
