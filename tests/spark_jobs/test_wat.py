"""The per-WAT parser on the real Common Crawl sample and on files broken the ways real ones break."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import itertools
import random
import re
import socket
import threading
from pathlib import Path

import pytest

from altlake.schemas import FILE_DONE, FILE_FAILED, REJECT_REASONS
from spark_jobs.wat import (
    NOLANG,
    check_pair,
    clean_text,
    detect_language,
    page_links,
    pair_uid,
    process_wat,
    read_raw_links,
)

SAMPLE_README = Path(__file__).resolve().parents[3] / "shared" / "data" / "commoncrawl" / "README.md"
WATLINKS_C = Path(__file__).resolve().parents[2] / "native" / "watread" / "watlinks.c"


def _records(path: Path) -> list[bytes]:
    return [r for r in re.split(rb"(?=WARC/1\.0\r\n)", path.read_bytes()) if r]


def _gzip_members(*parts: bytes) -> bytes:
    """Each part as its own gzip member, as Common Crawl writes its records."""
    return b"".join(gzip.compress(part, mtime=0) for part in parts)


def _spy(cls, calls: list, *args, **kwargs):
    """cls(*args, **kwargs), noting the call in `calls`."""
    calls.append(args or kwargs)
    return cls(*args, **kwargs)


def _pairs(result) -> set[tuple[str, str, str, str | None]]:
    return {(p.uid, p.url, p.text, p.license) for p in result.pairs}


def test_sample_counts_match_the_readme(sample_wat):
    readme = SAMPLE_README.read_text()
    links, pairs = (int(n) for n in re.search(r"(\d+) of them\s+with a non-empty `alt`, which make (\d+) distinct", readme).groups())
    result = process_wat(str(sample_wat))
    assert result.status == FILE_DONE and result.error is None
    assert (result.raw_links, result.raw_pairs) == (links, pairs) == (88, 33)
    assert result.records == 18 and result.pages == 4 and result.bad_records == 0
    assert result.raw_pairs == result.kept_pairs + sum(result.rejected.values())
    assert set(result.rejected) == set(REJECT_REASONS)
    assert result.kept_pairs == len(result.pairs) > 0
    raw_links = read_raw_links(str(sample_wat))
    assert (len(raw_links), len(set(raw_links))) == (result.raw_links, result.raw_pairs)


def test_sample_pairs_are_resolved_unescaped_and_filtered(sample_wat):
    result = process_wat(str(sample_wat))
    urls = {p.url for p in result.pairs}
    assert all(u.startswith("http://") for u in urls)
    assert not any(".gif" in u for u in urls)  # the sample's many .gif icons are dropped
    assert result.rejected["bad_extension"] == sum(".gif" in u for u, _ in set(read_raw_links(str(sample_wat))))
    # Relative src on 0x20.be, resolved against the page URL.
    assert "http://0x20.be/smw/skins/common/images/poweredby_mediawiki_88x31.png" in urls
    # &amp; in timthumb URLs is unescaped.
    assert any("timthumb.php?src=" in u and "&w=100" in u for u in urls)
    assert not any("&amp;" in u for u in urls)
    assert all(len(p.uid) == 32 and p.uid == pair_uid(p.url, p.text) for p in result.pairs)
    assert {p.language for p in result.pairs} >= {"en"}


@pytest.mark.parametrize("layout", ["per_record", "whole_file", "whole_file_streamed"])
def test_gzip_gives_the_same_result(sample_wat, tmp_path, monkeypatch, layout):
    """Common Crawl's member per record, or one member for the file (inflated whole, or streamed
    by ISA-L when it is larger than the member buffer)."""
    gz = tmp_path / "sample.warc.wat.gz"
    if layout == "per_record":
        gz.write_bytes(_gzip_members(*_records(sample_wat)))
    else:
        gz.write_bytes(gzip.compress(sample_wat.read_bytes()))
    streamed = []
    if layout == "whole_file_streamed":
        from spark_jobs import wat

        monkeypatch.setattr(wat, "_CHUNK", 500)
        monkeypatch.setattr(wat, "_MAX_MEMBER", 1000)
        monkeypatch.setattr(wat.igzip, "GzipFile", functools.partial(_spy, wat.igzip.GzipFile, streamed))
    zipped, plain = process_wat(str(gz)), process_wat(str(sample_wat))
    assert len(streamed) == (layout == "whole_file_streamed")
    assert zipped.status == FILE_DONE
    assert plain.summary() | {"path": "", "duration_s": 0} == zipped.summary() | {"path": "", "duration_s": 0}
    assert _pairs(plain) == _pairs(zipped)


def test_a_wat_served_over_http_reads_like_the_local_file(sample_wat, tmp_path):
    """http(s) paths (Common Crawl's own https://data.commoncrawl.org) stream through urllib."""
    (tmp_path / "sample.warc.wat.gz").write_bytes(_gzip_members(*_records(sample_wat)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            served, missing = process_wat(f"{base}/sample.warc.wat.gz"), process_wat(f"{base}/missing.warc.wat.gz")
        finally:
            server.shutdown()
    local = process_wat(str(sample_wat))
    assert served.status == FILE_DONE and (served.raw_links, served.raw_pairs) == (88, 33)
    assert _pairs(served) == _pairs(local)
    assert missing.status == FILE_FAILED and "cannot open" in missing.error and "404" in missing.error


def test_lf_line_endings_are_read_like_crlf(sample_wat, tmp_path):
    lf = tmp_path / "lf.warc.wat"
    lf.write_bytes(sample_wat.read_bytes().replace(b"\r\n", b"\n"))
    result = process_wat(str(lf))
    assert result.status == FILE_DONE and result.records == 18
    assert (result.raw_links, result.raw_pairs) == (88, 33)
    assert _pairs(result) == _pairs(process_wat(str(sample_wat)))


@pytest.mark.parametrize("fraction", [0.5, 0.93])
def test_truncated_gzip_fails_the_file_with_the_reason(sample_wat, tmp_path, fraction):
    data = _gzip_members(*_records(sample_wat))
    cut = tmp_path / "cut.warc.wat.gz"
    cut.write_bytes(data[: int(len(data) * fraction)])
    result = process_wat(str(cut))
    assert result.status == FILE_FAILED
    assert "truncated" in result.error
    assert result.pairs == []


def test_gunzip_members_inflates_whole_members_and_stops_at_the_first_that_is_not():
    import watgunzip

    parts = [b"first record", b"", b"x" * 5000, b"last record"]
    data = _gzip_members(*parts)
    ends = list(itertools.accumulate(len(_gzip_members(part)) for part in parts))
    assert watgunzip.gunzip_members(data, 0, 1 << 20) == (b"".join(parts), len(data))
    assert watgunzip.gunzip_members(data, 0, 1) == (parts[0], ends[0])  # stops once the limit is reached
    assert watgunzip.gunzip_members(data, ends[1], 1 << 20) == (b"".join(parts[2:]), len(data))
    # Cut inside the third member: the whole ones, then a stop at its start.
    assert watgunzip.gunzip_members(data[: ends[2] - 3], 0, 1 << 20) == (b"".join(parts[:2]), ends[1])
    bad_crc = bytearray(data)
    bad_crc[ends[2] - 6] ^= 0xFF  # the third member's CRC-32
    assert watgunzip.gunzip_members(bytes(bad_crc), 0, 1 << 20) == (b"".join(parts[:2]), ends[1])
    # A member larger than the output buffer (limit + 1 MiB) grows it.
    big = random.Random(1).randbytes(3 << 20)
    assert watgunzip.gunzip_members(memoryview(_gzip_members(big)), 0, 1) == (big, len(_gzip_members(big)))
    for offset, limit in ((len(data) + 1, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError):
            watgunzip.gunzip_members(data, offset, limit)
    with pytest.raises(TypeError):
        watgunzip.gunzip_members("not bytes", 0, 10)


def test_member_reader_inflates_every_member_layout_in_c(monkeypatch):
    """Members of every size, straddling the input chunks, equal gzip's output and never leave the C path."""
    from spark_jobs import wat

    rng = random.Random(7)
    parts = [rng.choice([b"", rng.randbytes(rng.randrange(1, 30_000)), b"WARC record text " * rng.randrange(1, 2000)])
             for _ in range(200)]
    for chunk in (997, 1 << 20):
        monkeypatch.setattr(wat, "_CHUNK", chunk)
        reader = wat._MemberReader(io.BytesIO(_gzip_members(*parts) + b"\0" * 64))  # zero padding at the end
        decoded = b"".join(iter(lambda: reader.read(4096), b""))
        assert decoded == b"".join(parts)
        assert reader._streaming is None


def test_member_reader_leaves_a_huge_member_to_the_streaming_reader(monkeypatch):
    from spark_jobs import wat

    monkeypatch.setattr(wat, "_MAX_MEMBER", 50_000)
    rng = random.Random(3)
    parts = [b"before " * 100, rng.randbytes(200_000), b"after " * 100, b"", b"last"]
    reader = wat._MemberReader(io.BytesIO(_gzip_members(*parts[:2]) + b"\0" * 9 + _gzip_members(*parts[2:])))
    assert b"".join(iter(lambda: reader.read(1000), b"")) == b"".join(parts)
    assert reader._streaming is not None


@pytest.mark.parametrize(("damage", "reason"), [("crc", "CRC check failed"), ("garbage", "Not a gzipped file")])
def test_a_corrupt_gzip_member_fails_the_file_with_the_reason(sample_wat, tmp_path, damage, reason):
    records = _records(sample_wat)
    data = bytearray(_gzip_members(*records))
    sixth_end = len(_gzip_members(*records[:6]))
    if damage == "crc":
        data[sixth_end - 6] ^= 0xFF  # the sixth record's CRC-32
    else:
        data[sixth_end:sixth_end] = b"not gzip at all"
    broken = tmp_path / "broken.warc.wat.gz"
    broken.write_bytes(bytes(data))
    result = process_wat(str(broken))
    assert result.status == FILE_FAILED and "corrupt gzip data" in result.error and reason in result.error
    assert result.pairs == []


def test_plain_file_cut_inside_a_record_header_fails(sample_wat, tmp_path):
    data = sample_wat.read_bytes()
    last = data.rfind(b"WARC/1.0\r\n")
    cut = tmp_path / "cut.warc.wat"
    cut.write_bytes(data[: last + 40])  # the last record's header is incomplete
    result = process_wat(str(cut))
    assert result.status == FILE_FAILED and "truncated" in result.error


def test_a_corrupt_json_record_is_counted_and_the_rest_kept(sample_wat, tmp_path):
    records = _records(sample_wat)
    index = next(i for i, r in enumerate(records) if b"1000games.me" in r and b'"IMG@/src"' in r)
    broken = records[index].replace(b'"Links":[', b'"Links":[{{{', 1)
    broken = broken.replace(b"Content-Length: ", b"Content-Length: ", 1)
    header, _, body = broken.partition(b"\r\n\r\n")
    body = body[:-4]
    header = re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % len(body), header)
    records[index] = header + b"\r\n\r\n" + body + b"\r\n\r\n"
    bad = tmp_path / "bad.warc.wat"
    bad.write_bytes(b"".join(records))
    result = process_wat(str(bad))
    lost_links = sum(1 for link in re.findall(rb'\{[^{}]*"path":"IMG@/src"[^{}]*\}', records[index]) if b'"alt":""' not in link and b'"alt"' in link)
    assert result.status == FILE_DONE
    assert result.bad_records == 1 and "bad JSON" in result.error and f"record {index + 1}" in result.error
    assert result.records == 18
    assert 0 < result.raw_links == 88 - lost_links
    assert not any("1000games" in p.url for p in result.pairs)
    assert any("ngfiles.com" in p.url for p in result.pairs)


def test_trailing_garbage_is_ignored_with_a_note(sample_wat, tmp_path):
    messy = tmp_path / "messy.warc.wat"
    messy.write_bytes(sample_wat.read_bytes() + b"\x00\x00some trailing bytes\r\n")
    result = process_wat(str(messy))
    assert result.status == FILE_DONE and "trailing" in result.error
    assert _pairs(result) == _pairs(process_wat(str(sample_wat)))


def test_garbage_between_records_fails_the_file(sample_wat, tmp_path):
    records = _records(sample_wat)
    messy = tmp_path / "messy.warc.wat"
    messy.write_bytes(b"".join(records[:5]) + b"not a warc header\r\n\r\n" + b"".join(records[5:]))
    result = process_wat(str(messy))
    assert result.status == FILE_FAILED and "unparseable" in result.error


def test_missing_file_fails_with_the_reason(tmp_path):
    result = process_wat(str(tmp_path / "nope.warc.wat.gz"))
    assert result.status == FILE_FAILED and "No such file" in result.error


def test_an_empty_file_is_not_a_silent_zero(tmp_path):
    (tmp_path / "empty.warc.wat").write_bytes(b"")
    result = process_wat(str(tmp_path / "empty.warc.wat"))
    assert result.status == FILE_FAILED and "no WARC records" in result.error


@pytest.mark.parametrize(
    ("url", "text", "reason"),
    [
        ("http://a.com/" + "x" * 2001, "A fine caption", "url_too_long"),
        ("http://a.com/anim.GIF", "A fine caption", "bad_extension"),
        ("http://a.com/logo.svg?x=1", "A fine caption", "bad_extension"),
        ("data:image/png;base64,AAAA", "A fine caption", "bad_extension"),
        ("javascript:void(0)", "A fine caption", "bad_extension"),
        ("ftp://a.com/pic.jpg", "A fine caption", "not_http"),
        ("http://[oops/pic.jpg", "A fine caption", "invalid_url"),
        ("http:///pic.jpg", "A fine caption", "invalid_url"),
        ("http://" + "h" * 61 + ".com/pic.jpg", "A fine caption", "host_too_long"),
        ("http://a.com/pic.jpg", "word " * 401, "text_too_long"),
        ("http://a.com/pic.jpg", " ab\x07c ", "text_too_short"),
        ("https://a.com/pic.jpg", "A fine caption", None),
    ],
)
def test_laion_rules(url, text, reason):
    assert check_pair(url, text)[0] == reason


def test_text_cleaning_fixes_mojibake_and_strips_non_printables():
    assert clean_text("CafÃ©\tterrace\n\x07 at night") == "Café terrace at night"
    assert clean_text("He said “hi”") == "He said “hi”"


def test_language_detection_and_nolang():
    assert detect_language("Ein rotes Fahrrad lehnt an einer Ziegelmauer")[0] == "de"
    assert detect_language("Un vélo rouge appuyé contre un mur de briques")[0] == "fr"
    code, score = detect_language("xq zz 7")
    assert code == NOLANG and score < 0.5


def test_page_links_use_base_entities_and_license():
    envelope = {
        "WARC-Header-Metadata": {"WARC-Target-URI": "http://site.org/a/page.html"},
        "Payload-Metadata": {
            "HTTP-Response-Metadata": {
                "HTML-Metadata": {
                    "Head": {"Base": "http://cdn.site.org/img/"},
                    "Links": [
                        {"path": "IMG@/src", "url": "cat.jpg?w=1&amp;h=2", "alt": "Fish &amp; chips &#3659;"},
                        {"path": "IMG@/src", "url": "dog.jpg", "alt": ""},
                        {"path": "IMG@/src", "url": "//other.org/x.png", "alt": "Other"},
                        {"path": "A@/href", "rel": "license", "url": "https://creativecommons.org/licenses/by/4.0/"},
                    ],
                }
            }
        },
    }
    page_url, pairs, license_url = page_links(envelope)
    assert page_url == "http://site.org/a/page.html"
    assert pairs == [("http://cdn.site.org/img/cat.jpg?w=1&h=2", "Fish & chips \u0e4b"), ("http://other.org/x.png", "Other")]
    assert license_url == "https://creativecommons.org/licenses/by/4.0/"


def test_takedowns_by_url_and_by_domain(sample_wat):
    clean = process_wat(str(sample_wat))
    one_url = next(p.url for p in clean.pairs if "0x20.be" in p.url)
    result = process_wat(str(sample_wat), takedown_urls=frozenset({one_url}), takedown_domains=frozenset({"ngfiles.com"}))
    dropped = [p for p in clean.pairs if p.url == one_url or "ngfiles.com" in p.url]
    assert result.rejected["taken_down"] == len(dropped) >= 2
    assert result.kept_pairs == clean.kept_pairs - len(dropped)
    assert not any(p.url == one_url or "ngfiles.com" in p.url for p in result.pairs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3a_wat_and_listing_through_an_s3_server(sample_wat, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    from spark_jobs.extract import resolve_wat_paths

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="commoncrawl")
        key = "crawl-data/CC-MAIN-2015-18/segments/1/wat/sample.warc.wat.gz"
        s3.put_object(Bucket="commoncrawl", Key=key, Body=_gzip_members(*_records(sample_wat)))
        s3.put_object(Bucket="commoncrawl", Key="crawl-data/CC-MAIN-2015-18/wat.paths.gz", Body=gzip.compress(f"{key}\n".encode()))
        paths = resolve_wat_paths(["s3a://commoncrawl/crawl-data/CC-MAIN-2015-18/wat.paths.gz"], s3_endpoint=endpoint)
        assert paths == [f"s3a://commoncrawl/{key}"]
        result = process_wat(paths[0], s3_endpoint=endpoint)
        assert result.status == FILE_DONE and (result.raw_links, result.raw_pairs) == (88, 33)
        missing = process_wat("s3a://commoncrawl/nope.warc.wat.gz", s3_endpoint=endpoint)
        assert missing.status == FILE_FAILED and "No such file: 's3a://commoncrawl/nope.warc.wat.gz'" in missing.error
    finally:
        server.stop()


@pytest.mark.parametrize("base", ["http://site.org/a/b/page.html?x=1", "https://site.org", "http://site.org/dir/", "http://site.org/x/../y.html"])
@pytest.mark.parametrize(
    "url",
    ["img/a.jpg", "/img/a.jpg?w=1", "//cdn.site.org/a.png", "../up/a.jpg", "./here.jpg", "?page=2", "#top",
     "a.jpg#frag", "  spaced.jpg", "tab\tin.jpg", "mailto:x@y.org", "HTTP://UPPER.org/A.jpg", "a:b/c.jpg", "https://x.org/a.jpg",
     "../../a.jpg", "../../../../../x.jpg?q=1", "../a/./b.jpg", "../", "..//x.jpg", "data:image/png;base64,iVBO", "javascript:go(1)",
     "ftp://files.example.org/p.jpg", "host:8080/x.jpg", "Mailto:X", "svn+ssh://x/y", "HTTPS://x.org/b.jpg"],
)
def test_resolver_matches_urljoin(base, url):
    from urllib.parse import urljoin

    from spark_jobs.wat import Resolver

    expected = url if url.startswith(("http://", "https://")) else urljoin(base, url)
    assert Resolver(base)(url) == expected


def _html_bodies(path: Path) -> list[bytes]:
    from fastwarc.warc import ArchiveIterator

    with open(path, "rb") as f:
        bodies = [r.reader.read() for r in ArchiveIterator(f, parse_http=False)]
    return [b for b in bodies if b'"HTML-Metadata"' in b and b'"IMG@/src"' in b]


@pytest.fixture(scope="module")
def scalar_watlinks(tmp_path_factory):
    """watlinks built with its portable scanning loop (what ARM machines run), beside the installed one."""
    import importlib.util
    import subprocess
    import sysconfig

    built = tmp_path_factory.mktemp("scalar") / ("watlinks" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-DWATLINKS_SCALAR", f"-I{sysconfig.get_paths()['include']}",
                    str(WATLINKS_C), "-o", str(built)], check=True)
    spec = importlib.util.spec_from_file_location("watlinks", built)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["installed", "scalar"])
def link_reader(request, monkeypatch):
    """Runs a test with the installed C reader (SSE2 on x86) and with the portable build."""
    if request.param == "scalar":
        monkeypatch.setattr("spark_jobs.wat.watlinks", request.getfixturevalue("scalar_watlinks"))
    return request.param


def test_fast_page_links_equals_page_links_or_defers(sample_wat, tmp_path, link_reader):
    """The C reader gives exactly page_links' result, or None (then page_links runs)."""
    import orjson
    import simdjson

    from spark_jobs.wat import fast_page_links, page_links
    from spark_jobs.watgen import generate_wat

    generate_wat(tmp_path / "g.wat", 60, seed=9)
    bodies = _html_bodies(sample_wat) + _html_bodies(tmp_path / "g.wat")
    parser = simdjson.Parser()
    fast = [fast_page_links(b, parser) for b in bodies]
    assert all(f is not None for f in fast)  # Common Crawl's own shape is always read in C
    for body, got in zip(bodies, fast):
        assert got == page_links(orjson.loads(body)["Envelope"])
    assert any(f[2] for f in fast)  # license pages too
    # A brace or a quote inside a string is just text to a reader that follows the JSON structure.
    body = bodies[0].replace(b'"path":"IMG@/src"', b'"path":"IMG@/src","title":"a}b\\"{"', 1)
    assert fast_page_links(body, parser) == page_links(orjson.loads(body)["Envelope"])
    with pytest.raises(ValueError):  # a broken record is still detected (counted in bad_records)
        fast_page_links(bodies[0][:-40], parser)


def _page(
    links: list[dict], head_links: list[dict] = (), base: str | None = None, metas: list[dict] = (), head_last: bool = False
) -> bytes:
    """One record's JSON; `head_last` puts <head> after the Links, as Common Crawl's WATs have it."""
    import orjson

    head = {"Title": "t", "Link": list(head_links), **({"Base": base} if base else {}), **({"Metas": list(metas)} if metas else {})}
    meta = {"Links": links, "Head": head} if head_last else {"Head": head, "Links": links}
    envelope = {"WARC-Header-Metadata": {"WARC-Target-URI": "http://site.org/a/page.html"},
                "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": meta}}}
    return orjson.dumps({"Envelope": envelope})


