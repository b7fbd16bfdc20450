"""The gunzip contenders that any Python can run: stdlib zlib, and (in the peers' venv) python-isal and
deflate, the PyPI libdeflate bindings. Imported by bench/extract/gunzip.py for zlib, which it times in
our own process, and run as a script in the `gunzip-peers` venv for the rest, so neither peer package
lands in our venv. Stdlib-only at import: each peer is imported by the contender that uses it.

Every contender turns the whole WAT, held in memory, into its decoded bytes (an iterator of pieces),
and stops at a member that is not complete: how it stops is what `cut_off` reports.

    python gunzip_probe.py WAT ENDS time|digest|cut-off NAME...

ENDS holds the compressed end offset of every member (int64, from bench/extract/gunzip.py's scan);
only `deflate` reads it, because its API cannot find where a member ends. Prints one JSON object.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence

# Decoded bytes per read for the readers that take a size (watgunzip and the job read 1 MiB too).
CHUNK = 1 << 20
# Compressed bytes fed to a decompressobj at a time: a member's unused_data copies up to this much,
# so feeding the whole rest of the WAT would copy hundreds of MB per member. Most members are a few
# KB; this size was the fastest of 4-64 KiB for both zlib and ISA-L on the 60,000-page WAT.
WINDOW = 1 << 13

Contender = Callable[[bytes, Sequence[int]], Iterator[bytes]]


def _members(decompressobj: Callable, data: bytes) -> Iterator[bytes]:
    """Member by member with a zlib-style decompressobj(31), which finds each member's end itself
    and says when one is cut off (no eof): the same loop as spark_jobs.wat._gunzip_members."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        inflater = decompressobj(31)
        pieces = []
        end = offset
        while not inflater.eof and end < len(view):
            window = view[end : end + WINDOW]
            pieces.append(inflater.decompress(window))
            end += len(window) - len(inflater.unused_data)
        if not inflater.eof:
            return  # cut off: the complete members before it are out, this one is not
        yield from pieces
        offset = end


def zlib_members(data: bytes, ends: Sequence[int] = ()) -> Iterator[bytes]:
    return _members(zlib.decompressobj, data)


def isal_zlib_members(data: bytes, ends: Sequence[int] = ()) -> Iterator[bytes]:
    from isal import isal_zlib

    return _members(isal_zlib.decompressobj, data)


def isal_igzip_reader(data: bytes, ends: Sequence[int] = ()) -> Iterator[bytes]:
    """ISA-L's streaming gzip reader (multi-member in C); the job's fallback for damaged members."""
    from isal import igzip

    with igzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as reader:
        while piece := reader.read(CHUNK):
            yield piece


def deflate_members(data: bytes, ends: Sequence[int]) -> Iterator[bytes]:
    """deflate.gzip_decompress inflates one member that is the whole buffer (it takes the output
    size from the buffer's last 4 bytes and never says how much input it used), so it is handed
    each member's exact slice, from boundaries found by another inflater, for free."""
    from deflate import gzip_decompress

    view = memoryview(data)
    start = 0
    for end in ends:
        yield gzip_decompress(view[start:end])
        start = end


CONTENDERS: dict[str, Contender] = {
    "zlib": zlib_members,
    "isal_zlib": isal_zlib_members,
    "isal_igzip": isal_igzip_reader,
    "deflate": deflate_members,
}
NEEDS_ENDS = {"deflate"}  # cannot find member boundaries itself


def timed(contender: Contender, data: bytes, ends: Sequence[int]) -> dict:
    """CPU seconds to inflate everything; the pieces are only counted."""
    size = 0
    started = time.process_time()
    for piece in contender(data, ends):
        size += len(piece)
    return {"cpu_s": time.process_time() - started, "bytes": size}


def digest(contender: Contender, data: bytes, ends: Sequence[int]) -> dict:
    """sha256 and length of everything it decodes (untimed: the hashing would dominate)."""
    sha = hashlib.sha256()
    size = 0
    for piece in contender(data, ends):
        sha.update(piece)
        size += len(piece)
    return {"sha256": sha.hexdigest(), "bytes": size}


def cut_off(contender: Contender, data: bytes, ends: Sequence[int]) -> str:
    """What it does with a buffer of 3 complete members and half of the 4th, as a reader meets at
    the end of each block of input: the job needs the 3 members and a clean stop there."""
    complete = min(3, len(ends) - 1)
    start, end = (ends[complete - 1] if complete else 0), ends[complete]
    cut = start + (end - start) // 2
    expected = b"".join(zlib_members(data[:start]))
    out = io.BytesIO()
    try:
        for piece in contender(data[:cut], [*ends[:complete], cut]):
            out.write(piece)
    except Exception as exc:  # noqa: BLE001 - reporting which error is the point
        got = "its complete members" if out.getvalue() == expected else f"{out.tell()} bytes"
        return f"raises {type(exc).__name__} after {got}"
    if out.getvalue() == expected:
        return "stops cleanly after the complete members"
    return f"wrong output ({out.tell()} bytes, {len(expected)} expected)"


def read_ends(path: str) -> array:
    ends = array("q")
    with open(path, "rb") as f:
        ends.frombytes(f.read())
    return ends


def versions() -> dict[str, str]:
    """The peer packages' versions where installed (our venv has isal too; deflate only theirs)."""
    found = {"zlib": zlib.ZLIB_RUNTIME_VERSION}
    for name in ("isal", "deflate"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            pass
    return found


def main(argv: list[str]) -> None:
    wat, ends_path, mode, *names = argv
    with open(wat, "rb") as f:
        data = f.read()
    ends = read_ends(ends_path)
    run = {"time": timed, "digest": digest, "cut-off": cut_off}[mode]
    print(json.dumps({"results": {name: run(CONTENDERS[name], data, ends) for name in names}, "versions": versions()}))


if __name__ == "__main__":
    main(sys.argv[1:])
