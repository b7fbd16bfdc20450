"""`python -m bench.pipeline`: every Spark stage of the pipeline at growing lake sizes, against its floor.

Per size, a fresh lake is made through production code only: the real `altlake extract` on
generated WAT shards, `altlake plan-batches`, worker outputs written by the worker's own writer for
every planned batch, `altlake merge-scores`, `altlake build-release` (gates, files, KNN index),
`altlake takedown add` + `apply` for ~0.1% of the domains, and the README's `altlake sql`
examples, then `altlake maintain` between two timed runs of those queries (files, log commits and
query seconds before and after). Every stage is its own process tree (bench/pipeline/probe.py: wall, CPU of the tree,
peak RSS), next to its floor (bench/pipeline/floors.py: the same Spark reading the stage's inputs
once and writing its output once). With `--master standalone` every stage and floor runs on a Spark
standalone cluster on 127.0.0.1 (bench/pipeline/cluster.py), the executors' CPU and memory measured
apart from the driver's. Results: a table, bench/out/pipeline.json and pipeline.png.

    python -m bench.pipeline [--sizes 10000,100000] [--dim 512] [--stages extract,plan,merge] [--master standalone]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from altlake.config import Settings
from altlake.paths import LakePaths
from altlake.schemas import TABLES
from bench.pipeline import figures, generate
from bench.pipeline.cluster import Cluster, standalone_cluster
from bench.pipeline.queries import README_EXAMPLES

REPO = Path(__file__).resolve().parents[2]
CRAWL = "CC-MAIN-2099-01"
STAGES = figures.STAGES
NEEDS = {"extract": (), "plan": ("extract",), "merge": ("plan",), "release": ("merge",), "takedowns": ("extract",), "sql": ("extract",),
         "maintain": ("extract",)}
FLOORED = ("plan", "merge", "release", "takedowns")
# The tables each stage reads (their active Delta files count as its bytes read).
INPUT_TABLES = {
    "extract": ("candidates", "crawl_files", "takedowns"),
    "plan": ("candidates", "scores", "batches"),
    "merge": ("scores", "batches", "takedowns"),
    "release": ("candidates", "scores", "takedowns", "releases"),
    "takedowns": ("candidates", "scores", "pairs", "takedowns", "releases"),
    "sql": ("crawl_files", "pairs", "candidates", "batches"),
    "maintain": tuple(TABLES),
}


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, not {text!r}")
    return sizes


def parse_stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {unknown}; choose from {','.join(STAGES)}")
    return stages


def with_prerequisites(stages: list[str]) -> list[str]:
    """The stages to run, in pipeline order: those asked for and every stage they need."""
    todo: set[str] = set()
    pending = list(stages)
    while pending:
        stage = pending.pop()
        if stage not in todo:
            todo.add(stage)
            pending.extend(NEEDS[stage])
    return [s for s in STAGES if s in todo]


# --- measuring ---------------------------------------------------------------------------------


def folder_bytes(*folders: Path) -> int:
    """Apparent size of every file under the folders (missing ones count 0)."""
    total = 0
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    continue
    return total


def table_bytes(lake: Path, name: str) -> int:
    """Bytes of a Delta table's current files: what reading it once reads."""
    from deltalake import DeltaTable

    try:
        actions = DeltaTable(str(LakePaths(str(lake)).table(name))).get_add_actions(flatten=True)
    except Exception:  # noqa: BLE001 - a table not created yet reads nothing
        return 0
    return int(sum(actions.column("size_bytes").to_pylist()))


def table_files(lake: Path, name: str) -> dict | None:
    """What a reader of the table opens: its current data files, and the JSON commits it replays after
    the newest checkpoint (None for a table not created yet)."""
    from deltalake import DeltaTable

    log = Path(LakePaths(str(lake)).table(name)) / "_delta_log"
    try:
        files = len(DeltaTable(str(log.parent)).get_add_actions(flatten=True))
    except Exception:  # noqa: BLE001
        return None
    last = log / "_last_checkpoint"
    checkpoint = json.loads(last.read_text())["version"] if last.exists() else -1
    commits = sum(1 for p in log.glob("*.json") if p.stem.isdigit() and int(p.stem) > checkpoint)
    return {"files": files, "commits_since_checkpoint": commits}


