"""One storage layer: every file altlake reads or writes outside Spark's own table IO goes through here.

A location is a URL string: a local path, file://, or s3:// / s3a:// / s3n:// (the three S3 schemes
name the same object). S3 is reached through pyarrow.fs, which every runtime already has (Spark
driver, scoring worker, search service); where the endpoint and keys come from is decided once, by
`S3Options`: Settings.s3_endpoint (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS itself),
explicit `Credentials` when a caller holds them (the Airflow plugin, from its S3 connection), else
the AWS credential chain (AWS_* variables, ~/.aws, instance roles).

Writes are atomic: a file is absent or whole. Locally it is written to a temp name in the target's
folder and renamed; on S3 an object only appears when its upload completes, and an upload whose
source fails part way is deleted before the error propagates. `exclusive=True` refuses to replace
an existing file (locally a hard link, which fails on an existing name; on S3 a check before the
PUT, which S3's plain PUT cannot make conditional).
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pyarrow import fs

if TYPE_CHECKING:
    from altlake.config import Settings

S3_SCHEMES = ("s3://", "s3a://", "s3n://")
TEMP_MARK = ".tmp-"  # local temp files carry this in their name until they are renamed into place
_CHUNK = 8 << 20
DEFAULT_REGION = "us-east-1"


class ObjectExistsError(FileExistsError):
    """An exclusive write found the file already there: it was left as it was."""


@dataclass(frozen=True)
class Credentials:
    """Explicit S3 keys, for callers that hold them (repr hides the secrets)."""

    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key[:4]}...)"


@dataclass(frozen=True)
class S3Options:
    """Where S3 is and who we are there; the defaults are the environment's (see the module doc)."""

    endpoint: str = ""
    credentials: Credentials | None = None
    region: str = ""

    @classmethod
    def of(cls, settings: "Settings", credentials: Credentials | None = None) -> "S3Options":
        return cls(endpoint=settings.s3_endpoint, credentials=credentials)


def is_object_store(url: str) -> bool:
    return url.startswith(S3_SCHEMES)


def resolve(url: str, options: S3Options | None = None) -> tuple[fs.FileSystem, str]:
    """(pyarrow filesystem, path in it) for a location; S3 paths are "bucket/key"."""
    if is_object_store(url):
        path = url.split("://", 1)[1].rstrip("/")
        if not path or path.startswith("/"):
            raise ValueError(f"no bucket in S3 URL {url!r}")
        return _s3_filesystem(*_s3_key(options or S3Options())), path
    return fs.LocalFileSystem(), _local_path(url)


def hadoop_url(url: str) -> str:
    """The spelling Spark's Hadoop filesystem reads: s3a:// for every S3 scheme (it has no s3:// by default)."""
    return "s3a://" + url.split("://", 1)[1] if is_object_store(url) else url


def join(url: str, *parts: str) -> str:
    """`url` with path parts appended by "/" (a local path keeps its OS-style join)."""
    if is_object_store(url) or url.startswith("file:"):
        return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return os.path.join(url, *parts)


def exists(url: str, options: S3Options | None = None) -> bool:
    filesystem, path = resolve(url, options)
    return filesystem.get_file_info(path).type != fs.FileType.NotFound


def open_input_stream(url: str, options: S3Options | None = None) -> BinaryIO:
    """A binary stream of the file; FileNotFoundError naming the URL when there is none."""
    filesystem, path = resolve(url, options)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError(errno.ENOENT, "No such file", url)
    if info.type == fs.FileType.Directory:
        raise IsADirectoryError(errno.EISDIR, "Is a directory", url)
    return filesystem.open_input_stream(path, compression=None)


def read_bytes(url: str, options: S3Options | None = None) -> bytes:
    with open_input_stream(url, options) as stream:
        return stream.read()


def write_bytes(url: str, data: bytes, options: S3Options | None = None, *, exclusive: bool = False) -> None:
    """Write a whole file atomically; with `exclusive`, ObjectExistsError if it already exists."""
    filesystem, path = resolve(url, options)
    if isinstance(filesystem, fs.LocalFileSystem):
        _local_write(path, exclusive, lambda out: out.write(data))
        return
    _refuse_existing(filesystem, path, url, exclusive)
    with filesystem.open_output_stream(path, compression=None) as out:  # the bytes are in hand: one upload, complete or absent
        out.write(data)


def upload_file(source: str | os.PathLike | BinaryIO, url: str, options: S3Options | None = None, *, exclusive: bool = False) -> None:
    """Copy a local file (a path or an open binary file) to `url`, atomically, streaming it."""
    filesystem, path = resolve(url, options)
    if isinstance(filesystem, fs.LocalFileSystem):
        _local_write(path, exclusive, lambda out: _copy_from(source, out))
        return
    _refuse_existing(filesystem, path, url, exclusive)
    try:
        with filesystem.open_output_stream(path, compression=None) as out:
            _copy_from(source, out)
    except BaseException:
        # pyarrow completes an upload when its stream closes, even after our source failed: the
        # torn object is deleted so that the file is absent, as after any failed write.
        _delete_quietly(filesystem, path)
        raise


