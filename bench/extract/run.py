"""Extraction throughput per core: altlake's `process_wat` vs cc2dataset's `extract_documents_from_wat`.

Both run single-process on the same generated, per-record-gzipped WAT, side by side in one run;
altlake twice: the whole per-WAT job (links, dedup, LAION rules, ftfy, language ID, uids) and the
links alone (`read_raw_links`: the same work and output as cc2dataset's function);
cc2dataset runs from its own venv (bench/venvs.py, created on first use). Throughput is measured in
CPU seconds of the extracting process (time.process_time), i.e. per core, which also keeps the
figures meaningful on a shared machine. The run also checks that both tools see the same raw
(url, alt) pair set. Figures go to stdout as a table and to bench/out/extract.json.

    python -m bench.extract [--pages 60000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import html
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson
from tqdm import tqdm

from altlake.config import Settings
from bench.venvs import peer_venv
from spark_jobs.wat import detect_language, process_wat, read_raw_links
from spark_jobs.watgen import generate_wat

CC2DATASET = "cc2dataset==1.5.0"
REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "bench" / "out"
PROBE = Path(__file__).with_name("cc2dataset_probe.py")


def bench_wat(pages: int, seed: int) -> Path:
    """The generated per-record-gzipped WAT for (pages, seed), made once and cached: every benchmark
    on WATs reads the same file."""
    wat = Path(Settings.from_env().cache_dir) / "bench-data" / f"bench-{pages}-{seed}.warc.wat.gz"
    if not wat.exists():
        print(f"generating {wat} ...", file=sys.stderr)
        generate_wat(wat, pages, gzip=True, seed=seed)
    return wat


def run_altlake(wat: Path) -> tuple[float, dict]:
    """CPU seconds of the whole per-WAT job, and what it found."""
    started = time.process_time()
    result = process_wat(str(wat))
    seconds = time.process_time() - started
    return seconds, {"links": result.raw_links, "raw_pairs": result.raw_pairs, "kept_pairs": result.kept_pairs,
                     "status": result.status}


def run_altlake_links(wat: Path) -> tuple[float, dict]:
    """The same work as cc2dataset: every IMG link with an alt, resolved; no dedup, rules or language."""
    started = time.process_time()
    links = len(read_raw_links(str(wat)))
    return time.process_time() - started, {"links": links}


def run_cc2dataset(python: Path, wat: Path, pairs_out: Path) -> tuple[float, dict]:
    done = subprocess.run([str(python), str(PROBE), str(wat), str(pairs_out)], check=True, capture_output=True, text=True)
    figures = orjson.loads(done.stdout.strip().splitlines()[-1])
    return figures["seconds"], {"links": figures["links"]}


def summarise(runs: list[tuple[float, dict]]) -> dict:
    seconds = [s for s, _ in runs]
    return {"cpu_s": min(seconds), "cpu_s_median": statistics.median(seconds), "cpu_s_runs": seconds, **runs[-1][1]}


def compare_pair_sets(wat: Path, cc2_pairs: Path) -> dict:
    """Our raw http(s) pairs vs cc2dataset's, with its URLs/alts HTML-unescaped as ours are."""
    ours = {(u, a) for u, a in read_raw_links(str(wat)) if u.startswith(("http://", "https://"))}
    theirs = set()
    for line in cc2_pairs.read_text().splitlines():
        url, alt = orjson.loads(line)
        theirs.add((html.unescape(url), html.unescape(alt)))
    return {"ours": len(ours), "cc2dataset": len(theirs), "equal": ours == theirs,
            "only_ours": len(ours - theirs), "only_cc2dataset": len(theirs - ours)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.extract", description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=60_000, help="pages in the generated WAT (~5 KB gzipped each)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the best is reported")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)

    wat = bench_wat(args.pages, args.seed)
    python = peer_venv("cc2dataset", [CC2DATASET]) / "bin" / "python"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cc2_pairs = OUT_DIR / "cc2dataset-pairs.jsonl"

    detect_language("warm up the model")  # loaded once per executor process in the job too
    runs: dict[str, list] = {"ours": [], "links": [], "theirs": []}
    for _ in tqdm(range(args.repeat), desc="rounds", file=sys.stderr):  # tools take turns: drifting load hits all alike
        runs["ours"].append(run_altlake(wat))
        runs["links"].append(run_altlake_links(wat))
        runs["theirs"].append(run_cc2dataset(python, wat, cc2_pairs))
    ours, ours_links, theirs = (summarise(runs[name]) for name in ("ours", "links", "theirs"))
    same = compare_pair_sets(wat, cc2_pairs)
    size_mb = wat.stat().st_size / 1e6
    rows = []
    tools = (("altlake process_wat", ours), ("altlake links only", ours_links), ("cc2dataset 1.5.0", theirs))
    for name, fig in tools:
        rows.append({"tool": name, "cpu_s": round(fig["cpu_s"], 2), "links_per_core_s": round(fig["links"] / fig["cpu_s"]),
                     "mb_gz_per_core_s": round(size_mb / fig["cpu_s"], 2), "links": fig["links"]})
    speedup = theirs["cpu_s"] / ours["cpu_s"]
    links_speedup = theirs["cpu_s"] / ours_links["cpu_s"]
    median_speedups = (theirs["cpu_s_median"] / ours["cpu_s_median"], theirs["cpu_s_median"] / ours_links["cpu_s_median"])
    report = {"wat": str(wat), "wat_mb_gz": round(size_mb, 1), "pages": args.pages, "repeat": args.repeat,
              "results": rows, "speedup_vs_cc2dataset": round(speedup, 2),
              "links_only_speedup_vs_cc2dataset": round(links_speedup, 2),
              "median_speedups_vs_cc2dataset": {"whole_job": round(median_speedups[0], 2), "links_only": round(median_speedups[1], 2)},
              "raw_pair_sets": same,
              "altlake_extra_work": "LAION rules, ftfy, fastText language id, uid hashing, dedup (cc2dataset does none)",
              "altlake": ours, "altlake_links_only": ours_links, "cc2dataset": theirs, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (OUT_DIR / "extract.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))

    print(f"WAT: {wat.name} ({size_mb:.1f} MB gzipped, {args.pages} pages), best of {args.repeat} alternating rounds, CPU time of one core")
    print(f"{'tool':<22} {'cpu s':>8} {'links/core-s':>13} {'MB.gz/core-s':>13} {'links':>9}")
    for r in rows:
        print(f"{r['tool']:<22} {r['cpu_s']:>8} {r['links_per_core_s']:>13} {r['mb_gz_per_core_s']:>13} {r['links']:>9}")
    print(f"speed-up: {speedup:.2f}x per core (links only, the same work as cc2dataset: {links_speedup:.2f}x; medians: {median_speedups[0]:.2f}x / {median_speedups[1]:.2f}x)   raw pair sets equal: {same['equal']} "
          f"(ours {same['ours']}, cc2dataset {same['cc2dataset']})")
    print(f"written: {OUT_DIR / 'extract.json'}")
    return 0 if same["equal"] else 1
