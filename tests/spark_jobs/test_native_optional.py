"""The C readers (native/watread) are optional: without them the extraction gives the very same
result on the pure-Python path and says so once; and the package's sdist and wheel carry what they
need (the vendored libdeflate's headers and licence, the two extension modules)."""

from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WATREAD = REPO / "native" / "watread"
LIBDEFLATE = WATREAD / "third_party" / "libdeflate"
NATIVE = ("watgunzip", "watlinks")

# Runs in a fresh interpreter: `blocked` native modules made unimportable (None in sys.modules makes
# `import name` raise ImportError, as on an executor without the package), then every WAT extracted.
CHILD = r"""
import dataclasses, json, logging, sys

blocked, paths = json.loads(sys.argv[1])
for name in blocked:
    sys.modules[name] = None

notices = []
handler = logging.Handler()
handler.emit = lambda record: notices.append((record.levelname, record.getMessage()))
logging.getLogger("spark_jobs.wat").addHandler(handler)

from spark_jobs import wat

out = {"native": {name: getattr(wat, name) is not None for name in ("watgunzip", "watlinks")}, "files": {}}
for path in paths:
    result = wat.process_wat(path)
    out["files"][path] = {
        "summary": result.summary() | {"path": "", "duration_s": 0},
        "pairs": [dataclasses.astuple(p) for p in result.pairs],
        "raw_links": wat.read_raw_links(path) if result.status == "done" and not result.bad_records else None,
    }
out["notices"] = notices
print(json.dumps(out))
"""


def _extract(blocked: tuple[str, ...], paths: list[Path]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([list(blocked), [str(p) for p in paths]])],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _records(path: Path) -> list[bytes]:
    return [r for r in re.split(rb"(?=WARC/1\.0\r\n)", path.read_bytes()) if r]


def _gzip_members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(part, mtime=0) for part in parts)


