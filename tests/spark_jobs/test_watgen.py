"""The WAT generator writes files the real-WAT parser reads, with every case the rules must handle."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import orjson
from fastwarc.warc import ArchiveIterator, WarcRecordType

from altlake.schemas import FILE_DONE
from spark_jobs.wat import process_wat
from spark_jobs.watgen import SENTENCES, generate_wat


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate_wat(tmp_path / "a.wat", 20, seed=7)
    b = generate_wat(tmp_path / "b.wat", 20, seed=7)
    c = generate_wat(tmp_path / "c.wat", 20, seed=8)
    assert (tmp_path / "a.wat").read_bytes() == (tmp_path / "b.wat").read_bytes()
    assert (tmp_path / "a.wat").read_bytes() != (tmp_path / "c.wat").read_bytes()
    assert a.records == b.records == 1 + 3 * 20 and c.pages == 20


def test_records_have_the_real_envelope(tmp_path):
    generate_wat(tmp_path / "g.wat", 10, seed=1)
    with open(tmp_path / "g.wat", "rb") as f:
        records = [(r.record_type, r.headers.get("WARC-Target-URI"), r.reader.read()) for r in ArchiveIterator(f, parse_http=False)]
    assert records[0][0] == WarcRecordType.warcinfo
    kinds = Counter()
    for record_type, target, body in records[1:]:
        assert record_type == WarcRecordType.metadata
        envelope = orjson.loads(body)["Envelope"]
        assert envelope["WARC-Header-Metadata"]["WARC-Target-URI"] == target
        kinds[envelope["WARC-Header-Metadata"]["WARC-Type"]] += 1
        html = envelope["Payload-Metadata"].get("HTTP-Response-Metadata", {}).get("HTML-Metadata")
        if html:
            assert {"Title", "Metas", "Link"} <= set(html["Head"])
            assert {link["path"] for link in html["Links"]} >= {"IMG@/src", "A@/href"}
    assert kinds == {"request": 10, "response": 10, "metadata": 10}


def test_generated_wat_exercises_every_rule_language_and_license(tmp_path):
    generate_wat(tmp_path / "g.wat.gz", 300, gzip=True, seed=3)
    result = process_wat(str(tmp_path / "g.wat.gz"))
    assert result.status == FILE_DONE and result.bad_records == 0
    assert result.raw_links > result.raw_pairs > result.kept_pairs > 0  # duplicates and junk present
    assert all(result.rejected[r] > 0 for r in result.rejected if r != "taken_down")
    languages = Counter(p.language for p in result.pairs)
    assert len(set(languages) & set(SENTENCES)) >= 6
    assert any(p.license for p in result.pairs) and any(p.license is None for p in result.pairs)
    texts = {p.text for p in result.pairs}
    assert "Fish & chips on a plate" in texts and "Café terrace with wicker chairs" in texts
    assert not any("&amp;" in p.url for p in result.pairs)


def test_plain_and_gzip_hold_the_same_pairs(tmp_path):
    generate_wat(tmp_path / "g.wat", 40, seed=5)
    generate_wat(tmp_path / "g.wat.gz", 40, gzip=True, seed=5)
    plain, zipped = process_wat(str(tmp_path / "g.wat")), process_wat(str(tmp_path / "g.wat.gz"))
    assert {p.uid for p in plain.pairs} == {p.uid for p in zipped.pairs} and plain.pairs


def test_image_base_and_cli(tmp_path):
    out = tmp_path / "demo.warc.wat.gz"
    done = subprocess.run(
        [sys.executable, "-m", "spark_jobs.watgen", "--out", str(out), "--pages", "30", "--gzip",
         "--image-base", "http://127.0.0.1:8765", "--seed", "2"],
        check=True, capture_output=True, text=True,
    )
    assert orjson.loads(done.stdout)["pages"] == 30
    result = process_wat(str(out))
    assert result.pairs and all(p.url.startswith("http://127.0.0.1:8765/") for p in result.pairs)


def test_noai_pages_only_when_asked(tmp_path):
    from spark_jobs.wat import META_ROBOTS
    from spark_jobs.watgen import PageSpec, write_wat

    plain = generate_wat(tmp_path / "plain.wat", 60, seed=6)
    assert b"noai" not in (tmp_path / "plain.wat").read_bytes()  # the calibrated default has none
    assert process_wat(plain.path).opted_out == 0
    noai = process_wat(generate_wat(tmp_path / "noai.wat", 60, seed=6, noai_ratio=0.25).path)
    assert 0 < noai.opted_out < noai.kept_pairs
    assert {p.opt_out for p in noai.pairs} == {META_ROBOTS, None}
    # Explicit pages carry the metas they are given.
    write_wat(tmp_path / "e.wat", [PageSpec("http://e.test/p.html", (("/a.jpg", "A photo of a lake"),), metas=(("robots", "noai"),))])
    assert [p.opt_out for p in process_wat(str(tmp_path / "e.wat")).pairs] == [META_ROBOTS]
