"""The canonical URL form, and the one table of takedown cases every implementation must agree on.

CASES is imported by the Spark-side test (tests/spark_jobs/test_takedowns.py) and checked here
against extraction's matcher, so the extraction, the tables and the release read a request alike.
"""

from __future__ import annotations

import pytest

from altlake import urls
from altlake.urls import canonical_host, canonical_url, host_suffixes
from spark_jobs.takedowns import normalize_value
from spark_jobs.wat import is_taken_down

# (kind, request as sent, candidate URL as crawled, whether the request must remove it)
CASES: list[tuple[str, str, str, bool]] = [
    ("url", "http://example.com/a/img.jpg", "http://example.com/a/img.jpg", True),
    ("url", "http://example.com/a/img.jpg", "http://example.com/a/img.jpg/", True),  # trailing slash
    ("url", "http://example.com/a/img.jpg", "HTTP://EXAMPLE.COM/a/img.jpg", True),  # scheme and host case
    ("url", "http://example.com/a/img.jpg", "http://example.com/a/%69%6Dg.jpg", True),  # encoded unreserved
    ("url", "http://example.com/a/img.jpg", "http://example.com:80/a/img.jpg", True),  # default port
    ("url", "http://example.com/a/img.jpg", "http://example.com/a/img.jpg#top", True),  # fragment
    ("url", "http://example.com/a/img.jpg", "http://example.com/a/./img.jpg", True),  # dot segment
    ("url", "http://example.com/a/img.jpg", "http://example.com/b/../a/img.jpg", True),
    ("url", "http://example.com/a/img.jpg", "http://example.com/b/%2e%2E/a/img.jpg", True),  # encoded dots
    ("url", "http://example.com/a/img.jpg", "http://user:pw@example.com/a/img.jpg", True),  # user info
    ("url", "http://example.com/a/img.jpg", "http://example.com./a/img.jpg", True),  # trailing-dot host
    ("url", "http://example.com/a/img.jpg?", "http://example.com/a/img.jpg", True),  # empty query
    ("url", "HTTPS://Example.com:443/a/./img.jpg#x", "https://example.com/a/img.jpg", True),  # request spelled oddly
    ("url", "http://example.com/a|b.jpg", "http://example.com/a%7cb.jpg", True),  # | and its encodings
    ("url", "http://example.com/a b.jpg", "http://example.com/a%20b.jpg", True),
    ("url", "http://bücher.example/x.jpg", "http://xn--bcher-kva.example/x.jpg", True),  # IDN
    ("url", "http://example.com/a/img.jpg", "http://example.com/a/img.jpg?w=300", False),  # another query
    ("url", "http://example.com/a/img.jpg", "http://example.com/a/IMG.jpg", False),  # paths are case-sensitive
    ("url", "http://example.com/a/img.jpg", "https://example.com/a/img.jpg", False),  # another scheme
    ("url", "http://example.com/a/img.jpg", "http://example.com:8080/a/img.jpg", False),  # another port
    ("url", "http://example.com/a/b.jpg", "http://example.com/a%2Fb.jpg", False),  # %2F is not a segment break
    ("domain", "example.com", "http://example.com/x.jpg", True),
    ("domain", "example.com", "http://cdn.img.example.com/x.jpg", True),  # subdomains
    ("domain", "EXAMPLE.com.", "http://Example.COM/x.jpg", True),  # case and trailing dot of the request
    ("domain", "*.example.com", "http://a.example.com/x.jpg", True),
    ("domain", "example.com", "http://example.com./x.jpg", True),  # trailing-dot host
    ("domain", "example.com", "http://user:pw@example.com:8080/x.jpg", True),
    ("domain", "example.com", "http://example.com/x|y{z}^%.jpg", True),  # what Spark's URL parser rejects
    ("domain", "bücher.example", "http://xn--bcher-kva.example/x.jpg", True),  # IDN in either form
    ("domain", "xn--bcher-kva.example", "http://BÜCHER.example/x.jpg", True),
    ("domain", "example.com", "http://badexample.com/x.jpg", False),  # a name that ends alike
    ("domain", "example.com", "http://example.com.evil.net/x.jpg", False),
    ("domain", "example.org", "http://evil.com/x.jpg?from=http://example.org/", False),
    ("domain", "img.example.com", "http://example.com/x.jpg", False),  # a parent is not a subdomain
]


