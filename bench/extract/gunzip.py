"""Gunzip throughput per core on a Common Crawl-shaped WAT: our vendored libdeflate (`watgunzip`) vs
stdlib zlib and the maintained PyPI packages that could replace it, python-isal and deflate (libdeflate's
bindings).

libdeflate is vendored into native/watread only because nothing on PyPI inflated a WAT's tens of
thousands of small gzip members as fast; this run keeps that claim checked. Every contender inflates
the whole file from memory (the same cached WAT as bench/extract/run.py), contenders take turns in
each round, and figures are CPU seconds (time.process_time), best and median of --repeat rounds.
Every contender's decoded bytes must be identical (sha256), else the exit status is 1. The peers run
in their own venv (bench/venvs.py) through bench/extract/gunzip_probe.py. Figures go to stdout as a
table and to bench/out/gunzip.json.

    python -m bench.extract.gunzip [--pages 60000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from tempfile import TemporaryDirectory

import watgunzip
from tqdm import tqdm

from bench.extract import gunzip_probe as probe
from bench.extract.run import OUT_DIR, bench_wat
from bench.venvs import peer_venv
from spark_jobs.wat import _MemberReader

PEERS = ["isal==1.9.1", "deflate==0.9.0"]
PEER_CONTENDERS = ["isal_zlib", "isal_igzip", "deflate"]
PROBE = Path(probe.__file__)
BASELINE = "watgunzip"
# A replacement must be within this of watgunzip's speed (best round vs best round).
SPEED_TOLERANCE = 0.95
LABELS = {
    "watgunzip": "watgunzip (vendored libdeflate)",
    "reader": "altlake _MemberReader (job)",
    "zlib": "zlib decompressobj",
    "isal_zlib": "isal_zlib decompressobj",
    "isal_igzip": "isal igzip.GzipFile",
    "deflate": "deflate gzip_decompress",
}


def watgunzip_members(data: bytes, ends: Sequence[int] = ()) -> Iterator[bytes]:
    """watgunzip.gunzip_members over the buffer, 1 MiB of output a call, as _MemberReader calls it."""
    offset = 0
    while offset < len(data):
        decoded, after = watgunzip.gunzip_members(data, offset, probe.CHUNK)
        if after == offset:
            return  # a member that does not inflate whole from the buffer: the caller decides
        offset = after
        yield decoded


def job_reader(data: bytes, ends: Sequence[int] = ()) -> Iterator[bytes]:
    """The job's own reading path (spark_jobs.wat._MemberReader): watgunzip plus 1 MiB input refills,
    and ISA-L's streaming reader for what watgunzip leaves (none here, except a cut-off member)."""
    reader = _MemberReader(io.BytesIO(data))
    while piece := reader.read(probe.CHUNK):
        yield piece


LOCAL = {"watgunzip": watgunzip_members, "reader": job_reader, "zlib": probe.zlib_members}


def member_ends(data: bytes) -> array:
    """The compressed end offset of every member, from one untimed watgunzip scan (deflate needs them)."""
    ends = array("q")
    offset = 0
    while offset < len(data):
        _, after = watgunzip.gunzip_members(data, offset, 1)  # stops after the first member with output
        if after == offset:
            raise ValueError(f"not a complete gzip member at offset {offset}")
        ends.append(offset := after)
    return ends


