"""bench/download's altlake side: every image downloaded is written once into the shards, and the
per-stage CPU counters it reports add up to no more than the process's own count."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from altlake_cli.image_server import ImageServer
from bench.download.dataset import make_images, write_url_list
from bench.download.ours import main


def test_the_altlake_side_writes_every_image_and_reports_cpu_per_stage(tmp_path: Path):
    names = make_images(tmp_path / "images", 12, 400)
    with ImageServer(files_dir=tmp_path / "images") as server:
        write_url_list(tmp_path / "urls.parquet", server.base_url, names)
        assert main([str(tmp_path / "urls.parquet"), str(tmp_path / "out"), "--threads", "4"]) == 0

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["statuses"] == {"ok": 12}
    members = [m.name for shard in sorted((tmp_path / "out").rglob("*.tar")) for m in tarfile.open(shard)]
    assert sorted(m for m in members if m.endswith(".jpg")) == sorted(names)

    stages = summary["cpu_ms_per_image"]
    for stage in ("download", "check", "decode", "hash", "write"):
        assert stages[stage] > 0, (stage, stages)
    staged = sum(ms for name, ms in stages.items() if name not in ("other", "total"))
    assert staged <= stages["total"] + 0.01, stages