def matches_in_extraction(kind: str, request: str, url: str) -> bool:
    """What extraction decides: both sides canonical, as process_wat and the takedowns table hold them."""
    value = normalize_value(kind, request)
    return is_taken_down(canonical_url(url), frozenset({value} if kind == "url" else ()), frozenset({value} if kind == "domain" else ()))


@pytest.mark.parametrize("kind,request_value,url,expected", CASES, ids=[f"{k}:{u}" for k, _, u, _ in CASES])
def test_every_case_matches_as_the_table_says_in_extraction(kind, request_value, url, expected):
    assert matches_in_extraction(kind, request_value, url) is expected


def test_canonical_form_is_idempotent_and_rejects_what_cannot_be_fetched():
    for _, request, url, _ in CASES:
        for value in (request, url):
            canonical = canonical_url(value if "://" in value else f"http://{value}/")
            assert canonical is not None and canonical_url(canonical) == canonical, value
            host = canonical_host(value)
            assert canonical_host(host) == host, value
    for bad in ("ftp://example.com/x.jpg", "http://", "http://exa mple.com/x", "javascript:alert(1)", "", None):
        assert canonical_url(bad) is None, bad


def test_host_suffixes_cover_parent_domains():
    assert host_suffixes("a.b.example.com") == ["a.b.example.com", "b.example.com", "example.com", "com"]
    assert host_suffixes("[::1]") == ["[::1]"]


def test_the_fast_path_agrees_with_the_full_parse_on_the_real_crawl(sample_wat):
    """Most URLs skip the parse (already canonical); each must be exactly what the parse gives."""
    from spark_jobs.wat import read_raw_links

    links = {url for url, _ in read_raw_links(str(sample_wat)) if url.startswith("http")}
    fast = [url for url in links if urls._ALREADY_CANONICAL.fullmatch(url) and "xn--" not in url]
    assert len(fast) > len(links) / 2  # the fast path is the common case
    assert {url: urls._parse_canonical(url) for url in fast} == {url: url for url in fast}


def test_the_fast_path_agrees_with_the_full_parse_on_tricky_urls():
    """URLs assembled from the parts that canonicalisation changes: wherever the fast path says
    'already canonical', the full parse must return the URL unchanged."""
    import random

    rng = random.Random(7)
    schemes = ["http://", "https://", "HTTP://", "http:/", "http:\\\\"]
    hosts = ["a.com", "a-b.c0m", "1.2.3.4", "0x7f.1", "a..b", "xn--bcher-kva.example", "a.com.", "A.com", "a.b-",
             "-a.com", "a.123", "localhost", "a_b.com", "[::1]", "a.com:80", "a.com:8080", "u@a.com", "a.com:"]  # fmt: skip
    segments = ["", ".", "..", "a", "%41", "%2e", "~", "'", "|", ";", "b.c", "@", ":", "!", "$", " ", "é", "%7c", "a=b", "{"]
    queries = ["", "?", "?a=1", "?a='1'", "?a=%41", "?a b", "?x=/..", "??", "?é"]
    tails = ["", "#", "#f", "/"]
    hosts, segments, queries, tails = hosts + ["img.example.org"] * 8, segments + ["x.jpg"] * 8, queries + ["", "?w=1"] * 4, tails + [""] * 8
    accepted = 0
    for _ in range(20000):
        path = "".join("/" + rng.choice(segments) for _ in range(rng.randint(0, 4)))
        url = rng.choice(schemes) + rng.choice(hosts) + path + rng.choice(queries) + rng.choice(tails)
        if urls._ALREADY_CANONICAL.fullmatch(url) and "xn--" not in url:
            accepted += 1
            assert urls._parse_canonical(url) == url, url
    assert accepted > 300  # the generator does reach the fast path
