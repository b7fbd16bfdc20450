"""Writer: schema-true results, the clip-retrieval layout, webdataset shards, atomic local/S3 files."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from datetime import UTC, datetime

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest

from altlake import storage
from altlake.schemas import WORKER_RESULTS
from altlake.storage import S3Options
from gpu_workers.writer import (
    IMG_EMB_FILE,
    METADATA_FILE,
    TEXT_EMB_FILE,
    ImageSpool,
    OutputDir,
    Sample,
    metadata_table,
    parquet_bytes,
    read_success,
    results_table,
    write_embeddings,
    write_success,
    write_webdataset,
)


def _row(uid: str, status: str = "ok", **extra) -> dict:
    return {
        "uid": uid,
        "url": f"http://img.example/{uid}.jpg",
        "status": status,
        "batch_id": "b1",
        "scored_at": datetime(2025, 1, 1, tzinfo=UTC),
        **extra,
    }


def test_results_table_is_sorted_and_has_the_contract_schema():
    rated = {"aesthetic": 6.25, "aesthetic_model": "laion-aesthetic-mlp@sha256:0123456789ab"}
    table = results_table([_row("c", **rated), _row("a", "http_4xx", error="HTTP 404", http_status=404), _row("b")])
    assert table.schema == WORKER_RESULTS.to_arrow()
    assert table.column("uid").to_pylist() == ["a", "b", "c"]
    assert table.column("http_status").to_pylist() == [404, None, None]
    assert table.schema.field("aesthetic").type == "float" and table.schema.field("aesthetic_model").type == "string"
    assert table.column("aesthetic").to_pylist() == [None, None, 6.25]  # null: a failure, or a run without the head
    assert table.column("aesthetic_model").to_pylist() == [None, None, rated["aesthetic_model"]]


@pytest.mark.parametrize(
    "rows, reason",
    [
        ([_row("a"), _row("a")], "more than once"),
        ([_row("a", "exploded")], "unknown result status"),
        ([{**_row("a"), "batch_id": None}], "'batch_id' must not be null"),
    ],
)
def test_results_table_refuses_rows_that_break_the_contract(rows, reason):
    with pytest.raises(ValueError, match=reason):
        results_table(rows)


def test_local_writes_replace_atomically_and_stale_temps_are_swept(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    out.write_bytes("sub/file.bin", b"first")
    out.write_bytes("sub/file.bin", b"second")
    assert out.read_bytes("sub/file.bin") == b"second"
    assert out.read_bytes("absent") is None
    leftover = tmp_path / "out" / "sub" / "results.parquet.tmp-123-abc"  # what a killed run leaves
    leftover.write_bytes(b"torn")
    assert out.remove_stale_temps() == 1
    assert sorted(os.listdir(tmp_path / "out" / "sub")) == ["file.bin"]


def test_embeddings_and_metadata_follow_the_clip_retrieval_layout(tmp_path):
    out = OutputDir(str(tmp_path))
    ok = results_table([_row("a", similarity=0.3, aesthetic=4.5), _row("b", similarity=-0.1, aesthetic=7.75)])
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 8)).astype(np.float16)
    txt = rng.normal(size=(2, 8)).astype(np.float16)
    write_embeddings(out, img, txt, metadata_table(ok, ["cap a", "cap b"], ["en", "de"]))

    assert np.array_equal(np.load(tmp_path / IMG_EMB_FILE), img)
    assert np.array_equal(np.load(tmp_path / TEXT_EMB_FILE), txt)
    meta = pq.read_table(tmp_path / METADATA_FILE).to_pylist()
    assert [(m["key"], m["uid"], m["caption"], m["language"]) for m in meta] == [
        ("000000000", "a", "cap a", "en"),
        ("000000001", "b", "cap b", "de"),
    ]
    assert {"url", "similarity", "punsafe", "pwatermark", "aesthetic", "sha256"} <= set(meta[0])
    assert [m["aesthetic"] for m in meta] == [4.5, 7.75]


def test_embeddings_refuse_misaligned_rows_or_wide_floats(tmp_path):
    out = OutputDir(str(tmp_path))
    meta = metadata_table(results_table([_row("a")]), ["cap"], ["en"])
    with pytest.raises(ValueError, match="rows differ"):
        write_embeddings(out, np.zeros((2, 4), np.float16), np.zeros((1, 4), np.float16), meta)
    with pytest.raises(ValueError, match="float16"):
        write_embeddings(out, np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float16), meta)
    assert not (tmp_path / IMG_EMB_FILE).exists()


def test_webdataset_shards_are_readable_split_and_deterministic(tmp_path):
    spool = ImageSpool()
    for i in (3, 1, 2, 0, 4):  # arrival order differs from key order
        spool.add(f"uid{i}", bytes([i]) * (10 + i))
    samples = [Sample(f"{i:09d}", spool.get(f"uid{i}"), f"caption {i}", {"uid": f"uid{i}"}) for i in range(5)]

    first = write_webdataset(OutputDir(str(tmp_path / "one")), samples, samples_per_shard=2)
    write_webdataset(OutputDir(str(tmp_path / "two")), samples, samples_per_shard=2)
    spool.close()

    assert first == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(tmp_path / "one" / "00001.tar") as tar:
        assert tar.getnames() == [f"00000000{k}.{s}" for k in (2, 3) for s in ("jpg", "txt", "json")]
        assert tar.extractfile("000000003.jpg").read() == bytes([3]) * 13
        assert tar.extractfile("000000003.txt").read() == b"caption 3"
        assert json.loads(tar.extractfile("000000003.json").read())["uid"] == "uid3"
    for shard in first:
        assert (tmp_path / "one" / shard).read_bytes() == (tmp_path / "two" / shard).read_bytes()


def test_success_marker_round_trip(tmp_path):
    out = OutputDir(str(tmp_path))
    assert read_success(out) is None
    write_success(out, {"rows": 3, "statuses": {"ok": 2, "http_4xx": 1}})
    assert read_success(out) == {"rows": 3, "statuses": {"ok": 2, "http_4xx": 1}}


class _BreaksAfter(io.RawIOBase):
    """A file whose read fails part-way: a crash in the middle of an upload."""

    def __init__(self, size: int, fail_at: int):
        self.size, self.fail_at, self.position = size, fail_at, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.position >= self.fail_at:
            raise OSError("disk vanished mid-upload")
        n = min(len(buffer), self.size - self.position, self.fail_at - self.position)
        buffer[:n] = b"x" * n
        self.position += n
        return n


def test_s3_files_appear_whole_or_not_at_all(moto_server):
    bucket = f"out-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=moto_server)
    client.create_bucket(Bucket=bucket)
    out = OutputDir(f"s3://{bucket}/batches/b1/output", s3_endpoint=moto_server)

    out.write_bytes("results.parquet", parquet_bytes(results_table([_row("a")])))
    assert pq.read_table(io.BytesIO(out.read_bytes("results.parquet"))).column("uid").to_pylist() == ["a"]

    # 20 MB goes up as a multipart upload; it fails after 12 MB.
    with pytest.raises(OSError, match="disk vanished"):
        storage.upload_file(io.BufferedReader(_BreaksAfter(20 * 2**20, 12 * 2**20)), out.path("00000.tar"), S3Options(endpoint=moto_server))
    assert out.read_bytes("00000.tar") is None
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # (the torn upload is deleted; pyarrow then keeps an empty "folder/" marker object, which no reader counts as a file)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"] if not o["Key"].endswith("/")]
    assert keys == ["batches/b1/output/results.parquet"]