_LICENSE = "https://creativecommons.org/licenses/by/4.0/"


@pytest.mark.parametrize(
    "links, head_links, fast_reads_it",
    [
        ([{"title": "", "alt": 'Café "quoted" back\\slash', "path": "IMG@/src", "url": "img/é.jpg"}], [], True),
        ([{"alt": "A &amp; B &lt;3 &#39;x&#39;", "path": "IMG@/src", "url": "/x.jpg?a=1&amp;b=2&copy", "title": "t"},
          {"path": "A@/href", "url": _LICENSE, "rel": "license"}], [], True),
        ([{"path": "IMG@/src", "url": "/late.jpg", "alt": "alt after the url"}], [], True),
        ([{"alt": "in an area", "path": "AREA@/href", "url": "/map"},
          {"alt": "a photo", "path": "IMG@/src", "url": "/p.jpg"}], [], True),
        ([{"path": "IMG@/src", "url": "/a.jpg", "alt": "no"}, {"alt": "", "path": "IMG@/src", "url": "/b.jpg"},
          {"alt": "no url", "path": "IMG@/src", "url": ""}, {"alt": "img without path", "url": "/c.jpg"}], [], True),
        ([{"alt": "a photo", "path": "IMG@/src", "url": "/p.jpg"}, {"path": "A@/href", "url": _LICENSE}],
         [{"path": "LINK@/href", "rel": "license", "url": "http://creativecommons.org/licenses/by-sa/3.0/"}], True),
        ([{"alt": "a photo", "path": "IMG@/src", "url": "/p.jpg"}],
         [{"path": "LINK@/href", "rel": "license", "url": "http://creativecommons.org/licenses/by-sa/3.0/"}], False),
        ([{"alt": "a photo", "path": "IMG@/src", "url": "/p.jpg", "width": 300}], [], False),
    ],
    ids=["escapes", "entities-and-license", "alt-after-url", "alt-on-another-tag", "empty-fields",
         "links-license-wins-over-head", "head-license", "non-string-value"],
)
def test_fast_page_links_reads_escapes_and_defers_on_unusual_shapes(links, head_links, fast_reads_it, link_reader):
    import orjson
    import simdjson

    from spark_jobs.wat import fast_page_links, page_links

    body = _page(links, head_links).replace("é".encode(), b"\\u00e9").replace(b"/", b"\\/")  # escapes some writers emit
    expected = page_links(orjson.loads(body)["Envelope"])
    assert expected[1]  # every case has a pair to find
    got = fast_page_links(body, simdjson.Parser())
    assert got == (expected if fast_reads_it else None)


