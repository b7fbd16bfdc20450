"""The SSRF guard against every spelling of a loopback host, through all three entry points: a
crawl URL in the worker, a redirect hop (a raw UTF-8 Location), and the search service's image_url.
Each is refused without a single connection reaching the target (counted at the target's socket).

Extend HOST_SPELLINGS when a new trick turns up: every entry point is tested with every spelling.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from altlake.config import Settings
from explore.index import build_index
from explore.service import ServiceConfig, create_app, load_explorers
from gpu_workers.downloader import DownloadConfig, download
from tests.explore.conftest import make_release
from tests.hostile.conftest import raw_http

# Each spelling names 127.0.0.1 (or ::1) at {port}; the HTTP client's own normalisation (IDNA / UTS
# #46) turns many of them into an IP literal it would connect to without asking a resolver.
HOST_SPELLINGS = {
    "plain": "http://127.0.0.1:{port}/a.jpg",
    "fullwidth digits and dots": "http://１２７．０．０．１:{port}/a.jpg",
    "fullwidth digits": "http://１２７.０.０.１:{port}/a.jpg",
    "ideographic full stops": "http://127。0。0。1:{port}/a.jpg",
    "halfwidth ideographic full stops": "http://127｡0｡0｡1:{port}/a.jpg",
    "circled digits": "http://①②⑦.0.0.1:{port}/a.jpg",
    "mathematical digits": "http://𝟏𝟐𝟕.𝟎.𝟎.𝟏:{port}/a.jpg",
    "mixed scripts": "http://1２7.0.０.1:{port}/a.jpg",
    "arabic-indic digits": "http://١٢٧.٠.٠.١:{port}/a.jpg",
    "fullwidth localhost": "http://ｌｏｃａｌｈｏｓｔ:{port}/a.jpg",
    "circled localhost": "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ:{port}/a.jpg",
    "upper-case localhost": "http://LOCALHOST:{port}/a.jpg",
    "trailing dot": "http://127.0.0.1.:{port}/a.jpg",
    "localhost with trailing dot": "http://localhost.:{port}/a.jpg",
    "decimal": "http://2130706433:{port}/a.jpg",
    "hex": "http://0x7f000001:{port}/a.jpg",
    "octal": "http://0177.0.0.1:{port}/a.jpg",
    "short form": "http://127.1:{port}/a.jpg",
    "IPv6 loopback": "http://[::1]:{port}/a.jpg",
    "IPv6 loopback in full": "http://[0:0:0:0:0:0:0:1]:{port}/a.jpg",
    "IPv4-mapped IPv6": "http://[::ffff:127.0.0.1]:{port}/a.jpg",
    "IPv4-mapped IPv6 in hex": "http://[::ffff:7f00:1]:{port}/a.jpg",
    "IPv4-compatible IPv6": "http://[::127.0.0.1]:{port}/a.jpg",
    "scoped IPv6": "http://[fe80::1%25lo]:{port}/a.jpg",
    "userinfo before the host": "http://user:pass@127.0.0.1:{port}/a.jpg",
    "a public-looking userinfo": "http://images.example.org@127.0.0.1:{port}/a.jpg",
    "userinfo with fullwidth host": "http://images.example.org@１２７.０.０.１:{port}/a.jpg",
    "percent-encoded host": "http://%31%32%37.0.0.1:{port}/a.jpg",
    "backslash": "http://127.0.0.1:{port}\\@example.org/a.jpg",
    "IDNA punycode": "http://xn--127-0.0.0.1:{port}/a.jpg",
}
REFUSED = {"blocked_address", "invalid_url", "dns"}  # a name no resolver knows never connects either


def _download_one(url: str, config: DownloadConfig):
    return next(download([("k", url)], config, max_in_flight=1))


@pytest.mark.parametrize("spelling", list(HOST_SPELLINGS))
def test_crawl_urls_in_any_spelling_never_reach_loopback(spelling, target):
    url = HOST_SPELLINGS[spelling].format(port=target.port)
    result = _download_one(url, DownloadConfig(timeout_s=3.0, retries=0))
    assert result.status in REFUSED, (spelling, result)
    assert target.connections == 0, f"{spelling}: {url} reached the target"


@pytest.mark.parametrize("spelling", list(HOST_SPELLINGS))
def test_redirect_hops_in_any_spelling_never_reach_loopback(spelling, target):
    """The hop is an allow-listed server whose raw UTF-8 Location names the target."""
    location = HOST_SPELLINGS[spelling].format(port=target.port).encode("utf-8")

    def respond(path: str) -> bytes:
        if path == "/robots.txt":
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        return b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    with raw_http("127.0.0.2", respond) as hop:
        result = _download_one(f"{hop}/start.jpg", DownloadConfig(allow_hosts=("127.0.0.2",), timeout_s=3.0, retries=0))
    assert result.status in REFUSED, (spelling, result)
    assert target.connections == 0, f"{spelling}: the redirect reached the target"


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> Iterator[TestClient]:
    release = make_release(tmp_path_factory.mktemp("hostile"), [16])
    build_index(str(release))
    config = ServiceConfig()  # no allow-list: what `altlake serve` runs with
    with TestClient(create_app(load_explorers([str(release)], config, Settings.from_env()), config)) as client:
        yield client


@pytest.mark.parametrize("spelling", list(HOST_SPELLINGS))
def test_search_image_url_in_any_spelling_never_reaches_loopback(spelling, target, search):
    url = HOST_SPELLINGS[spelling].format(port=target.port)
    response = search.post("/knn-service", json={"image_url": url})
    assert response.status_code == 400, (spelling, response.text)
    assert "SECR" not in response.text
    assert target.connections == 0, f"{spelling}: image_url reached the target"