@pytest.fixture(scope="module")
def wats(tmp_path_factory) -> list[Path]:
    """The real sample plain and gzipped as Common Crawl does, a generated WAT, and broken files."""
    from spark_jobs.watgen import generate_wat
    from tests.conftest import SAMPLE_WAT

    if not SAMPLE_WAT.exists():
        raise FileNotFoundError(f"the real WAT sample is missing: {SAMPLE_WAT}")
    here = tmp_path_factory.mktemp("wats")
    records = _records(SAMPLE_WAT)
    members = _gzip_members(*records)
    sixth_end = len(_gzip_members(*records[:6]))
    bad_crc = bytearray(members)
    bad_crc[sixth_end - 6] ^= 0xFF
    generated = here / "generated.warc.wat"
    generate_wat(generated, 150, seed=5)
    files = {
        "sample.warc.wat": SAMPLE_WAT.read_bytes(),
        "sample.warc.wat.gz": members,
        "sample-one-member.warc.wat.gz": gzip.compress(SAMPLE_WAT.read_bytes(), mtime=0),
        "sample-padded.warc.wat.gz": _gzip_members(*records[:9]) + b"\0" * 7 + _gzip_members(*records[9:]) + b"\0" * 5,
        "generated.warc.wat.gz": _gzip_members(*_records(generated)),
        # A broken JSON record (same length): counted in bad_records, with simdjson's message either way.
        "bad-json.warc.wat": generated.read_bytes().replace(b'"Links":[', b'"Links":{', 1),
        "truncated.warc.wat.gz": members[: len(members) // 2],
        "bad-crc.warc.wat.gz": bytes(bad_crc),
        "garbage.warc.wat.gz": members[:sixth_end] + b"not gzip at all" + members[sixth_end:],
    }
    for name, data in files.items():
        (here / name).write_bytes(data)
    return [here / name for name in files]


@pytest.fixture(scope="module")
def with_native(wats) -> dict:
    out = _extract((), wats)
    assert out["native"] == {"watgunzip": True, "watlinks": True}, "the C readers must be installed for the comparison"
    assert out["notices"] == []
    return out


@pytest.mark.parametrize("blocked", [NATIVE, ("watgunzip",), ("watlinks",)], ids=["none", "no-watgunzip", "no-watlinks"])
def test_extraction_without_the_c_readers_is_the_same_and_says_so_once(wats, with_native, blocked):
    without = _extract(blocked, wats)
    assert without["native"] == {name: name not in blocked for name in NATIVE}
    assert without["files"] == with_native["files"]  # counts, errors, every pair (uid first), raw links
    sample = with_native["files"][str(wats[0])]
    assert sample["summary"]["status"] == "done" and (sample["summary"]["raw_links"], sample["summary"]["raw_pairs"]) == (88, 33)
    assert len({p[0] for p in sample["pairs"]}) == sample["summary"]["kept_pairs"] > 0
    statuses = {Path(p).name: f["summary"]["status"] for p, f in without["files"].items()}
    assert [name for name, status in statuses.items() if status == "failed"] == [
        "truncated.warc.wat.gz", "bad-crc.warc.wat.gz", "garbage.warc.wat.gz"]
    assert without["files"][str(wats[5])]["summary"]["bad_records"] == 1
    # One notice for the whole process (nine files read), naming what is missing and how to install it.
    assert len(without["notices"]) == 1
    level, message = without["notices"][0]
    assert level == "WARNING"
    assert "not installed" in message and "slower" in message and "pip install ./native/watread" in message
    assert all(name in message for name in blocked)


def test_python_gunzip_members_keeps_the_c_contract():
    """_gunzip_members (ISA-L) returns what watgunzip.gunzip_members returns, call by call, on whole,
    cut, corrupt and zero-padded member layouts: so _MemberReader's chunks and hand-overs match."""
    import watgunzip

    from spark_jobs.wat import _gunzip_members

    rng = random.Random(11)
    calls = 0
    for trial in range(60):
        parts = [rng.choice([b"", rng.randbytes(rng.randrange(1, 40_000)), b"WARC record text " * rng.randrange(1, 3000)])
                 for _ in range(rng.randrange(1, 25))]
        if trial % 12 == 0:
            parts.insert(rng.randrange(len(parts)), rng.randbytes(3 << 20))  # larger than limit + 1 MiB of room
        data = bytearray(_gzip_members(*parts))
        damage = trial % 4
        if damage == 1:
            data = data[: rng.randrange(1, len(data))]
        elif damage == 2:
            data[rng.randrange(len(data))] ^= 0xFF
        elif damage == 3:
            at = rng.randrange(len(data))
            data[at:at] = b"\0" * rng.randrange(1, 20)
        for limit in (1, 997, 50_000, 1 << 20):
            offset = 0
            while True:
                expected = watgunzip.gunzip_members(bytes(data), offset, limit)
                assert _gunzip_members(bytes(data), offset, limit) == expected, (trial, limit, offset)
                calls += 1
                if expected[1] == offset:
                    break
                offset = expected[1]
    assert calls > 500
    for offset, limit in ((len(data) + 1, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError):
            _gunzip_members(bytes(data), offset, limit)


def _uv() -> str:
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip(f"uv is not installed beside {sys.executable}")
    return str(uv)


@pytest.mark.timeout(300)
def test_sdist_and_wheel_carry_libdeflate_and_the_modules(tmp_path):
    """`uv build` makes the sdist, then the wheel from that sdist alone: the sdist must be complete."""
    done = subprocess.run([_uv(), "build", "--quiet", str(WATREAD), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr
    (sdist,) = tmp_path.glob("*.tar.gz")
    (wheel,) = tmp_path.glob("*.whl")

    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0]
        listed = {name.removeprefix(root + "/") for name in tar.getnames()}
    vendored = {str(p.relative_to(WATREAD)) for p in LIBDEFLATE.rglob("*") if p.is_file()}
    assert {f for f in vendored if f.endswith(".h")} >= {"third_party/libdeflate/libdeflate.h",
                                                         "third_party/libdeflate/common_defs.h"}
    missing = vendored - listed
    assert not missing, f"the sdist lacks vendored files: {sorted(missing)}"
    assert {"third_party/libdeflate/COPYING", "third_party/README.md", "watgunzip.c", "watlinks.c",
            "setup.py", "pyproject.toml", "MANIFEST.in"} <= listed
    assert not any("/build/" in name or name.endswith((".o", ".so")) for name in listed)

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        assert {f"watgunzip{suffix}", f"watlinks{suffix}"} <= names
        # Nothing else lands in site-packages (no vendored sources picked up as a package).
        assert {n.split("/")[0] for n in names} - {f"watgunzip{suffix}", f"watlinks{suffix}"} == {"altlake_watread-0.2.0.dist-info"}
        assert any(n.endswith(".dist-info/licenses/third_party/libdeflate/COPYING") for n in names)
        whl.extractall(tmp_path / "unpacked")
    # The built modules import and work (ahead of the installed ones on sys.path).
    check = (f"import sys; sys.path.insert(0, {str(tmp_path / 'unpacked')!r}); import gzip, watgunzip, watlinks; "
             f"assert watgunzip.__file__.startswith({str(tmp_path)!r}) and watlinks.__file__.startswith({str(tmp_path)!r}); "
             "data = gzip.compress(b'one') + gzip.compress(b'two'); "
             "assert watgunzip.gunzip_members(data, 0, 100) == (b'onetwo', len(data))")
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)