@pytest.mark.parametrize("base", [None, "/other/dir/", "https://cdn.site.org/x/", "http://site.org/x/../y/", "ftp://files.org/a/"])
def test_fast_page_links_resolves_urls_and_references_as_resolver_and_unescape_do(base, link_reader):
    """The C reader joins the common URL shapes and decodes the common HTML references itself, and
    hands the rest to Resolver and html.unescape: the same result either way."""
    import orjson
    import simdjson

    from spark_jobs.wat import fast_page_links, page_links

    shapes = ["img/a.jpg", "/img/a.jpg?w=1", "//cdn.site.org/a.png", "../up/a.jpg", "./here.jpg", "?page=2", "#top",
              "  spaced.jpg", "tab\tin.jpg", "mailto:x@y.org", "HTTP://UPPER.org/A.jpg", "a:b/c.jpg", "https://x.org/a.jpg",
              "data:image/png;base64,iVBO", "javascript:go(1)", "svn+ssh://x/y", "http:relative.jpg", "Https:x",
              "-odd.jpg", "9lives.jpg", "bad scheme:x", "x.org:8080/y.jpg", "/a?b=1&amp;c=2", "/a?b=1&lt;c", "&amp;start.jpg",
              "é/x.jpg", "/ümlaut.jpg", ".hidden.jpg", "a/../b.jpg", "a/b.jpg#x/.y", "../../a.jpg", "../../../../../x.jpg?q=1",
              "../a/./b.jpg", "../", "..//x.jpg", "../-x.jpg", "../../é.jpg", "/a?x=&#39;1&#39;&amp;y=&quot;"]
    references = ["&#39;", "&#x27;", "&#X1F600;", "&#128512;", "&#0;", "&#13;", "&#128;", "&#150;", "&#127;", "&#xD800;",
                  "&#39", "&#;", "&#x;", "&nbsp;", "&quot;", "&apos;", "&lt;&gt;", "&lt", "&eacute;", "&amp;amp;", "&#65;&#x42;",
                  "&#9999999999;", "&#x110000;", "&#xFFFE;", "&#x1FFFF;", "&#xFDD0;", "&#00000039;", "&#000000039;", "&", "&#"]
    links = [{"alt": f"photo {i} {references[i % len(references)]} x", "path": "IMG@/src", "url": url}
             for i, url in enumerate(shapes + references)]
    body = _page(links, base=base)
    got = fast_page_links(body, simdjson.Parser())
    assert got is not None
    assert got == page_links(orjson.loads(body)["Envelope"])
    assert len(got[1]) == len(shapes) + len(references)


