"""The downloader against the real local image server: every hostile endpoint, limits, SSRF, laziness."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter

import pytest

from altlake.schemas import DOWNLOAD_FAILURES, STATUS_OK
from altlake_cli.image_server import ImageServer
from gpu_workers.downloader import DownloadConfig, FetchResult, _HostGate, download, parse_retry_after, retry_delay

LOCAL = ("127.0.0.1",)


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def fresh_server():
    """A server of the test's own, so hit counters (robots.txt, ...) start at zero."""
    with ImageServer() as srv:
        yield srv


def run(items: list[tuple[str, str]], config: DownloadConfig, max_in_flight: int = 64) -> dict[str, FetchResult]:
    """Download and check the contract every caller relies on: each key exactly once, valid status."""
    results = list(download(items, config, max_in_flight=max_in_flight))
    counts = Counter(r.key for r in results)
    assert counts == Counter(key for key, _ in items), "every input key must come back exactly once"
    for result in results:
        assert result.status == STATUS_OK or result.status in DOWNLOAD_FAILURES, result
        assert (result.body is not None) == (result.status == STATUS_OK), result
        assert result.status == STATUS_OK or result.error, "failures carry a reason"
    return {r.key: r for r in results}


def test_each_hostile_endpoint_ends_in_its_status(fresh_server: ImageServer):
    srv = fresh_server
    cases = {
        "/photo/astronaut.jpg": "ok",
        "/photo/china.webp?size=300": "ok",
        "/redirect?to=/photo/coffee.png": "ok",
        "/xrobots/scoped-other?tag=otherbot:%20noindex": "ok",
        "/status/404": "http_4xx",
        "/status/500": "http_5xx",
        "/flaky/429/9/never-recovers": "http_429",
        "/slow/drip?bytes=100000&interval=0.2": "timeout",
        "/endless/forever": "too_large",
        "/large/declared?bytes=3000000": "too_large",
        "/large/streamed?bytes=3000000&chunked=1": "too_large",
        "/html/page": "not_image",
        "/loop/0": "too_many_redirects",
        "/redirect?to=http://10.0.0.1/image.jpg": "blocked_address",
        "/redirect?to=http://169.254.169.254/latest/meta-data/": "blocked_address",
        "/noai/picture": "opted_out",
        "/xrobots/scoped-us?tag=altlake:%20noai": "opted_out",
        "/xrobots/imageindex?tag=max-snippet:%2010&tag=noimageindex": "opted_out",
        "/private/secret.jpg": "robots_disallowed",
    }
    items = [(f"k{i}", srv.url(path)) for i, path in enumerate(cases)]
    items += [("bad-scheme", "ftp://example.org/a.jpg"), ("no-host", "http:///a.jpg")]
    config = DownloadConfig(allow_hosts=LOCAL, timeout_s=2.0, max_bytes=1_000_000, retries=1, backoff_base_s=0.01)

    results = run(items, config)

    got = {path: results[f"k{i}"].status for i, path in enumerate(cases)}
    assert got == cases
    assert results["bad-scheme"].status == results["no-host"].status == "invalid_url"
    assert srv.hits("/robots.txt") == 1, "robots.txt is fetched once per host, shared by concurrent requests"
    assert srv.hits("/private/secret.jpg") == 0, "a robots-disallowed path is never requested"
    declared = results[f"k{list(cases).index('/large/declared?bytes=3000000')}"]
    assert "Content-Length" in declared.error, "a declared oversize body is refused from its header"
    redirect_ok = results["k2"]
    assert redirect_ok.final_url == srv.url("/photo/coffee.png") and redirect_ok.content_type == "image/png"


def test_opt_out_is_decided_before_the_body_is_read(server: ImageServer):
    config = DownloadConfig(allow_hosts=LOCAL, max_bytes=50_000_000)
    results = run([("endless", server.url("/endless/opted-out?tag=noai"))], config)

    assert results["endless"].status == "opted_out"
    assert results["endless"].body is None
    # Had the body been read, the client would have taken max_bytes before giving up.
    assert server.bytes_sent("/endless/opted-out") < config.max_bytes // 4


def test_retries_on_429_and_503_but_not_on_404(fresh_server: ImageServer):
    srv = fresh_server
    items = [
        ("429", srv.url("/flaky/429/2/a?retry_after=0")),
        ("503", srv.url("/flaky/503/1/b?retry_after=date")),
        ("404", srv.url("/status/404")),
        ("500", srv.url("/status/500")),
    ]
    config = DownloadConfig(allow_hosts=LOCAL, retries=2, backoff_base_s=0.01, max_retry_after_s=0.05)

    results = run(items, config)

    assert (results["429"].status, results["429"].attempts) == ("ok", 3)
    assert srv.hits("/flaky/429/2/a?retry_after=0") == 3
    assert (results["503"].status, results["503"].attempts) == ("ok", 2)
    assert (results["404"].status, results["404"].attempts) == ("http_4xx", 1)
    assert srv.hits("/status/404") == 1
    assert (results["500"].status, results["500"].attempts) == ("http_5xx", 3)


