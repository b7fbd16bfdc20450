"""A pdq takedown end to end: the real worker downloads a photo, copies of it and unrelated photos
from 127.0.0.1, the merge records their PDQ hashes, and one request made from the original file
removes the original and its copies, and nothing else."""

from __future__ import annotations

import pytest

from altlake import perceptual
from altlake.config import Settings
from spark_jobs.lake import read_table
from spark_jobs.takedowns import TakedownRequest, add_takedowns, apply_takedowns, hashes_of_images
from tests.spark_jobs.lakegen import add_candidates, candidate

# The worker, a plan, a merge and two takedown passes on a fresh lake: about three minutes on 2 cores.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def photo_copies(tmp_path_factory):
    """A photo, copies of it as a re-host makes them, and unrelated photos, served on 127.0.0.1."""
    from altlake_cli.image_server import ImageServer
    from tests.altlake.test_perceptual import _photo, copies

    folder = tmp_path_factory.mktemp("photos")
    original = _photo("astronaut")
    original.save(folder / "original.png")
    names = {"original.png": "original"}
    for i, (kind, image) in enumerate(copies(original).items()):
        image.save(folder / f"copy{i}.jpg", quality=90)
        names[f"copy{i}.jpg"] = kind
    for name in ("coffee", "chelsea", "rocket", "camera"):
        _photo(name).save(folder / f"{name}.jpg", quality=90)
        names[f"{name}.jpg"] = "unrelated"
    with ImageServer(files_dir=folder) as server:
        yield server, folder, names


def test_a_pdq_takedown_removes_copies_of_the_image_and_keeps_unrelated_ones(tmp_path, photo_copies):
    """The real worker hashes what it downloads, the merge records it, and one pdq request made
    from the original file removes the original and every copy (resized, re-encoded, cropped)
    from scores and candidates, with the distance recorded; unrelated photos stay."""
    from gpu_workers.downloader import DownloadConfig
    from gpu_workers.images import ImageConfig
    from gpu_workers.models import ModelSpec
    from gpu_workers.worker import PipelineConfig, score_batch
    from spark_jobs.batches import plan_batches
    from spark_jobs.merge_scores import merge_planned_batches
    from spark_jobs.session import get_spark

    server, folder, names = photo_copies
    settings = Settings.from_env(lake_dir=str(tmp_path / "lake"), spark_master="local[2]", spark_shuffle_partitions=2)
    spark = get_spark(settings, app_name="altlake-tests")
    rows = {name: candidate(server.url(f"files/{name}"), f"a photo: {kind} ({name})") for name, kind in names.items()}
    add_candidates(spark, settings, list(rows.values()))
    (batch,) = plan_batches(spark, settings, batch_size=100)["batches"]
    download = DownloadConfig(allow_hosts=("127.0.0.1",), timeout_s=5.0, retries=0)
    summary = score_batch(batch["input_path"], batch["output_path"], ModelSpec(), download, ImageConfig(min_bytes=1_000),
                          PipelineConfig(batch_size=8, decode_workers=1), batch_id=batch["batch_id"])  # fmt: skip
    assert summary["statuses"] == {"ok": len(names)}
    assert merge_planned_batches(spark, settings)["totals"] == {"merged": 1}
    scores = {r["uid"]: r for r in read_table(spark, settings, "scores").collect()}
    assert all(perceptual.is_pdq(r["pdq"]) and r["pdq_quality"] >= perceptual.MIN_QUALITY for r in scores.values())

    (request,) = hashes_of_images([str(folder / "original.png")], "pdq")
    copies_of = {rows[n]["uid"] for n, kind in names.items() if kind != "unrelated"}
    # what the worker stored for the original is the file's own hash, up to resampling
    assert perceptual.distance(scores[rows["original.png"]["uid"]]["pdq"], request) <= 8
    added = add_takedowns(spark, settings, [TakedownRequest("pdq", request, "rights holder: astronaut.png", max_distance=31)])
    assert added["matched_rows"] == {"candidates": 0, "scores": len(copies_of), "pairs": 0}
    recorded = read_table(spark, settings, "takedowns").first()
    assert (recorded["kind"], recorded["max_distance"], recorded["matched"]["scores"]) == ("pdq", 31, len(copies_of))

    applied = apply_takedowns(spark, settings)
    assert applied["matched_by_kind"]["pdq"] == len(copies_of)
    unrelated = {rows[n]["uid"] for n, kind in names.items() if kind == "unrelated"}
    for table in ("candidates", "scores"):
        assert {r["uid"] for r in read_table(spark, settings, table).collect()} == unrelated, table

    # Without a distance a request gets the recommended one, recorded with it; it matches its photo only.
    (coffee,) = hashes_of_images([str(folder / "coffee.jpg")], "pdq")
    second = add_takedowns(spark, settings, [TakedownRequest("pdq", coffee, "coffee")])
    assert second["matched_rows"]["scores"] == 1 and second["matched_nothing"] == []
    recorded = read_table(spark, settings, "takedowns").where(f"value = '{coffee}'").first()
    assert recorded["max_distance"] == perceptual.DEFAULT_MAX_DISTANCE