def test_fast_page_links_equals_page_links_on_random_pages(link_reader):
    """Random link objects full of what breaks hand-written readers (quotes, backslashes, entities,
    surrogate pairs, control characters), written three ways: the C reader agrees with page_links
    on every page it reads, and reads every compact one unless a license may sit in <head>."""
    import json
    import random

    import orjson
    import simdjson

    from spark_jobs.wat import fast_page_links, page_links

    rng = random.Random(7)
    alphabet = ["a", "Z", "0", " ", "/", ".", ":", "?", "&", "&amp;", "&lt;", "&#39;", "&#x1F600;", "&nbsp;", "&#150;", "&eacute;",
                "&quot", "&#", "&", '"', "\\", "{", "}", "[", "]",
                ",", "é", "日本", "😀", "\n", "\t", "\x01", "IMG@/src", "creativecommons.org/licenses/", "../", "//", "http://"]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    def link() -> dict:
        entry = {k: text() for k in rng.sample(["title", "alt", "rel", "target"], rng.randint(0, 3))}
        entry["path"] = rng.choice(["IMG@/src", "IMG@/src", "A@/href", "LINK@/href", text()])
        entry["url"] = rng.choice([text(), "/" + text(), "http://h.org/" + text(), _LICENSE + text()])
        if rng.random() < 0.7:
            entry["alt"] = text()
        return dict(rng.sample(list(entry.items()), len(entry)))

    parser = simdjson.Parser()
    read = 0
    for _ in range(300):
        envelope = orjson.loads(_page([link() for _ in range(rng.randint(1, 25))], base=rng.choice([None, "/b/", text()])))
        expected = page_links(envelope["Envelope"])
        writings = ((orjson.dumps(envelope), True), (json.dumps(envelope, separators=(",", ":")).encode(), True),
                    (json.dumps(envelope).encode(), False))  # raw UTF-8; \u escapes; spaces after separators
        for body, compact in writings:
            got = fast_page_links(body, parser)
            if got is not None:
                assert got == expected
                read += 1
            elif compact:  # compact pages defer only when a license may be in <head>
                assert expected[2] is None and "creativecommons.org" in json.dumps(_meta(envelope)["Head"])
    assert read > 500  # not a vacuous pass: most pages are read in C