def table_rows(lake: Path, name: str, **filters: str) -> int:
    from deltalake import DeltaTable

    try:
        table = DeltaTable(str(LakePaths(str(lake)).table(name))).to_pyarrow_table(columns=["uid", *filters])
    except Exception:  # noqa: BLE001
        return 0
    for column, value in filters.items():
        table = table.filter(pc.equal(table.column(column), value))
    return table.num_rows


def last_error_line(log: Path) -> str:
    """The line of a failed stage's log that says why: an OutOfMemoryError anywhere, else the
    command's own one-line error, else the last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"no log at {log}"
    for line in lines:
        if "OutOfMemoryError" in line:
            return line[:500]
    for line in reversed(lines):
        if line.startswith("altlake ") or "Error" in line or "Exception" in line:
            return line[:500]
    return lines[-1][:500] if lines else "(empty log)"


@dataclass
class SizeRun:
    """One size's lake and how its stages run."""

    size: int
    root: Path
    env: dict[str, str]
    cluster: Cluster | None = None

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def scratch(self) -> Path:
        return self.root / "floor-scratch"

    def probe(self, label: str, command: list[str]) -> dict:
        """Run `command` as its own measured process tree; the probe's figures plus its log."""
        print(f"==> [{self.size}] {label}", file=sys.stderr)
        result_file, log = self.logs / f"{label}.json", self.logs / f"{label}.log"
        watch = ["--executors-of", str(self.cluster.worker_pid)] if self.cluster else []
        subprocess.run([sys.executable, "-m", "bench.pipeline.probe", str(result_file), str(log), *watch, "--", *command],
                       cwd=REPO, env=self.env, check=True)  # fmt: skip
        result = json.loads(result_file.read_text())
        result["log"] = str(log)
        if result["rc"] != 0:
            result["failed"] = last_error_line(log)
            print(f"    FAILED (exit {result['rc']}): {result['failed']}\n    log: {log}", file=sys.stderr)
        else:
            on_executors = f" ({result['executor_cpu_s']:.1f}s on executors, peak {result['peak_executor_jvm_rss_mb']:.0f} MB)" if self.cluster else ""
            print(f"    {result['wall_s']:.1f}s wall, {result['cpu_s']:.1f}s CPU, peak {result['peak_rss_mb']:.0f} MB{on_executors}", file=sys.stderr)
        return result

    def altlake(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "altlake_cli.main", *args]

    def stage(self, stage: str, commands: list[tuple[str, list[str]]], extra_read: int = 0) -> dict:
        """Run a stage's commands in order (stopping at a failure); one figure for the stage."""
        read = extra_read + sum(table_bytes(self.lake, t) for t in INPUT_TABLES[stage])
        before = folder_bytes(self.lake, self.releases)
        steps = {}
        for label, command in commands:
            steps[label] = self.probe(label, command)
            if "failed" in steps[label]:
                break
        figure = combine(steps)
        figure["bytes_read"] = read
        figure["bytes_written"] = max(0, folder_bytes(self.lake, self.releases) - before)
        return figure

    def floor(self, stage: str) -> dict:
        """The stage's floor process; its scratch output is measured and removed."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        result = self.probe(f"floor-{stage}", [sys.executable, "-m", "bench.pipeline.floors", stage, "--lake", str(self.lake),
                                               "--scratch", str(self.scratch)])  # fmt: skip
        result["bytes_written"] = folder_bytes(self.scratch)
        shutil.rmtree(self.scratch, ignore_errors=True)
        return result


def combine(steps: dict[str, dict]) -> dict:
    """A stage of several processes: summed wall and CPU, the largest peaks, the first failure."""
    figure = {
        "wall_s": round(sum(s["wall_s"] for s in steps.values()), 2),
        "cpu_s": round(sum(s["cpu_s"] for s in steps.values()), 2),
        "peak_rss_mb": round(max(s["peak_rss_mb"] for s in steps.values()), 1),
        "peak_tree_rss_mb": round(max(s["peak_tree_rss_mb"] for s in steps.values()), 1),
        "peak_jvm_rss_mb": round(max(s["peak_jvm_rss_mb"] for s in steps.values()), 1),
    }
    if all("executor_cpu_s" in s for s in steps.values()):  # on a cluster: the executors' share, apart
        figure["executor_cpu_s"] = round(sum(s["executor_cpu_s"] for s in steps.values()), 2)
        for peak in ("peak_executors_rss_mb", "peak_executor_jvm_rss_mb"):
            figure[peak] = round(max(s[peak] for s in steps.values()), 1)
    failed = next((s for s in steps.values() if "failed" in s), None)
    if failed:
        figure.update(failed=failed["failed"], log=failed["log"])
    else:
        figure["log"] = next(iter(steps.values()))["log"] if len(steps) == 1 else [s["log"] for s in steps.values()]
    if len(steps) > 1:
        figure["steps"] = {label: {k: round(v, 2) if isinstance(v, float) else v for k, v in s.items() if k != "log"} for label, s in steps.items()}
    return figure


# --- one size ----------------------------------------------------------------------------------


def run_size(size: int, args: argparse.Namespace, work: Path) -> dict:
    """Make one size's lake through production code, measuring each stage and its floor."""
    root = work / (f"{size}-{args.dim}" + ("" if args.embeddings == "isotropic" else f"-{args.embeddings}"))
    shutil.rmtree(root, ignore_errors=True)
    wat_cached = all(p.exists() for p in _planned_shards(work, size, args.seed))
    why = figures.disk_verdict(size, args.dim, shutil.disk_usage(work).free, wat_cached)
    if why:
        print(f"==> [{size}] skipped: {why}", file=sys.stderr)
        return {"target": size, "skipped": why}
    env = {**os.environ, "ALTLAKE_LAKE_DIR": str(root / "lake"), "ALTLAKE_RELEASE_STORE": str(root / "releases"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    if args.driver_memory:
        env["ALTLAKE_SPARK_DRIVER_MEMORY"] = args.driver_memory
    if args.merge_rows:
        env["ALTLAKE_MERGE_ROWS"] = str(args.merge_rows)
    if args.cluster:
        env.update(args.cluster.env, ALTLAKE_SPARK_MASTER=args.cluster.url)
    run = SizeRun(size, root, env, args.cluster)
    run.logs.mkdir(parents=True)
    wats, wat_s = generate.wat_shards(work, size, args.seed)
    summary: dict = {
        "target": size,
        "lake": str(root),
        "disk_estimate_gb": round(figures.disk_estimate(size, args.dim, wat_cached) / 1e9, 2),
        "wat": {"shards": len(wats), "bytes": sum(p.stat().st_size for p in wats), "generated_s": round(wat_s, 1)},
        "startup": run.probe("floor-startup", [sys.executable, "-m", "bench.pipeline.floors", "startup", "--lake", str(run.lake),
                                               "--scratch", str(run.scratch)]),  # fmt: skip
    }
    stages: dict[str, dict] = {}
    broken: set[str] = set()
    for stage in with_prerequisites(args.stages):
        blocked = [need for need in NEEDS[stage] if need in broken]
        if blocked:
            stages[stage] = {"skipped": f"needs {blocked[0]}, which did not finish"}
            broken.add(stage)
            continue
        try:
            stages[stage] = STAGE_RUNNERS[stage](run, args, summary, wats)
        except Exception as error:  # noqa: BLE001 - one stage's surprise never ends the benchmark
            stages[stage] = {"failed": f"{type(error).__name__}: {error}"[:500], "log": str(run.logs)}
        if "failed" in stages[stage] or "skipped" in stages[stage]:
            broken.add(stage)
    summary["stages"] = stages
    summary["disk_used_gb"] = round(folder_bytes(root) / 1e9, 2)
    summary["storage"] = storage(run)
    if not args.keep:
        for folder in (run.lake, run.releases, run.scratch):
            shutil.rmtree(folder, ignore_errors=True)  # logs stay: a failure's log must outlive the run
    return summary


def storage(run: SizeRun) -> dict:
    """Bytes per row of the tables that grow with the lake and of the published release (embeddings
    dominate both: float16, in scores as bytes per row, in the release as .npy shards)."""
    per: dict = {}
    for name in ("candidates", "scores", "pairs"):
        rows, size = table_rows(run.lake, name), table_bytes(run.lake, name)
        if rows:
            per[name] = {"rows": rows, "bytes": size, "bytes_per_row": round(size / rows)}
    pairs = per.get("pairs", {}).get("rows")
    if pairs and run.releases.exists():
        total = folder_bytes(run.releases)
        parts: dict[str, int] = {}  # by the release's top-level folders (parquet, embeddings, index, ...) and files
        for release in (p for p in run.releases.iterdir() if p.is_dir()):
            for part in release.iterdir():
                size_of = folder_bytes(part) if part.is_dir() else part.stat().st_size
                parts[part.name] = parts.get(part.name, 0) + size_of
        per["release"] = {"rows": pairs, "bytes": total, "bytes_per_row": round(total / pairs),
                          "bytes_per_row_by_part": {name: round(n / pairs) for name, n in sorted(parts.items(), key=lambda kv: -kv[1])}}  # fmt: skip
    return per


def _planned_shards(work: Path, size: int, seed: int) -> list[Path]:
    cache = work / "wat" / f"calibration-{seed}.json"
    if not cache.exists():
        return [work / "wat" / "uncalibrated"]
    per_page = json.loads(cache.read_text())["candidates_per_page"]
    return [work / "wat" / f"shard-{seed}-{i:05d}-{pages}.warc.wat.gz" for i, pages in enumerate(generate.shard_plan(size, per_page))]


def _finish(run: SizeRun, stage: str, figure: dict, rows: int, floor: dict | None = None) -> dict:
    figure["rows"] = rows
    figure["rows_per_s"] = figures.rate(rows, figure.get("wall_s")) if "failed" not in figure else None
    if floor is not None:
        floor["bytes_read"] = figure["bytes_read"]
        figure["floor"] = floor
        ok = "failed" not in figure and "failed" not in floor and floor.get("wall_s")
        figure["x_floor"] = round(figure["wall_s"] / floor["wall_s"], 2) if ok else None
        # CPU seconds move less than wall time when other work shares the machine
        figure["x_floor_cpu"] = round(figure["cpu_s"] / floor["cpu_s"], 2) if ok and floor.get("cpu_s") else None
    return figure


def run_extract(run: SizeRun, args, summary: dict, wats: list[Path]) -> dict:
    command = run.altlake("extract", "--crawl", CRAWL, "--wat", *map(str, wats), "--lake", str(run.lake))
    figure = run.stage("extract", [("extract", command)], extra_read=sum(p.stat().st_size for p in wats))
    summary["candidates"] = table_rows(run.lake, "candidates")
    return _finish(run, "extract", figure, summary["candidates"])


def run_plan(run: SizeRun, args, summary: dict, wats) -> dict:
    floor = run.floor("plan")
    command = run.altlake("plan-batches", "--batch-size", str(args.batch_size), "--lake", str(run.lake))
    figure = run.stage("plan", [("plan-batches", command)])
    return _finish(run, "plan", figure, summary["candidates"], floor)


def run_merge(run: SizeRun, args, summary: dict, wats) -> dict:
    from deltalake import DeltaTable

    batches = DeltaTable(LakePaths(str(run.lake)).table("batches")).to_pyarrow_table().to_pylist()
    planned = [b for b in batches if b["status"] == "planned"]
    print(f"==> [{run.size}] writing {len(planned)} batch outputs through gpu_workers.writer", file=sys.stderr)
    started = time.perf_counter()
    summary["worker_outputs"] = {**generate.write_worker_outputs(planned, args.dim, args.seed, args.embeddings), "wall_s": round(time.perf_counter() - started, 1)}
    floor = run.floor("merge")
    outputs = folder_bytes(*(Path(b["output_path"]) for b in planned))
    figure = run.stage("merge", [("merge-scores", run.altlake("merge-scores", "--lake", str(run.lake)))], extra_read=outputs)
    summary["scored"] = table_rows(run.lake, "scores")
    summary["ok"] = table_rows(run.lake, "scores", status="ok")
    return _finish(run, "merge", figure, summary["scored"], floor)


def run_release(run: SizeRun, args, summary: dict, wats) -> dict:
    floor = run.floor("release")
    figure = run.stage("release", [("build-release", run.altlake("build-release", "--lake", str(run.lake), "--store", str(run.releases)))])
    summary["pairs"] = table_rows(run.lake, "pairs")
    return _finish(run, "release", figure, summary.get("scored", 0), floor)


def run_takedowns(run: SizeRun, args, summary: dict, wats) -> dict:
    from deltalake import DeltaTable

    urls = DeltaTable(LakePaths(str(run.lake)).table("candidates")).to_pyarrow_table(columns=["url_canonical"]).column(0).to_pylist()
    domains = generate.takedown_domains([generate.host_of(u) for u in urls if u], args.seed)
    floor = combine({"takedown-add": run.floor("takedown-add"), "takedown-apply": run.floor("takedowns")})  # two commands, two sessions
    before = {t: table_rows(run.lake, t) for t in ("candidates", "scores", "pairs")}
    values = [arg for d in domains for arg in ("--value", d)]
    add = run.altlake("takedown", "add", "--kind", "domain", *values, "--reason", "bench.pipeline: ~0.1% of the domains", "--lake", str(run.lake))
    figure = run.stage("takedowns", [("takedown-add", add), ("takedown-apply", run.altlake("takedown", "apply", "--lake", str(run.lake)))])
    summary["takedowns"] = {"domains": len(domains), "of_hosts": len(set(filter(None, map(generate.host_of, urls)))),
                            "deleted": {t: n - table_rows(run.lake, t) for t, n in before.items()}}  # fmt: skip
    return _finish(run, "takedowns", figure, before["candidates"], floor)


def run_sql(run: SizeRun, args, summary: dict, wats) -> dict:
    commands = [(f"sql-{i + 1}", run.altlake("sql", query, "--format", fmt, "--lake", str(run.lake))) for i, (query, fmt) in enumerate(README_EXAMPLES)]
    figure = run.stage("sql", commands)
    figure["queries"] = [q for q, _ in README_EXAMPLES]
    return _finish(run, "sql", figure, table_rows(run.lake, "candidates"))


def run_maintain(run: SizeRun, args, summary: dict, wats) -> dict:
    """`altlake maintain` after everything before it (MERGEs, appends, deletes), with each table's files
    and uncheckpointed commits and the queries' seconds (bench/pipeline/queries.py) before and after."""

    def timed_queries(label: str) -> list[dict]:
        out = run.logs / f"{label}-result.json"
        result = run.probe(label, [sys.executable, "-m", "bench.pipeline.queries", "--lake", str(run.lake), "--out", str(out)])
        if "failed" in result:
            raise RuntimeError(f"{label}: {result['failed']}")
        return json.loads(out.read_text())

    files_before = {t: table_files(run.lake, t) for t in TABLES}
    before = timed_queries("queries-before")
    figure = run.stage("maintain", [("maintain", run.altlake("maintain", "--lake", str(run.lake)))])
    files_after = {t: table_files(run.lake, t) for t in TABLES}
    after = timed_queries("queries-after")
    figure["tables"] = {t: {"before": files_before[t], "after": files_after[t]} for t in TABLES if files_before[t]}
    figure["queries"] = [{"sql": b["sql"], "rows": b["rows"], "before": b["seconds"], "after": a["seconds"]} for b, a in zip(before, after)]
    return _finish(run, "maintain", figure, table_rows(run.lake, "candidates"))


STAGE_RUNNERS = {"extract": run_extract, "plan": run_plan, "merge": run_merge, "release": run_release, "takedowns": run_takedowns, "sql": run_sql,
                 "maintain": run_maintain}


# --- the report --------------------------------------------------------------------------------


def growth(sizes: dict[str, dict], measure: str = "wall_s") -> tuple[dict, dict]:
    """Per stage, the growth exponents of its `measure` (wall_s or cpu_s) and of its floor's, over the
    actual candidate counts; a failed or skipped size gives none."""
    stage_points: dict[str, list] = {s: [] for s in STAGES}
    floor_points: dict[str, list] = {s: [] for s in STAGES}
    for run in sizes.values():
        n = run.get("candidates")
        for stage, fig in run.get("stages", {}).items():
            if n and fig.get(measure) and "failed" not in fig:
                stage_points[stage].append((n, fig[measure]))
                floor = fig.get("floor") or {}
                if floor.get(measure) and "failed" not in floor:
                    floor_points[stage].append((n, floor[measure]))
    stage_exp = {s: figures.exponents(p) for s, p in stage_points.items() if len(p) > 1}
    floor_exp = {s: figures.exponents(p) for s, p in floor_points.items() if len(p) > 1}
    return stage_exp, floor_exp


def build_report(args: argparse.Namespace, sizes: dict[str, dict], settings: Settings) -> dict:
    stage_exp, floor_exp = growth(sizes)
    cpu_exp, cpu_floor_exp = growth(sizes, "cpu_s")
    return {
        "bench": "pipeline",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": len(os.sched_getaffinity(0)), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "python": platform.python_version()},  # fmt: skip
        "settings": {"dim": args.dim, "embeddings": args.embeddings, "batch_size": args.batch_size, "seed": args.seed, "stages": args.stages,
                     "spark_master": args.master if args.cluster else settings.spark_master,
                     "driver_memory": args.driver_memory or settings.spark_driver_memory,
                     **({"executor_memory": args.cluster.executor_memory, "executor_cores": args.cluster.cores} if args.cluster else {}),
                     "merge_rows": args.merge_rows or settings.merge_rows,
                     "shuffle_partitions": settings.spark_shuffle_partitions, "max_shuffle_partitions": settings.spark_max_shuffle_partitions,
                     "partition_size": settings.spark_partition_size, "crawl": CRAWL,
                     "peak_rss_mb": "largest single process of the stage's own tree (local mode: the JVM, driver and executor in one; "
                                    "standalone: the driver, with the executors' in peak_executor_jvm_rss_mb)"},  # fmt: skip
        "sizes": sizes,
        "exponents": stage_exp,
        "floor_exponents": floor_exp,
        # CPU seconds of the process tree move less than wall time when other work shares the machine
        "cpu_exponents": cpu_exp,
        "cpu_floor_exponents": cpu_floor_exp,
    }


def jvm_size(text: str) -> str:
    """A JVM memory size in m or g (512m, 4g), as Spark takes it."""
    if not re.fullmatch(r"\d+[mg]", text.strip().lower()):
        raise argparse.ArgumentTypeError(f"a JVM memory size in m or g (512m, 4g), not {text!r}")
    return text.strip().lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("10000,100000"),
                        help="comma-separated candidate counts (10000,100000,1000000,10000000); each is skipped when the disk is short")
    parser.add_argument("--dim", type=int, choices=(512, 768), default=512, help="embedding dimension of the release model")
    parser.add_argument("--embeddings", choices=generate.EMBEDDINGS, default="isotropic",
                        help="image embeddings: isotropic, or clustered like CLIP's (mean cosine ~0.35; hardest for near-duplicate blocking)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="candidates per scoring batch (plan-batches --batch-size)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--stages", type=parse_stages, default=list(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)}; the stages they need run too")
    parser.add_argument("--driver-memory", help="ALTLAKE_SPARK_DRIVER_MEMORY for every stage and floor (default: the setting's, 2g)")
    parser.add_argument("--merge-rows", type=int,
                        help=f"ALTLAKE_MERGE_ROWS for merge-scores (default: the setting's, {Settings.merge_rows}); the batch size makes one MERGE per batch, "
                             "as a lake scored incrementally gets, with the small files maintain is there to compact")
    parser.add_argument("--master", choices=("local", "standalone"), default="local",
                        help="local: each stage's own local[*] session (the default setting); standalone: a Spark standalone cluster on "
                             "127.0.0.1 (a master and a worker lending every core), executors in their own JVMs, measured apart")
    parser.add_argument("--executor-memory", type=jvm_size, default="4g", help="with --master standalone: each application's executor heap")
    parser.add_argument("--keep", action="store_true", help="keep each size's lake (default: removed after the size; logs stay)")
    parser.add_argument("--work-dir", type=Path, help="where lakes and WAT shards live (default: <ALTLAKE_CACHE_DIR>/bench-data/pipeline)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "pipeline.json")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    work = (args.work_dir or Path(settings.cache_dir) / "bench-data" / "pipeline").absolute()
    (work / "wat").mkdir(parents=True, exist_ok=True)
    args.cluster = None
    with ExitStack() as stack:
        if args.master == "standalone":
            args.cluster = stack.enter_context(standalone_cluster(work / "cluster", len(os.sched_getaffinity(0)), args.executor_memory))
            print(f"==> standalone cluster at {args.cluster.url}: one worker, {args.cluster.cores} cores, executors of {args.executor_memory}", file=sys.stderr)
        sizes: dict[str, dict] = {}
        for size in args.sizes:
            sizes[str(size)] = run_size(size, args, work)
            report = build_report(args, sizes, settings)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))  # after every size: a long run's figures survive an interruption
    figures.plot(report, args.out.with_suffix(".png"))
    print(figures.table(report))
    print(f"\nwritten: {args.out} and {args.out.with_suffix('.png')}")
    return 0
