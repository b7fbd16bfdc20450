"""The scoring worker against hostile batches, images and hosts: mistyped cells, images whose header
lies about their size, tracking pixels, and a slow but healthy host whose queue must not be
mistaken for timeouts."""

from __future__ import annotations

import io
import struct

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from altlake.schemas import STATUS_OK
from altlake_cli.image_server import ImageServer, photo_bytes
from gpu_workers.downloader import DownloadConfig, download
from gpu_workers.images import ImageConfig, ImageRejected, decode
from gpu_workers.models import ModelSpec
from gpu_workers.reader import rows_to_batch
from gpu_workers.worker import PipelineConfig, score_batch

SPEC = ModelSpec(nsfw_head=None, watermark_head=None)
IMAGES = ImageConfig(min_bytes=1_000, size=64)


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        yield srv


def _score(tmp_path, table: pa.Table, server: ImageServer) -> tuple[dict, dict[str, dict]]:
    pq.write_table(table, tmp_path / "in.parquet")
    summary = score_batch(
        str(tmp_path / "in.parquet"), str(tmp_path / "out"), SPEC,
        DownloadConfig(allow_hosts=("127.0.0.1",), timeout_s=5.0, retries=0), IMAGES, PipelineConfig(batch_size=4),
    )  # fmt: skip
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    return summary, {row["uid"]: row for row in rows}


# --- mistyped cells --------------------------------------------------------------------------------

MISTYPED_CELLS = {  # column -> a column of the wrong type, as a hostile or buggy producer writes it
    "text": pa.array([7, 8, 9], pa.int64()),
    "language": pa.array([1, 2, 3], pa.int32()),
    "url": pa.array([1.5, 2.5, 3.5], pa.float64()),
    "url as a list": pa.array([["http://a"], ["http://b"], []], pa.list_(pa.string())),
}


@pytest.mark.parametrize("case", list(MISTYPED_CELLS))
def test_a_mistyped_column_fails_its_rows_with_a_reason_and_the_batch_is_written(case, tmp_path, server):
    column = case.split()[0]
    good = {
        "uid": ["u0", "u1", "u2"],
        "url": [server.url("/photo/astronaut.jpg?size=200")] * 3,
        "text": ["an astronaut"] * 3,
        "language": ["en"] * 3,
    }
    table = pa.table({**good, column: MISTYPED_CELLS[case]})
    summary, rows = _score(tmp_path, table, server)
    assert sorted(rows) == ["u0", "u1", "u2"]
    assert {row["status"] for row in rows.values()} == {"invalid_input"}
    assert all(f"{column} is " in row["error"] and "not a string" in row["error"] for row in rows.values())
    assert summary["stages"][0]["stage"] == "read" and summary["stages"][0]["dropped"] == {"invalid_input": 3}


def test_one_bad_cell_fails_its_row_only(tmp_path, server):
    records = [
        {"uid": f"u{i}", "url": server.url(f"/photo/astronaut.jpg?size=200&i={i}"), "text": "an astronaut", "language": "en"}
        for i in range(4)
    ]
    records[1]["text"], records[2]["url"], records[3]["language"] = 42, ["http://x"], {"code": "en"}
    batch = rows_to_batch(records, "b")
    assert [row.problem is None for row in batch.rows] == [True, False, False, False]
    assert "text is int 42, not a string" in batch.rows[1].problem

    table = pa.table({"uid": ["ok", "bad"], "url": [server.url("/photo/astronaut.jpg?size=200"), "http://x"],
                      "text": ["an astronaut", "t"], "language": ["en", "en"]})  # fmt: skip
    summary, rows = _score(tmp_path, table, server)
    assert rows["ok"]["status"] == STATUS_OK and rows["bad"]["status"] != STATUS_OK


# --- images whose header lies, and tracking pixels ----------------------------------------------------


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real 480 x 480 JPEG whose frame header claims width x height."""
    body = photo_bytes("astronaut", "jpg", 480)
    sof = body.find(b"\xff\xc0")
    return body[: sof + 5] + struct.pack(">HH", height, width) + body[sof + 9 :]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, "PNG")
    return buffer.getvalue()


IMAGE_CASES = {  # name -> (body, status)
    "JPEG claiming 9000 x 9000 over 480 x 480 data": (_jpeg_claiming(9000, 9000), "decode_error"),
    "JPEG claiming 2000 x 1000 over 480 x 480 data": (_jpeg_claiming(2000, 1000), "decode_error"),
    "1 x 1 pixel": (_png(1, 1), "too_small"),
    "3 x 200 sliver": (_png(3, 200), "too_many_pixels"),
    "9 x 9 icon": (_png(9, 9), "too_small"),
    "40,000 x 30 banner": (_png(40_000, 30), "too_many_pixels"),
}


@pytest.mark.parametrize("name", list(IMAGE_CASES))
def test_lying_and_tiny_images_are_refused_with_a_reason(name):
    body, status = IMAGE_CASES[name]
    with pytest.raises(ImageRejected) as rejected:
        decode(body, ImageConfig(min_bytes=1))
    assert rejected.value.status == status


def test_a_gross_frame_lie_is_refused_from_the_header_before_any_decoder():
    """The batched (GPU) decoder fills missing rows with grey like Pillow; the header check stops
    a frame whose data is shorter than any encoder could make it before that decoder runs."""
    from gpu_workers.batch_decode import BatchDecoder

    outcomes = BatchDecoder(ImageConfig(min_bytes=1), "cpu").decode([_jpeg_claiming(9000, 9000), photo_bytes("astronaut", "jpg", 480)])
    assert isinstance(outcomes[0], ImageRejected) and "too short" in outcomes[0].message
    assert not isinstance(outcomes[1], ImageRejected)
    flat = io.BytesIO()
    Image.new("L", (4000, 3000), 0).save(flat, "JPEG", quality=1, progressive=True)  # as small as JPEGs get
    assert decode(flat.getvalue(), ImageConfig(min_bytes=1)).original_width == 4000


def test_recorded_size_is_the_decoded_size():
    honest = photo_bytes("astronaut", "jpg", 480)
    decoded = decode(honest, ImageConfig(min_bytes=1, size=None, resize_mode="no"))
    assert (decoded.original_width, decoded.original_height) == decoded.image.size == (480, 480)
    assert decode(_png(10, 10), ImageConfig(min_bytes=1)).original_width == 10  # the minimum side itself passes
    assert decode(_png(10, 10), ImageConfig(min_bytes=1, min_side=1)).original_width == 10


# --- a slow, healthy host --------------------------------------------------------------------------


def test_waiting_for_a_busy_hosts_slots_is_not_a_timeout():
    """40 answers of 0.6 s each through 4 slots take 6 s; each request alone takes 0.6 s of a 2 s deadline."""
    with ImageServer() as slow:
        items = [(str(i), slow.url(f"/photo/astronaut.jpg?size=64&delay=0.6&i={i}")) for i in range(40)]
        config = DownloadConfig(allow_hosts=("127.0.0.1",), per_host_concurrency=4, timeout_s=2.0, retries=0)
        results = list(download(items, config, max_in_flight=40))
        assert slow.peak_concurrency <= 4
    statuses = [r.status for r in results]
    assert statuses.count(STATUS_OK) == 40, sorted(set(statuses))
