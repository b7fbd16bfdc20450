"""altlake.storage against both stores it serves: a local folder and an S3 server (moto on 127.0.0.1)."""

from __future__ import annotations

import gzip
import io
import os
import uuid
from pathlib import Path

import boto3
import pytest

from altlake import storage
from altlake.config import Settings
from altlake.storage import Credentials, ObjectExistsError, S3Options


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A fresh, empty folder on each store: tmp_path, or a new bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "store")
    endpoint = request.getfixturevalue("moto_server")
    bucket = f"store-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    request.node.options = S3Options(endpoint=endpoint)
    return f"s3://{bucket}/prefix"


@pytest.fixture
def options(request, root) -> S3Options | None:
    return getattr(request.node, "options", None)


def _all_files(root: str, options) -> list[str]:
    """Every file under root, temp files included (a direct look, not list_files' filtered view)."""
    filesystem, path = storage.resolve(root, options)
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True, recursive=True))
    return sorted(i.path[len(path) + 1 :] for i in infos if i.type == fs.FileType.File)


def test_write_read_round_trip_and_overwrite(root, options):
    url = storage.join(root, "a", "b.bin")
    data = bytes(range(256)) * 1000
    storage.write_bytes(url, data, options)
    assert storage.read_bytes(url, options) == data
    assert storage.exists(url, options)
    storage.write_bytes(url, b"second", options)  # not exclusive: replaced
    with storage.open_input_stream(url, options) as stream:
        assert stream.read() == b"second"
    assert _all_files(root, options) == ["a/b.bin"]  # no temp file left beside it


def test_compressed_files_are_stored_and_read_as_they_are(root, options):
    """pyarrow would (de)compress by file extension; a .gz WAT or listing must keep its own bytes."""
    url = storage.join(root, "wat.paths.gz")
    data = gzip.compress(b"crawl-data/a.warc.wat.gz\n")
    storage.write_bytes(url, data, options)
    assert storage.read_bytes(url, options) == data
    filesystem, path = storage.resolve(url, options)
    with filesystem.open_input_stream(path, compression=None) as raw:
        assert raw.read() == data  # stored compressed once, not twice


def test_exclusive_write_refuses_an_existing_file_and_keeps_it(root, options):
    url = storage.join(root, "release", "removals.parquet")
    storage.write_bytes(url, b"first", options, exclusive=True)
    with pytest.raises(ObjectExistsError, match="removals.parquet already exists; not overwritten"):
        storage.write_bytes(url, b"second", options, exclusive=True)
    with pytest.raises(FileExistsError):  # ObjectExistsError is a FileExistsError
        storage.upload_file(io.BytesIO(b"third"), url, options, exclusive=True)
    assert storage.read_bytes(url, options) == b"first"
    assert _all_files(root, options) == ["release/removals.parquet"]


class _BreaksAfter(io.RawIOBase):
    """A source that yields `fail_at` bytes, then fails (a disk vanishing mid-copy)."""

    def __init__(self, fail_at: int):
        self.fail_at, self.position = fail_at, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.position >= self.fail_at:
            raise OSError("disk vanished mid-copy")
        n = min(len(buffer), self.fail_at - self.position)
        buffer[:n] = b"x" * n
        self.position += n
        return n


@pytest.mark.parametrize("fail_at", [1000, 12 << 20])  # a single PUT, and a multipart upload on S3
def test_a_failed_write_leaves_no_partial_or_temp_file(root, options, fail_at):
    url = storage.join(root, "shard.tar")
    with pytest.raises(OSError, match="disk vanished"):
        storage.upload_file(io.BufferedReader(_BreaksAfter(fail_at)), url, options)
    assert not storage.exists(url, options)
    assert _all_files(root, options) == []


def test_upload_and_move_a_local_file(root, options, tmp_path):
    source = tmp_path / "scratch.tar"
    source.write_bytes(b"t" * 5000)
    storage.upload_file(source, storage.join(root, "copy.tar"), options)
    assert source.exists() and storage.read_bytes(storage.join(root, "copy.tar"), options) == b"t" * 5000
    storage.move_file(source, storage.join(root, "dir", "moved.tar"), options)
    assert not source.exists() and storage.read_bytes(storage.join(root, "dir", "moved.tar"), options) == b"t" * 5000


def test_list_and_delete(root, options):
    for name in ("b.txt", "a.txt", "sub/c.txt", "sub/deeper/d.txt"):
        storage.write_bytes(storage.join(root, *name.split("/")), name.encode(), options)
    assert storage.list_files(root, options) == ["a.txt", "b.txt"]
    assert storage.list_files(root, options, recursive=True) == ["a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.txt"]
    assert storage.list_files(storage.join(root, "sub"), options) == ["c.txt"]
    assert storage.list_files(storage.join(root, "missing"), options) == []

    assert storage.delete(storage.join(root, "a.txt"), options)
    assert not storage.delete(storage.join(root, "a.txt"), options)  # already gone
    assert storage.delete(storage.join(root, "sub"), options)  # a folder and all under it
    assert storage.list_files(root, options, recursive=True) == ["b.txt"]


