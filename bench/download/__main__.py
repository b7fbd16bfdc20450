"""`python -m bench.download`: images/s and images per CPU-second, altlake vs img2dataset, one run.

Both tools read the same url-list parquet and download the same real-size JPEGs from the same
local image server (a separate process, so its CPU is not counted), resize them the same way
(border, 256 px by default) and write the same output: webdataset shards (`--output-format`, the
format LAION's datasets ship in; altlake through the worker's own spool and shard writer) or a
file per jpg / txt / json. altlake keeps its safety on: robots.txt,
X-Robots-Tag, and the SSRF guard (127.0.0.1 allow-listed). CPU time is measured with
resource.getrusage(RUSAGE_CHILDREN) around each tool's process, which includes img2dataset's
worker processes. Each tool also runs once on a tiny list (`--startup-images`) so its fixed start-up
cost (imports, process spawns) can be subtracted: the "marginal" columns are the cost per image
of a long run. With --repeats N (default 3) every run is made N times, the tools taking turns, and
the median CPU and wall seconds are reported: the machine may be shared, and one noisy start-up run
would otherwise swing the marginal figures. Results: a table on stdout and bench/out/download.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from altlake.config import Settings
from bench.download.dataset import make_images, write_url_list
from bench.processes import GPU_IMAGES_PER_S, measure, vcpus_per_gpu
from bench.venvs import peer_venv

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
IMG2DATASET = "img2dataset==1.47.0"


def img2dataset_successes(folder: Path) -> int:
    return sum(json.loads(p.read_text())["successes"] for p in folder.glob("*_stats.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.download", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="how many distinct JPEGs to serve")
    parser.add_argument("--source-size", type=int, default=1024, help="long side of the served JPEGs (px)")
    parser.add_argument("--threads", type=int, default=32, help="img2dataset thread_count = altlake concurrency")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--resize-mode", default="border", choices=("border", "keep_ratio", "center_crop"))
    parser.add_argument("--output-format", default="webdataset", choices=("webdataset", "files"),
                        help="both tools' output: webdataset shards (LAION's format) or a file per jpg/txt/json")
    parser.add_argument("--startup-images", type=int, default=10, help="size of the start-up calibration run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool and size; medians are reported")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "download.json"))
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    cache = Path(settings.cache_dir)
    img2dataset_python = peer_venv(IMG2DATASET.replace("==", "-"), [IMG2DATASET]) / "bin" / "python"
    images = cache / "bench-data" / f"download-{args.images}-{args.source_size}"
    names = make_images(images, args.images, args.source_size)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO)}

    server = subprocess.Popen(
        [sys.executable, "-m", "altlake_cli.image_server", "--port", "0", "--files", str(images)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
    )
    work = Path(tempfile.mkdtemp(prefix="altlake-bench-download-"))
    try:
        base_url = server.stdout.readline().split()[2]
        samples: dict[tuple[str, str], list[dict[str, float]]] = {}
        for repeat in range(args.repeats):
            for label, count in (("startup", args.startup_images), ("full", args.images)):
                url_list = work / f"urls-{label}.parquet"
                write_url_list(url_list, base_url, names[:count])
                common = [str(args.threads), str(args.image_size), args.resize_mode]
                folder = work / f"{label}-{repeat}"
                commands = {
                    "altlake": [sys.executable, "-m", "bench.download.ours", str(url_list), str(folder / "altlake"),
                                "--threads", common[0], "--image-size", common[1], "--resize-mode", common[2],
                                "--output-format", args.output_format],
                    "img2dataset": [str(img2dataset_python), str(HERE / "run_img2dataset.py"), str(url_list),
                                    str(folder / "img2dataset"), *common, args.output_format, "10000"],
                }
                for tool, command in commands.items():
                    sample = measure(f"{tool} ({label}, {count} images, run {repeat + 1}/{args.repeats})", command, env)
                    samples.setdefault((tool, label), []).append(sample)
                summary = json.loads((folder / "altlake" / "summary.json").read_text())
                samples["altlake", label][-1].update(images=summary["successes"], cpu_ms_per_image=summary["cpu_ms_per_image"])
                samples["img2dataset", label][-1]["images"] = img2dataset_successes(folder / "img2dataset")
                shutil.rmtree(folder)
        runs: dict[str, dict[str, dict]] = {}
        for (tool, label), measured in samples.items():
            runs.setdefault(tool, {})[label] = {
                "wall_s": statistics.median(m["wall_s"] for m in measured),
                "cpu_s": statistics.median(m["cpu_s"] for m in measured),
                "images": min(m["images"] for m in measured),  # a run that lost images does not flatter its tool
                "cpu_s_runs": [round(m["cpu_s"], 2) for m in measured],
            }
            if tool == "altlake":  # the worker's own stage counters, median of each over the runs
                stages = measured[0]["cpu_ms_per_image"]
                runs[tool][label]["cpu_ms_per_image"] = {name: statistics.median(m["cpu_ms_per_image"][name] for m in measured) for name in stages}
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    for run in runs.values():
        full, startup = run["full"], run["startup"]
        full["images_per_s"] = full["images"] / full["wall_s"]
        full["images_per_cpu_s"] = full["images"] / full["cpu_s"]
        extra_images = full["images"] - startup["images"]
        full["marginal_images_per_cpu_s"] = extra_images / max(full["cpu_s"] - startup["cpu_s"], 1e-9)
        full["marginal_images_per_s"] = extra_images / max(full["wall_s"] - startup["wall_s"], 1e-9)
    ours, theirs = runs["altlake"]["full"], runs["img2dataset"]["full"]
    ratio = ours["images_per_cpu_s"] / theirs["images_per_cpu_s"]
    marginal_ratio = ours["marginal_images_per_cpu_s"] / theirs["marginal_images_per_cpu_s"]
    report = {
        "benchmark": "download+decode+resize, local server",
        "images": args.images, "source_size": args.source_size, "threads": args.threads, "repeats": args.repeats,
        "image_size": args.image_size, "resize_mode": args.resize_mode, "output_format": args.output_format,
        "img2dataset": IMG2DATASET,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "runs": runs, "per_core_speedup": ratio, "marginal_per_core_speedup": marginal_ratio,
        "vcpus_per_gpu_at_8000": vcpus_per_gpu(runs["altlake"]["full"]["cpu_ms_per_image"]["total"]),
        "altlake_safety": "robots.txt + X-Robots-Tag + SSRF guard on (127.0.0.1 allow-listed)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))

    print(f"\n{args.images} JPEGs of ~{args.source_size}px -> {args.resize_mode} {args.image_size}px, {args.threads} threads, "
          f"{args.output_format} output, 1 process, median of {args.repeats} run(s)")
    print(f"{'tool':<12} {'ok images':>10} {'wall s':>8} {'CPU s':>8} {'img/s':>8} {'img/CPU-s':>10} {'marginal img/CPU-s':>19}")
    for name, run in runs.items():
        full = run["full"]
        print(f"{name:<12} {full['images']:>10} {full['wall_s']:>8.1f} {full['cpu_s']:>8.1f} {full['images_per_s']:>8.1f} "
              f"{full['images_per_cpu_s']:>10.1f} {full['marginal_images_per_cpu_s']:>19.1f}")
    print(f"per-core speed-up altlake / img2dataset: {ratio:.2f}x whole run, {marginal_ratio:.2f}x without start-up"
          f"   (written to {args.out})")
    stages = runs["altlake"]["full"]["cpu_ms_per_image"]
    print("altlake CPU ms per image by stage (full runs; decode includes the resize, hash the JPEG encode; other: threads and"
          " work outside the stages): " + "  ".join(f"{name} {ms:.3f}" for name, ms in stages.items() if ms or name == "total"))
    print(f"  download to written row: {stages['total']:.2f} ms/image -> {vcpus_per_gpu(stages['total'])} vCPUs"
          f" per GPU at {GPU_IMAGES_PER_S} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
