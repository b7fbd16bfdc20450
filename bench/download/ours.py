"""One benchmark run of altlake's side: download -> decode/validate/resize -> files on disk.

Runs as its own process (`python -m bench.download.ours`) so the parent can measure its CPU time
exactly as it measures img2dataset's. Writes what img2dataset writes per sample (jpg, txt caption,
json metadata): webdataset shards through the worker's own spool and shard writer, or with
--output-format files one file each, and a summary JSON with the status counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import orjson
import pyarrow.parquet as pq
from tqdm import tqdm

from altlake.config import Settings
from gpu_workers.downloader import DownloadConfig, download
from gpu_workers.images import ImageConfig, ImageRejected, decode
from gpu_workers.stage_clock import StageClock
from gpu_workers.writer import ImageSpool, OutputDir, Sample, write_webdataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url_list")
    parser.add_argument("output_folder")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--resize-mode", default="border")
    parser.add_argument("--output-format", default="webdataset", choices=("webdataset", "files"))
    args = parser.parse_args(argv)

    # ParquetFile, not read_table: the latter imports pyarrow.dataset and with it pandas (~1 CPU-s).
    table = pq.ParquetFile(args.url_list).read(columns=["key", "url", "caption"]).to_pydict()
    captions = dict(zip(table["key"], table["caption"]))
    download_config = DownloadConfig.from_settings(
        Settings.from_env(),
        concurrency=args.threads,
        per_host_concurrency=args.threads,  # one local host serves everything, as for img2dataset
        allow_hosts=("127.0.0.1",),  # SSRF guard on, loopback allowed explicitly
        timeout_s=10,
        retries=0,
    )
    image_config = ImageConfig(size=args.image_size, resize_mode=args.resize_mode, min_bytes=0)
    out = Path(args.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    spool, metas = ImageSpool(str(out)), {}
    clock = StageClock()  # the worker's own per-stage CPU counters; the process total from here on
    clock.start()
    results = download(zip(table["key"], table["url"]), download_config, max_in_flight=4 * args.threads, clock=clock)
    for result in tqdm(results, total=len(captions), desc="altlake", unit="img", file=sys.stderr):
        status = result.status
        if status == "ok":
            try:
                image = decode(result.body, image_config, clock)
            except ImageRejected as rejected:
                status = rejected.status
            else:
                meta = {"url": result.url, "key": result.key, "status": status, "sha256": image.sha256,
                        "width": image.width, "height": image.height,
                        "original_width": image.original_width, "original_height": image.original_height}
                with clock.stage("write"):
                    if args.output_format == "webdataset":  # as the worker: spooled, then shards in key order
                        spool.add(result.key, image.stored_bytes)
                        metas[result.key] = meta
                    else:
                        (out / f"{result.key}.jpg").write_bytes(image.stored_bytes)
                        (out / f"{result.key}.txt").write_text(captions[result.key])
                        (out / f"{result.key}.json").write_bytes(orjson.dumps(meta))
        counts[status] += 1
    with clock.stage("write"):
        if args.output_format == "webdataset":
            write_webdataset(OutputDir(str(out)), (Sample(key, spool.get(key), captions[key], metas[key]) for key in sorted(metas)))
        spool.close()
    clock.stop()
    summary = {"statuses": counts, "successes": counts["ok"], "cpu_ms_per_image": clock.ms_per_image(counts["ok"])}
    (out / "summary.json").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