def _meta(envelope: dict) -> dict:
    return envelope["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]


def test_fast_page_links_takes_the_last_of_duplicate_keys_as_orjson_does(link_reader):
    import orjson
    import simdjson

    from spark_jobs.wat import fast_page_links, page_links

    body = _page([{"alt": "first", "path": "IMG@/src", "url": "/a.jpg", "title": "T"}])
    body = body.replace(b'"title":"T"', b'"alt":"last one wins"')
    got = fast_page_links(body, simdjson.Parser())
    assert got == page_links(orjson.loads(body)["Envelope"])
    assert got[1] == [("http://site.org/a.jpg", "last one wins")]


def test_watlinks_refuses_wrong_arguments():
    import html

    import watlinks

    with pytest.raises(TypeError):
        watlinks.img_links(b"{}", ("http",), str, html.unescape)
    with pytest.raises(TypeError):
        watlinks.img_links("not bytes", None, str, html.unescape)
    assert watlinks.img_links(b'{"Links":[]}', None, str, html.unescape) == ([], None, 0)


def test_the_cycle_collector_is_paused_only_while_a_file_is_read(sample_wat, tmp_path):
    import gc

    broken = tmp_path / "broken.wat.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00" + b"not gzip" * 10)
    for path in (str(sample_wat), str(broken), str(tmp_path / "missing.wat")):
        process_wat(path)
        assert gc.isenabled()
    gc.disable()
    try:
        process_wat(str(sample_wat))
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()