def run_peers(python: Path, wat: Path, ends_file: Path, mode: str) -> dict:
    done = subprocess.run([str(python), str(PROBE), str(wat), str(ends_file), mode, *PEER_CONTENDERS],
                          check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(wat: Path, repeat: int, peer_python: Path | None) -> dict:
    """Every contender on `wat`: output digests, what each does at a cut-off member, and `repeat`
    alternating timed rounds. Without `peer_python`, only the in-process contenders."""
    data = wat.read_bytes()
    ends = member_ends(data)
    digests = {name: probe.digest(fn, data, ends) for name, fn in LOCAL.items()}
    cut_offs = {name: probe.cut_off(fn, data, ends) for name, fn in LOCAL.items()}
    versions = {"ours": probe.versions()}
    runs: dict[str, list[float]] = {name: [] for name in LOCAL}
    with TemporaryDirectory() as tmp:
        ends_file = Path(tmp) / "member-ends.bin"
        ends_file.write_bytes(ends.tobytes())
        if peer_python:
            peers = run_peers(peer_python, wat, ends_file, "digest")
            digests |= peers["results"]
            cut_offs |= run_peers(peer_python, wat, ends_file, "cut-off")["results"]
            versions["peers"] = peers["versions"]
            runs |= {name: [] for name in PEER_CONTENDERS}
        for _ in tqdm(range(repeat), desc="rounds", file=sys.stderr):  # turns: drifting load hits all alike
            for name, fn in LOCAL.items():
                runs[name].append(probe.timed(fn, data, ends)["cpu_s"])
            if peer_python:
                for name, figures in run_peers(peer_python, wat, ends_file, "time")["results"].items():
                    runs[name].append(figures["cpu_s"])

    reference = digests[BASELINE]
    base_best, base_median = min(runs[BASELINE]), statistics.median(runs[BASELINE])
    rows = []
    for name, seconds in runs.items():
        best, median = min(seconds), statistics.median(seconds)
        decoded = digests[name]["bytes"]
        row = {
            "contender": name,
            "label": LABELS[name],
            "cpu_s": round(best, 3),
            "cpu_s_median": round(median, 3),
            "cpu_s_runs": [round(s, 3) for s in seconds],
            "mb_per_s_decoded": round(decoded / 1e6 / best, 1),
            "mb_per_s_gzipped": round(len(data) / 1e6 / best, 1),
            "speed_vs_watgunzip": round(base_best / best, 3),
            "speed_vs_watgunzip_median": round(base_median / median, 3),
            "decoded_bytes": decoded,
            "sha256": digests[name]["sha256"],
            "identical": digests[name] == reference,
            "finds_member_ends": name not in probe.NEEDS_ENDS,
            "at_cut_off_member": cut_offs[name],
        }
        clean_stop = cut_offs[name] == "stops cleanly after the complete members"
        row["could_replace_watgunzip"] = (name not in ("watgunzip", "reader") and row["speed_vs_watgunzip"] >= SPEED_TOLERANCE
                                          and row["finds_member_ends"] and clean_stop)  # fmt: skip
        rows.append(row)
    replacements = [r["contender"] for r in rows if r["could_replace_watgunzip"]]
    return {
        "wat": str(wat),
        "wat_mb_gz": round(len(data) / 1e6, 1),
        "decoded_mb": round(reference["bytes"] / 1e6, 1),
        "members": len(ends),
        "repeat": repeat,
        "results": rows,
        "identical": all(r["identical"] for r in rows),
        "replacements": replacements,
        "decision": f"replace the vendored libdeflate with {replacements[0]}" if replacements else "keep the vendored libdeflate",
        "versions": versions,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.extract.gunzip", description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=60_000, help="pages in the generated WAT (~5 KB gzipped each)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds; best and median are reported")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--no-peers", action="store_true", help="only watgunzip, the job's reader and zlib (no peer venv)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "gunzip.json")
    args = parser.parse_args(argv)

    wat = bench_wat(args.pages, args.seed)
    peer_python = None if args.no_peers else peer_venv("gunzip-peers", PEERS) / "bin" / "python"
    report = compare(wat, args.repeat, peer_python)
    report["pages"] = args.pages
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"WAT: {wat.name} ({report['wat_mb_gz']} MB gzipped, {report['members']} members, {report['decoded_mb']} MB decoded), "
        f"best of {args.repeat} alternating rounds, CPU time of one core"
    )
    print(f"{'contender':<34} {'cpu s':>7} {'median':>7} {'MB/s out':>9} {'MB/s gz':>8} {'vs watgunzip':>12} {'same':>5}  at a cut-off member")
    for r in report["results"]:
        print(
            f"{r['label']:<34} {r['cpu_s']:>7.2f} {r['cpu_s_median']:>7.2f} {r['mb_per_s_decoded']:>9.1f} {r['mb_per_s_gzipped']:>8.1f} "
            f"{r['speed_vs_watgunzip']:>11.2f}x {'yes' if r['identical'] else 'NO':>5}  "
            f"{r['at_cut_off_member']}{'' if r['finds_member_ends'] else ' (given member ends)'}"
        )
    print(f"decision: {report['decision']}   outputs identical: {report['identical']}")
    print(f"written: {args.out}")
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