def test_retry_delay_honours_retry_after_with_a_cap():
    config = DownloadConfig(backoff_base_s=1.0, max_retry_after_s=30.0)
    assert retry_delay(0, 5.0, config) == 5.0
    assert retry_delay(0, 3600.0, config) == 30.0
    backoffs = [retry_delay(3, None, config) for _ in range(50)]
    assert all(4.0 <= b <= 12.0 for b in backoffs), "base * 2**attempt with +-50% jitter"
    assert len(set(backoffs)) > 1, "jittered"


def test_parse_retry_after_seconds_and_http_date():
    now = 1_700_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:20 GMT", now=now) == pytest.approx(120.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_per_host_concurrency_is_never_exceeded_at_the_server(fresh_server: ImageServer):
    srv = fresh_server
    items = [(str(i), srv.url(f"/gen/c{i}.jpg?w=64&h=64&delay=0.05")) for i in range(24)]

    run(items, DownloadConfig(allow_hosts=LOCAL, per_host_concurrency=3, concurrency=64))
    limited_peak = srv.peak_concurrency
    srv.reset_stats()
    run(items, DownloadConfig(allow_hosts=LOCAL, per_host_concurrency=12, concurrency=64))

    assert 1 <= limited_peak <= 3
    assert srv.peak_concurrency > 3, "the server-side measurement does see more when allowed"


def test_host_gate_spaces_request_starts_by_the_rate():
    async def starts() -> list[float]:
        gate, stamps = _HostGate(DownloadConfig(per_host_rate=50.0, per_host_concurrency=4)), []

        async def one() -> None:
            async with gate:
                stamps.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(6)))
        return sorted(stamps)

    stamps = asyncio.run(starts())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= 1 / 50.0 - 0.002


def test_without_the_allow_list_loopback_is_blocked_and_never_contacted(fresh_server: ImageServer):
    srv = fresh_server
    port = srv.base_url.rsplit(":", 1)[1]
    items = [
        ("literal", srv.url("/photo/astronaut.jpg")),
        ("name", f"http://localhost:{port}/photo/astronaut.jpg"),  # resolved, then refused by the resolver
        ("v6", f"http://[::1]:{port}/photo/astronaut.jpg"),
        ("mapped", f"http://[::ffff:127.0.0.1]:{port}/photo/astronaut.jpg"),
    ]
    results = run(items, DownloadConfig())

    assert {k: r.status for k, r in results.items()} == dict.fromkeys(results, "blocked_address")
    assert "loopback" in results["literal"].error
    assert srv.hits("/robots.txt") == 0 and srv.hits("/photo/astronaut.jpg") == 0


def test_redirect_to_a_private_address_off_the_list_is_refused_before_connecting(fresh_server: ImageServer):
    with ImageServer(host="127.0.0.2") as private:
        hop = fresh_server.url(f"/redirect?to={private.url('/photo/astronaut.jpg')}")

        refused = run([("hop", hop)], DownloadConfig(allow_hosts=("127.0.0.1",)))
        assert refused["hop"].status == "blocked_address"
        assert private.hits("/robots.txt") == 0 and private.hits("/photo/astronaut.jpg") == 0

        allowed = run([("hop", hop)], DownloadConfig(allow_hosts=("127.0.0.0/8",)))
        assert allowed["hop"].status == "ok", "a CIDR on the allow-list opens the whole network"
        assert allowed["hop"].final_url == private.url("/photo/astronaut.jpg")
        assert private.hits("/photo/astronaut.jpg") == 1


def test_unresolvable_host_and_closed_port(server: ImageServer):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    items = [("dns", "http://no-such-host.invalid/a.jpg"), ("closed", f"http://127.0.0.1:{closed_port}/a.jpg")]

    results = run(items, DownloadConfig(allow_hosts=LOCAL, retries=1, backoff_base_s=0.01))

    assert results["dns"].status == "dns"
    assert results["closed"].status == "connect"
    assert results["closed"].attempts == 2, "connection errors are retried"


def test_inputs_are_pulled_lazily_and_memory_stays_bounded(server: ImageServer):
    pulled = 0

    def inputs():
        nonlocal pulled
        for i in range(120):
            pulled += 1
            yield str(i), server.url(f"/gen/lazy{i % 7}.jpg?w=32&h=32")

    max_in_flight, seen = 5, []
    for consumed, result in enumerate(download(inputs(), DownloadConfig(allow_hosts=LOCAL), max_in_flight), start=1):
        assert pulled <= consumed + max_in_flight
        seen.append((result.key, result.status))

    assert sorted(seen, key=lambda pair: int(pair[0])) == [(str(i), "ok") for i in range(120)]


def test_closing_early_stops_the_background_loop(server: ImageServer):
    stream = download(((str(i), server.url("/gen/early.jpg?w=32&h=32")) for i in range(1000)), DownloadConfig(allow_hosts=LOCAL), 16)
    first = [next(stream) for _ in range(3)]
    stream.close()

    assert [r.status for r in first] == ["ok"] * 3
    assert not [t for t in threading.enumerate() if t.name == "altlake-download"]


def test_config_takes_the_platform_user_agent(settings, server: ImageServer):
    config = DownloadConfig.from_settings(settings, allow_hosts=LOCAL)
    assert "+http" in config.user_agent, "the user agent carries a contact URL"
    results = run([("a", server.url("/photo/astronaut.jpg?ua-check"))], config)
    assert results["a"].status == "ok"
    assert server.user_agent("/photo/astronaut.jpg?ua-check") == settings.user_agent