def test_last_modified_gives_each_entry_its_newest_file(root, options):
    from datetime import datetime, timedelta, timezone

    before = datetime.now(timezone.utc) - timedelta(minutes=5)
    for name in ("a.txt", "sub/c.txt", "sub/deeper/d.txt"):
        storage.write_bytes(storage.join(root, *name.split("/")), name.encode(), options)
    times = storage.last_modified(root, options)
    assert set(times) == {"a.txt", "sub"}
    assert all(before < t < datetime.now(timezone.utc) + timedelta(minutes=5) for t in times.values())
    assert storage.last_modified(storage.join(root, "missing"), options) == {}
    if options is None:  # a local folder: age one file, the folder stays as new as its newest
        old = (datetime.now(timezone.utc) - timedelta(days=3)).timestamp()
        os.utime(Path(root) / "sub" / "c.txt", (old, old))
        assert storage.last_modified(root, options)["sub"] > before
        os.utime(Path(root) / "sub" / "deeper" / "d.txt", (old, old))
        assert storage.last_modified(root, options)["sub"] < before

def test_a_missing_file_is_a_clear_error_naming_it(root, options, tmp_path):
    url = storage.join(root, "nope", "missing.parquet")
    for read in (storage.read_bytes, storage.open_input_stream, lambda u, o: storage.fetch(u, tmp_path / "cache", o)):
        with pytest.raises(FileNotFoundError) as error:
            read(url, options)
        assert str(error.value) == f"[Errno 2] No such file: '{url}'"
    with pytest.raises(IsADirectoryError, match="Is a directory"):
        storage.write_bytes(storage.join(root, "dir", "f"), b"x", options)
        storage.read_bytes(storage.join(root, "dir"), options)
    assert not storage.exists(url, options)


def test_fetch_caches_a_copy_and_refreshes_it_when_the_file_changes(root, options, tmp_path):
    url = storage.join(root, "weights", "clip.pt")
    storage.write_bytes(url, b"v1" * 100, options)
    cache = tmp_path / "cache"
    local = storage.fetch(url, cache, options)
    assert local.read_bytes() == b"v1" * 100
    if storage.is_object_store(url):
        assert cache in local.parents  # downloaded into the cache
        mtime = local.stat().st_mtime_ns
        assert storage.fetch(url, cache, options) == local and local.stat().st_mtime_ns == mtime  # not downloaded again
        assert not [p for p in local.parent.iterdir() if storage.TEMP_MARK in p.name]
    else:
        assert local == Path(url)  # a local file is used where it is
    storage.write_bytes(url, b"v2" * 100, options)  # the same size, within the same second
    assert storage.fetch(url, cache, options).read_bytes() == b"v2" * 100


def test_join():
    assert storage.join("s3://bucket/lake/", "batches", "b1/", "input.parquet") == "s3://bucket/lake/batches/b1/input.parquet"
    assert storage.join("/data/lake", "batches", "x") == os.path.join("/data/lake", "batches", "x")
    assert storage.join("file:///data/lake", "x") == "file:///data/lake/x"


def test_locations_and_their_schemes(tmp_path):
    assert [storage.is_object_store(u) for u in ("s3://b/k", "s3a://b/k", "s3n://b/k", "/b/k", "file:///b/k")] == [True] * 3 + [False] * 2
    local = tmp_path / "f.txt"
    storage.write_bytes(f"file://{local}", b"via file://")
    assert storage.read_bytes(str(local)) == b"via file://"
    assert storage.read_bytes(f"file:{local}") == b"via file://"  # Hadoop's file:/path spelling
    with pytest.raises(ValueError, match="no bucket"):
        storage.resolve("s3:///key")


def test_s3_schemes_name_the_same_object_and_share_one_filesystem(moto_server):
    bucket = f"schemes-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    options = S3Options.of(Settings(s3_endpoint=moto_server))
    storage.write_bytes(f"s3a://{bucket}/x/data.bin", b"one object", options)
    assert storage.read_bytes(f"s3://{bucket}/x/data.bin", options) == b"one object"
    assert storage.read_bytes(f"s3n://{bucket}/x/data.bin", options) == b"one object"
    assert storage.resolve(f"s3://{bucket}/x", options) == storage.resolve(f"s3a://{bucket}/x/", S3Options(endpoint=moto_server))


def test_explicit_credentials_sign_the_requests_instead_of_the_environment(monkeypatch):
    """The Airflow plugin passes its connection's keys: they, not the AWS_* variables, sign requests.
    (moto accepts any signature, so a bare HTTP server records the Authorization headers instead.)"""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        for credentials, key in ((Credentials("from-connection", "secret"), "from-connection"), (None, "from-environment")):
            seen.clear()
            try:
                storage.exists("s3://bucket/key", S3Options(endpoint=endpoint, credentials=credentials))
            except OSError:
                pass  # the recorder answers 404 to everything
            assert seen and all(f"Credential={key}/" in header for header in seen), seen
    finally:
        server.shutdown()
    assert "secret" not in repr(Credentials("from-connection", "secret"))
