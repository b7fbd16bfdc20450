"""`altlake subset`: exact nearest pairs to the queries, written as parquet that img2dataset downloads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from altlake.paths import derived_subset_file
from altlake_cli.main import main as altlake
from bench.venvs import peer_venv
from explore.subset import build_subset

IMG2DATASET = "img2dataset==1.47.0"


def img2dataset_cli() -> Path:
    """img2dataset in its own venv under the cache dir (outside the repo), installed once."""
    return peer_venv(IMG2DATASET.replace("==", "-"), [IMG2DATASET]) / "bin" / "img2dataset"


def _sims(release: Path, text: str) -> np.ndarray:
    from gpu_workers.models import ModelSpec, load_models

    models = load_models(ModelSpec(nsfw_head=None, watermark_head=None))
    query = models.embed_texts([text], ["en"])[0]
    return np.load(release / "img_emb" / "img_emb_0.npy").astype(np.float32) @ query


def test_subset_keeps_the_pairs_above_the_threshold_best_first(model_release, tmp_path):
    sims = _sims(model_release, "a red circle")
    threshold = float(np.median(sims))
    expected = [int(i) for i in np.argsort(-sims, kind="stable") if sims[i] >= threshold]

    manifest = build_subset(str(model_release), str(tmp_path / "all"), queries=["a red circle"], min_similarity=threshold, max_rows=1000)
    table = pq.read_table(tmp_path / "all" / "subset.parquet").to_pydict()
    assert table["release_row"] == expected
    assert np.allclose(table["similarity"], sims[expected], atol=1e-3)
    metadata = pq.read_table(model_release / "metadata" / "metadata_0.parquet").to_pydict()
    assert table["URL"] == [metadata["url"][i] for i in expected]
    assert table["TEXT"] == [metadata["caption"][i] for i in expected]
    assert table["uid"] == [metadata["uid"][i] for i in expected] and set(table["query"]) == {"a red circle"}
    counts = manifest["counts"]
    assert counts == {"scanned": 48, "kept": len(expected), "dropped": {"below_min_similarity": 48 - len(expected), "unsafe": 0, "over_max": 0}}
    on_disk = json.loads((tmp_path / "all" / "subset_manifest.json").read_text())
    assert on_disk["queries"]["text"] == ["a red circle"] and on_disk["release_id"] == "rel-demo" and on_disk["min_similarity"] == threshold

    capped = build_subset(str(model_release), str(tmp_path / "capped"), queries=["a red circle"], min_similarity=threshold, max_rows=5, max_punsafe=0.5)
    rows = pq.read_table(tmp_path / "capped" / "subset.parquet").to_pydict()
    safe_expected = [i for i in expected if i % 3 != 0]  # every third row has punsafe 0.9
    assert rows["release_row"] == safe_expected[:5]
    assert capped["counts"]["dropped"] == {"below_min_similarity": 48 - len(expected), "unsafe": len(expected) - len(safe_expected), "over_max": len(safe_expected) - 5}


def test_subset_cli_with_an_image_query_and_bad_input(model_release, image_site, tmp_path, capsys):
    out = tmp_path / "by-image"
    code = altlake(["subset", "--release", str(model_release), "--query-image", str(image_site[1] / "9.png"), "--min-similarity", "0.5", "--max", "3", "--out", str(out)])
    assert code == 0
    rows = pq.read_table(out / "subset.parquet").to_pydict()
    assert rows["release_row"][0] == 9 and rows["query"][0] == "image:9.png" and len(rows["URL"]) <= 3
    assert json.loads(capsys.readouterr().out)["counts"]["kept"] == len(rows["URL"])
    with pytest.raises(ValueError, match="at least one"):
        build_subset(str(model_release), str(tmp_path / "none"))
    with pytest.raises(ValueError, match="not_image"):
        (tmp_path / "fake.png").write_bytes(b"not a picture at all")
        build_subset(str(model_release), str(tmp_path / "bad"), query_images=[str(tmp_path / "fake.png")])


def test_img2dataset_downloads_the_subset_from_a_local_server(model_release, tmp_path):
    build_subset(str(model_release), str(tmp_path / "subset"), queries=["three green triangles"], min_similarity=-1.0, max_rows=12)
    wanted = pq.read_table(tmp_path / "subset" / "subset.parquet").to_pydict()
    assert len(wanted["URL"]) == 12

    out = tmp_path / "downloaded"
    command = [
        str(img2dataset_cli()),
        "--url_list", str(tmp_path / "subset" / "subset.parquet"),
        "--input_format", "parquet", "--url_col", "URL", "--caption_col", "TEXT",
        "--save_additional_columns", '["uid","similarity"]',
        "--output_folder", str(out), "--output_format", "files",
        "--processes_count", "1", "--thread_count", "4", "--image_size", "64",
        "--enable_wandb", "False",
    ]  # fmt: skip
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]

    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    assert sum(s["successes"] for s in stats) == 12, stats
    saved = [json.loads(p.read_text()) for p in out.glob("*/*.json")]
    assert sorted(s["uid"] for s in saved) == sorted(wanted["uid"])
    assert len(list(out.glob("*/*.jpg"))) == 12


def test_within_scans_only_a_derived_subsets_rows(model_release, tmp_path, capsys):
    """A copy of the release that publishes a derived subset `aesthetic` (its parquet and manifest entry
    as publishing writes them): --within scans its rows and no others."""
    release = tmp_path / "rel-demo"
    shutil.copytree(model_release, release)
    metadata = pq.read_table(release / "metadata" / "metadata_0.parquet").to_pydict()
    inside = [i for i, rating in enumerate(metadata["aesthetic"]) if rating >= 6.0]
    assert 0 < len(inside) < len(metadata["uid"])
    (release / "subsets").mkdir()
    pq.write_table(pa.table({"uid": [metadata["uid"][i] for i in inside]}), release / derived_subset_file("aesthetic"))
    manifest = json.loads((release / "manifest.json").read_text())
    entry = {"filter": "aesthetic >= 6.0", "aesthetic_min": 6.0, "rows": len(inside), "file": derived_subset_file("aesthetic")}
    (release / "manifest.json").write_text(json.dumps({**manifest, "derived_subsets": {"aesthetic": entry}}))

    sims = _sims(release, "a red circle")
    expected = sorted(inside, key=lambda i: (-sims[i], i))[:5]
    code = altlake(["subset", "--release", str(release), "--query", "a red circle", "--min-similarity", "-1", "--max", "5",
                    "--within", "aesthetic", "--out", str(tmp_path / "within")])  # fmt: skip
    assert code == 0
    rows = pq.read_table(tmp_path / "within" / "subset.parquet").to_pydict()
    assert rows["release_row"] == expected
    written = json.loads((tmp_path / "within" / "subset_manifest.json").read_text())
    assert written["within"] == {"name": "aesthetic", **entry}
    assert written["counts"]["scanned"] == len(inside) and written["counts"]["dropped"]["over_max"] == len(inside) - 5
    capsys.readouterr()

    assert altlake(["subset", "--release", str(release), "--query", "x", "--within", "research", "--out", str(tmp_path / "no")]) != 0
    assert "has no derived subset 'research'; it has: aesthetic" in capsys.readouterr().err
    with pytest.raises(ValueError, match="predates derived subsets"):
        build_subset(str(model_release), str(tmp_path / "old"), queries=["x"], within="aesthetic")