# --- page-level opt-out: <meta name="robots" content="noai"> ------------------------------------


def _robots(name: str, content: str) -> dict:
    return {"name": name, "content": content}


@pytest.mark.parametrize(
    "metas, opted_out",
    [
        ([_robots("robots", "noai")], True),
        ([_robots("ROBOTS", "NoImageAI")], True),
        ([_robots("img2dataset", "noai")], True),
        ([_robots("Altlake", "index, follow,NOAI")], True),  # our product token, directives in a list
        ([_robots("GPTBot", "noimageai")], True),  # an AI crawler's token
        ([_robots("description", "x"), _robots(" robots ", "noarchive noimageai")], True),
        ([_robots("googlebot", "noai")], False),  # another agent's business, not ours
        ([_robots("robots", "noindex")], False),  # search indexing, not AI use
        ([_robots("robots", "none, noimageindex")], False),
        ([_robots("robots", "noairport")], False),  # a directive is a whole word
        ([_robots("description", "we say noai to robots")], False),  # another meta's content
        ([{"content": "noai", "http-equiv": "robots"}, {"content": "noai"}], False),  # no name
        ([], False),
    ],
    ids=["robots", "upper-case", "img2dataset", "our-token", "ai-crawler", "second-meta", "googlebot", "noindex",
         "none", "not-a-directive", "other-meta", "nameless", "no-metas"],
)
@pytest.mark.parametrize("head_last", [True, False], ids=["head-last", "head-first"])
def test_page_opt_out_reads_robots_and_our_agents_noai(metas, opted_out, head_last):
    import orjson

    from spark_jobs.wat import META_ROBOTS, _may_opt_out, meta_opt_out, page_opt_out

    body = _page([{"alt": "a photo", "path": "IMG@/src", "url": "/p.jpg"}], metas=metas, head_last=head_last)
    assert page_opt_out(body) == (META_ROBOTS if opted_out else None)
    assert meta_opt_out(_meta(orjson.loads(body))) == page_opt_out(body)  # the pre-check never hides one
    assert _may_opt_out(body) or not opted_out


