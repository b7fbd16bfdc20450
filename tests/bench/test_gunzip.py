"""bench/extract/gunzip.py: on a tiny generated WAT, the in-process contenders (watgunzip, the job's
reader, zlib) decode every member to the same bytes, the member scan and the cut-off check see what
is really there, and the JSON names every contender. No timing thresholds: only what is decoded."""

from __future__ import annotations

import gzip
import json

from bench.extract import gunzip, gunzip_probe
from spark_jobs.watgen import generate_wat


def test_the_in_process_contenders_decode_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTLAKE_CACHE_DIR", str(tmp_path / "cache"))  # the WAT is generated and cached here
    out = tmp_path / "gunzip.json"
    assert gunzip.main(["--pages", "50", "--repeat", "1", "--no-peers", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    rows = {r["contender"]: r for r in report["results"]}
    assert set(rows) == {"watgunzip", "reader", "zlib"}
    wat = tmp_path / "cache" / "bench-data" / "bench-50-2024.warc.wat.gz"
    whole = gzip.decompress(wat.read_bytes())  # stdlib's own multi-member reader, independent of all three
    assert whole and report["members"] == 1 + 3 * 50  # warcinfo + request/response/metadata per page
    for row in rows.values():
        assert row["identical"] and row["decoded_bytes"] == len(whole)
        assert row["sha256"] == rows["watgunzip"]["sha256"] and len(row["cpu_s_runs"]) == 1
    assert rows["watgunzip"]["at_cut_off_member"] == rows["zlib"]["at_cut_off_member"] == "stops cleanly after the complete members"
    assert report["identical"] and not rows["watgunzip"]["could_replace_watgunzip"]


def test_member_ends_split_the_file_into_its_members(tmp_path):
    wat = tmp_path / "t.warc.wat.gz"
    generate_wat(wat, 5, gzip=True, seed=1)
    data = wat.read_bytes()
    ends = gunzip.member_ends(data)
    assert ends[-1] == len(data)
    starts = [0, *ends[:-1]]
    # each slice is one whole member (stdlib inflates it alone), and together they are the whole file
    pieces = [gzip.decompress(data[a:b]) for a, b in zip(starts, ends)]
    assert len(pieces) == 1 + 3 * 5 and all(pieces)
    whole = b"".join(pieces)
    assert b"".join(gunzip_probe.zlib_members(data)) == b"".join(gunzip.watgunzip_members(data)) == whole
