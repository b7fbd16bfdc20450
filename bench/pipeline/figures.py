"""The benchmark's arithmetic and presentation: growth exponents, the disk a size needs, the printed
table and the plot. Pure functions (matplotlib only inside `plot`), so the tests cover them."""

from __future__ import annotations

import math
from pathlib import Path

STAGES = ("extract", "plan", "merge", "release", "takedowns", "sql", "maintain")

# Disk one candidate costs at its peak, measured on --dim 512 and 768 runs (bench/pipeline/README.md):
# WAT shards, candidates, the batch inputs and outputs, scores, pairs, the release (parquet,
# embeddings, subsets, index), the Delta versions a takedown leaves behind and the largest floor's
# scratch. Embedding bytes grow with the dimension, the rest does not.
BYTES_PER_CANDIDATE = 3_000
BYTES_PER_CANDIDATE_PER_DIM = 16
WAT_BYTES_PER_CANDIDATE = 480  # gzipped WAT per candidate (watgen, ~4.9 KB per page, ~10 candidates per page)
SAFETY = 1.5  # the estimate is a floor-to-ceiling guess: never start a size that might fill the disk
RESERVE_BYTES = 2 * 2**30  # left free for everything else on the machine


def growth_exponent(n1: float, t1: float, n2: float, t2: float) -> float | None:
    """k in t ~ n^k between two sizes: 1 is linear, 2 quadratic, near 0 a fixed cost dominating."""
    if min(n1, n2, t1, t2) <= 0 or n1 == n2:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def exponents(points: list[tuple[float, float]]) -> dict[str, float | None]:
    """Growth exponents between consecutive sizes of (rows, seconds) points, keyed "n1->n2"."""
    ordered = sorted(points)
    return {
        f"{int(a)}->{int(b)}": None if (e := growth_exponent(a, ta, b, tb)) is None else round(e, 3)
        for (a, ta), (b, tb) in zip(ordered, ordered[1:])
    }


def disk_estimate(candidates: int, dim: int, wat_cached: bool = False) -> int:
    """Bytes of disk a size needs at its peak (with a safety margin); WAT shards only when not cached."""
    per = BYTES_PER_CANDIDATE + BYTES_PER_CANDIDATE_PER_DIM * dim + (0 if wat_cached else WAT_BYTES_PER_CANDIDATE)
    return int(candidates * per * SAFETY)


def disk_verdict(candidates: int, dim: int, free_bytes: int, wat_cached: bool = False) -> str | None:
    """Why a size cannot run on this disk, or None when it fits."""
    need = disk_estimate(candidates, dim, wat_cached)
    if need + RESERVE_BYTES <= free_bytes:
        return None
    return (f"needs ~{need / 1e9:.1f} GB of disk (estimate with a {SAFETY}x margin, dim {dim}) plus {RESERVE_BYTES / 2**30:.0f} GiB reserve; "
            f"{free_bytes / 1e9:.1f} GB free")  # fmt: skip


def rate(rows: int | None, seconds: float | None) -> float | None:
    return round(rows / seconds, 1) if rows and seconds else None


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(report: dict) -> str:
    """Stage x size: wall, CPU, peak RSS, multiple of the floor, rows/s; then the growth exponents."""
    lines = [f"{'stage':<10} {'size':>9} {'rows':>9} {'wall s':>8} {'CPU s':>8} {'peak MB':>8} {'floor s':>8} {'x floor':>8} {'x fl CPU':>8} {'rows/s':>9}"]
    lines.append("-" * len(lines[0]))
    for stage in STAGES:
        for size, run in report["sizes"].items():
            if "skipped" in run and "stages" not in run:
                continue
            fig = run.get("stages", {}).get(stage)
            if fig is None:
                continue
            if "wall_s" not in fig or "failed" in fig or "skipped" in fig:
                why = fig.get("failed") or fig.get("skipped") or "no figure"
                lines.append(f"{stage:<10} {size:>9} {'':>9} {'FAILED' if 'failed' in fig else 'skipped'}: {why[:110]}")
                continue
            floor = fig.get("floor") or {}
            lines.append(
                f"{stage:<10} {size:>9} {_cell(fig.get('rows'), 'd'):>9} {fig['wall_s']:>8.1f} {fig['cpu_s']:>8.1f} {fig['peak_rss_mb']:>8.0f} "
                f"{_cell(floor.get('wall_s'), '.1f'):>8} {_cell(fig.get('x_floor'), '.2f'):>8} {_cell(fig.get('x_floor_cpu'), '.2f'):>8} "
                f"{_cell(fig.get('rows_per_s'), '.0f'):>9}"
            )
    lines.extend(executor_lines(report))
    lines.extend(maintenance_lines(report))
    lines.extend(storage_lines(report))
    skipped = [f"{size}: {run['skipped']}" for size, run in report["sizes"].items() if "skipped" in run]
    if skipped:
        lines.append("skipped sizes: " + "; ".join(skipped))
    for key, what in (("exponents", "wall time"), ("cpu_exponents", "CPU seconds")):
        if not report.get(key):
            continue
        lines.append(f"growth exponents of {what} (t ~ rows^k between consecutive sizes; floors in brackets):")
        floor_key = key.replace("exponents", "floor_exponents")
        for stage, pairs in report[key].items():
            floors = report.get(floor_key, {}).get(stage, {})
            cells = [f"{span}: {_cell(k, '.2f')}" + (f" [{_cell(floors.get(span), '.2f')}]" if span in floors else "") for span, k in pairs.items()]
            lines.append(f"  {stage:<10} " + ("  ".join(cells) if cells else "-"))
    return "\n".join(lines)