def test_the_opt_out_pre_check_looks_at_the_metas_only():
    from spark_jobs.wat import _may_opt_out

    links = [{"alt": "noai noimageai", "path": "IMG@/src", "url": "/noai.jpg"}]
    for head_last in (True, False):
        assert not _may_opt_out(_page(links, metas=[_robots("robots", "index")], head_last=head_last))
        assert _may_opt_out(_page(links, metas=[_robots("robots", "NoAI")], head_last=head_last))
    assert not _may_opt_out(_page(links))  # no Metas at all
    assert not _may_opt_out(b'{"Envelope":{}}')


def test_meta_names_follow_the_user_agent():
    from altlake.config import Settings
    from altlake.schemas import OPT_OUT_SIGNALS
    from spark_jobs.wat import DEFAULT_META_NAMES, META_ROBOTS, meta_opt_out_names

    assert META_ROBOTS in OPT_OUT_SIGNALS
    assert DEFAULT_META_NAMES == meta_opt_out_names(Settings().user_agent, Settings().ai_crawler_tokens)
    assert {"robots", "altlake", "img2dataset", "ccbot", "gptbot"} <= DEFAULT_META_NAMES
    assert "googlebot" not in DEFAULT_META_NAMES
    ours = meta_opt_out_names("MyBot/2.0 (+https://example.org/bot)", " GPTBot,, img2dataset ")
    assert ours == {"robots", "mybot", "gptbot", "img2dataset"}