def move_file(local_path: str | os.PathLike, url: str, options: S3Options | None = None) -> None:
    """Put a finished local file at `url` and remove it here (a rename when both are on local disk)."""
    filesystem, path = resolve(url, options)
    if isinstance(filesystem, fs.LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temp = _temp_name(path)
        shutil.move(os.fspath(local_path), temp)  # another disk: copied to a temp name first
        os.replace(temp, path)
        return
    upload_file(local_path, url, options)
    os.remove(local_path)


def list_files(url: str, options: S3Options | None = None, *, recursive: bool = False) -> list[str]:
    """Paths (relative to `url`, "/"-separated) of the files under a folder, sorted; [] when missing.
    Local temp files of unfinished writes are not listed."""
    filesystem, path = resolve(url, options)
    root = path.rstrip("/")
    infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True, recursive=recursive))
    names = (info.path[len(root) + 1 :] if root else info.path for info in infos if info.type == fs.FileType.File)
    return sorted(name for name in names if TEMP_MARK not in posixpath.basename(name))


def last_modified(url: str, options: S3Options | None = None) -> dict[str, datetime]:
    """Each folder or file directly under `url` -> the newest modification time of the files in it
    (UTC); {} when missing. Object stores have no folder times: a folder is as new as its newest file."""
    filesystem, path = resolve(url, options)
    root = path.rstrip("/")
    newest: dict[str, datetime] = {}
    for info in filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True, recursive=True)):
        if info.type != fs.FileType.File or info.mtime is None:
            continue
        top = info.path[len(root) + 1 :].split("/", 1)[0]
        when = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=timezone.utc)
        newest[top] = max(newest.get(top, when), when)
    return newest

def delete(url: str, options: S3Options | None = None) -> bool:
    """Delete a file, or a folder with everything under it; False when there was nothing."""
    filesystem, path = resolve(url, options)
    kind = filesystem.get_file_info(path).type
    if kind == fs.FileType.NotFound:
        return False
    if kind == fs.FileType.Directory:
        filesystem.delete_dir(path)
    else:
        filesystem.delete_file(path)
    return True


def fetch(url: str, cache_dir: str | os.PathLike, options: S3Options | None = None) -> Path:
    """A local copy of the file: a local file as it is; an object downloaded into `cache_dir` once per
    version (its ETag), atomically, so concurrent readers never see half a file."""
    filesystem, path = resolve(url, options)
    if isinstance(filesystem, fs.LocalFileSystem):
        if filesystem.get_file_info(path).type != fs.FileType.File:
            raise FileNotFoundError(errno.ENOENT, "No such file", url)
        return Path(path)
    local = Path(cache_dir, "s3", *path.split("/"))
    stamp = local.with_name(local.name + ".version")
    with open_input_stream(url, options) as stream:  # one HEAD request; the body only when stale
        head = stream.metadata()
        version = (head.get("ETag") or head.get("Last-Modified", b"") + b" " + head.get("Content-Length", b"")).decode()
        if local.is_file() and stamp.is_file() and stamp.read_text() == version:
            return local
        _local_write(str(local), False, lambda out: _copy_from(stream, out))
    _local_write(str(stamp), False, lambda out: out.write(version.encode()))
    return local


# --- internals --------------------------------------------------------------------------------------


def _local_path(url: str) -> str:
    """file:///x, file:/x (Hadoop's spelling) and plain paths -> a local path."""
    if url.startswith("file://"):
        return url[len("file://") :]
    return url.removeprefix("file:")


def _s3_key(options: S3Options) -> tuple[str, Credentials | None, str, tuple[str | None, ...]]:
    """What a filesystem object depends on, defaults resolved, so equal settings share one."""
    endpoint = options.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    region = options.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    # The credential chain reads these when the filesystem is made: a change makes a new one.
    chain = tuple(os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"))
    return endpoint, options.credentials, region, chain if options.credentials is None else ()


@lru_cache(maxsize=16)
def _s3_filesystem(endpoint: str, credentials: Credentials | None, region: str, _chain: tuple) -> fs.S3FileSystem:
    keys = {}
    if credentials is not None:
        keys = {"access_key": credentials.access_key, "secret_key": credentials.secret_key, "session_token": credentials.session_token}
    scheme, _, host = endpoint.rpartition("://")
    return fs.S3FileSystem(region=region, endpoint_override=host or None, scheme=scheme or "https", **keys)


def _refuse_existing(filesystem: fs.FileSystem, path: str, url: str, exclusive: bool) -> None:
    if exclusive and filesystem.get_file_info(path).type != fs.FileType.NotFound:
        raise ObjectExistsError(f"{url} already exists; not overwritten")


def _temp_name(path: str) -> str:
    return f"{path}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _local_write(path: str, exclusive: bool, fill) -> None:
    """Write through `fill(out)` to a temp file beside `path`, then rename it into place (or, when
    exclusive, hard-link it, which refuses an existing name); the temp file never outlives a failure."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}{TEMP_MARK}")
    try:
        with os.fdopen(handle, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        if exclusive:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise ObjectExistsError(f"{path} already exists; not overwritten") from None
        else:
            os.replace(temp, path)
    finally:
        if os.path.lexists(temp):  # renamed away on success; left by a link or a failure
            os.remove(temp)


def _copy_from(source: str | os.PathLike | BinaryIO, out) -> None:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            shutil.copyfileobj(f, out, _CHUNK)
    else:
        shutil.copyfileobj(source, out, _CHUNK)


def _delete_quietly(filesystem: fs.FileSystem, path: str) -> None:
    try:
        filesystem.delete_file(path)
    except OSError:
        pass