def executor_lines(report: dict) -> list[str]:
    """On a standalone cluster: each stage's CPU and peak memory split between driver and executors."""
    rows = [(stage, size, fig) for stage in STAGES for size, run in report["sizes"].items()
            if "executor_cpu_s" in (fig := run.get("stages", {}).get(stage) or {})]  # fmt: skip
    if not rows:
        return []
    lines = [f"driver and executors ({report['settings'].get('spark_master')}):",
             f"  {'stage':<10} {'size':>9} {'driver CPU s':>13} {'executor CPU s':>15} {'driver MB':>10} {'executor MB':>12}"]  # fmt: skip
    for stage, size, fig in rows:
        lines.append(f"  {stage:<10} {size:>9} {fig['cpu_s'] - fig['executor_cpu_s']:>13.1f} {fig['executor_cpu_s']:>15.1f} "
                     f"{fig['peak_jvm_rss_mb']:>10.0f} {fig['peak_executor_jvm_rss_mb']:>12.0f}")  # fmt: skip
    return lines


def maintenance_lines(report: dict) -> list[str]:
    """Per size that ran `maintain`: each table's files and uncheckpointed commits before -> after, and
    each query's best of its runs before -> after."""
    lines = []
    for size, run in report["sizes"].items():
        fig = run.get("stages", {}).get("maintain") or {}
        if "tables" not in fig:
            continue
        lines.append(f"maintain at {size}: files (commits since checkpoint) before -> after")
        for table, t in fig["tables"].items():
            b, a = t["before"], t["after"] or {}
            lines.append(f"  {table:<12} {b['files']:>6} ({b['commits_since_checkpoint']:>3}) -> {_cell(a.get('files'), 'd'):>6} ({_cell(a.get('commits_since_checkpoint'), 'd'):>3})")
        lines.append("  query seconds, best of its runs, before -> after (first run before -> after):")
        for q in fig["queries"]:
            lines.append(f"  {min(q['before']):>7.2f} -> {min(q['after']):>6.2f}  ({q['before'][0]:.2f} -> {q['after'][0]:.2f})  {q['sql'][:70]}")
    return lines


def storage_lines(report: dict) -> list[str]:
    """Per size: bytes per row of each table and of the release, the release by its parts."""
    lines = []
    for size, run in report["sizes"].items():
        kept = run.get("storage") or {}
        if not kept:
            continue
        cells = [f"{name} {figure['bytes_per_row']:,} B/row" for name, figure in kept.items()]
        parts = kept.get("release", {}).get("bytes_per_row_by_part") or {}
        lines.append(f"storage at {size}: " + ", ".join(cells) + (f" (release: {', '.join(f'{k} {v:,}' for k, v in parts.items())})" if parts else ""))
    return lines


def plot(report: dict, path: Path) -> None:
    """Log-log time against candidates, one colour per stage, its floor dashed in the same colour:
    wall seconds on the left, CPU seconds of the process tree (steadier on a shared machine) on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, measure, label in zip(axes, ("wall_s", "cpu_s"), ("wall seconds", "CPU seconds (process tree)")):
        for i, stage in enumerate(STAGES):
            points, floors = [], []
            for run in report["sizes"].values():
                figure = run.get("stages", {}).get(stage) or {}
                n = run.get("candidates")
                if n and figure.get(measure) and "failed" not in figure:
                    points.append((n, figure[measure]))
                    floor = figure.get("floor") or {}
                    if floor.get(measure) and "failed" not in floor:
                        floors.append((n, floor[measure]))
            color = colors[i % len(colors)]
            if points:
                ax.plot(*zip(*sorted(points)), "o-", color=color, label=stage)
            if floors:
                ax.plot(*zip(*sorted(floors)), "s--", color=color, alpha=0.7, label=f"{stage} floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("candidates")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, ncol=2)
    settings = report.get("settings", {})
    fig.suptitle(f"altlake pipeline stages vs size (dim {settings.get('dim')}, {report.get('machine', {}).get('cores')} cores; floors dashed)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