def test_the_deployments_agents_decide(tmp_path):
    from spark_jobs.wat import META_ROBOTS, meta_opt_out_names
    from spark_jobs.watgen import PageSpec, write_wat

    write_wat(tmp_path / "a.wat", [
        PageSpec("http://mine.test/p.html", (("/a.jpg", "A photo of a mountain"),), metas=(("mybot", "noai"),)),
        PageSpec("http://ours.test/p.html", (("/b.jpg", "A photo of a meadow"),), metas=(("altlake", "noai"),)),
    ])  # fmt: skip
    mine = process_wat(str(tmp_path / "a.wat"), meta_names=meta_opt_out_names("mybot/1.0", ""))
    assert {p.page_url.split("/")[2]: p.opt_out for p in mine.pairs} == {"mine.test": META_ROBOTS, "ours.test": None}
    default = process_wat(str(tmp_path / "a.wat"))
    assert {p.page_url.split("/")[2]: p.opt_out for p in default.pairs} == {"mine.test": None, "ours.test": META_ROBOTS}


def _opt_out_pages():
    from spark_jobs.watgen import PageSpec

    shared = ("http://img.optout.test/shared.jpg", "A photo shown on both pages")
    return [
        # The shared pair is kept from this page first; the opted-out page below still opts it out.
        PageSpec("http://plain.optout.test/a.html", (shared, ("/a1.jpg", "A plain photo of a lake"))),
        PageSpec("http://robots.optout.test/b.html",
                 (shared, ("/b1.jpg", "A photo of a red bicycle"), ("/b2.gif", "An animation of a bicycle")),
                 metas=(("viewport", "width=device-width"), ("robots", "index, NoAI"))),
        PageSpec("http://agent.optout.test/c.html", (("/c1.jpg", "A photo of a green garden"),),
                 metas=(("img2dataset", "noimageai"),)),
        PageSpec("http://google.optout.test/d.html", (("/d1.jpg", "A photo of a blue house"),),
                 metas=(("googlebot", "noai"),)),
        PageSpec("http://noindex.optout.test/e.html", (("/e1.jpg", "A photo of a small boat"),),
                 metas=(("robots", "noindex, nofollow"),)),
    ]


def test_an_opted_out_page_keeps_its_pairs_marked_and_counted(tmp_path):
    from spark_jobs.wat import META_ROBOTS
    from spark_jobs.watgen import write_wat

    write_wat(tmp_path / "o.wat", _opt_out_pages())
    result = process_wat(str(tmp_path / "o.wat"))
    assert result.status == FILE_DONE and result.bad_records == 0
    opt_outs = {p.url.split("/")[2] + "/" + p.url.split("/")[-1]: p.opt_out for p in result.pairs}
    assert opt_outs == {
        "img.optout.test/shared.jpg": META_ROBOTS,  # seen first on a plain page: the later opt-out wins
        "plain.optout.test/a1.jpg": None,
        "robots.optout.test/b1.jpg": META_ROBOTS,
        "agent.optout.test/c1.jpg": META_ROBOTS,
        "google.optout.test/d1.jpg": None,
        "noindex.optout.test/e1.jpg": None,
    }
    assert result.rejected["bad_extension"] == 1  # an opted-out page's pairs still meet every rule
    assert result.opted_out == sum(p.opt_out is not None for p in result.pairs) == 3
    assert result.kept_pairs == len(result.pairs) == 6
    assert result.summary()["opted_out"] == 3


def test_opt_out_is_the_same_on_the_c_and_the_pure_path(tmp_path, monkeypatch, sample_wat):
    """Common Crawl's own layout (<head> after the Links): the sample's robots meta made to say noai."""
    from spark_jobs.watgen import generate_wat, write_wat

    records = _records(sample_wat)
    index = next(i for i, r in enumerate(records) if b'"content":"noindex,nofollow","name":"robots"' in r)
    header, _, body = records[index].partition(b"\r\n\r\n")
    body = body[:-4].replace(b'"content":"noindex,nofollow","name":"robots"', b'"content":"noindex,NoImageAI","name":"ROBOTS"')
    header = re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % len(body), header)
    records[index] = header + b"\r\n\r\n" + body + b"\r\n\r\n"
    (tmp_path / "sample.wat").write_bytes(b"".join(records))
    write_wat(tmp_path / "o.wat", _opt_out_pages())
    generate_wat(tmp_path / "g.wat", 40, seed=4, noai_ratio=0.3)

    for path in ("sample.wat", "o.wat", "g.wat"):
        fast = process_wat(str(tmp_path / path))
        with monkeypatch.context() as patched:
            patched.setattr("spark_jobs.wat.watlinks", None)
            pure = process_wat(str(tmp_path / path))
        assert fast.summary() | {"duration_s": 0} == pure.summary() | {"duration_s": 0}
        assert [(p.uid, p.opt_out) for p in fast.pairs] == [(p.uid, p.opt_out) for p in pure.pairs]
        assert 0 < fast.opted_out < fast.kept_pairs
    sample = process_wat(str(tmp_path / "sample.wat"))
    assert {p.page_url for p in sample.pairs if p.opt_out} == {p.page_url for p in sample.pairs if "0x20.be" in p.page_url}
    assert process_wat(str(sample_wat)).opted_out == 0  # the real sample itself has no opt-out
