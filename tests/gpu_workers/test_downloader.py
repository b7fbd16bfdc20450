"""The downloader against the real local image server: every hostile endpoint, limits, SSRF, laziness."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from altlake.schemas import DOWNLOAD_FAILURES, OPT_OUT_SIGNALS, STATUS_OK
from altlake_cli.image_server import ImageServer, photo_bytes
from gpu_workers.downloader import DownloadConfig, FetchResult, _HostGate, download, parse_retry_after, retry_delay
from gpu_workers.safety import ROBOTS_MIN_PARSE_BYTES

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
        "/xrobots/scoped-img2dataset?tag=img2dataset:%20noai": "opted_out",
        "/xrobots/imageindex?tag=max-snippet:%2010&tag=noimageindex": "opted_out",
        "/xrobots/noml?tag=noml": "opted_out",
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
    assert srv.hits("/.well-known/tdmrep.json") == 1, "tdmrep.json is fetched once per host; its 404 reserves nothing"
    opted_out = {path: results[f"k{i}"].error for i, path in enumerate(cases) if cases[path] == "opted_out"}
    assert all(error.startswith("x_robots_tag: ") for error in opted_out.values()), opted_out
    assert opted_out["/xrobots/noml?tag=noml"] == "x_robots_tag: noml"
    assert opted_out["/xrobots/scoped-img2dataset?tag=img2dataset:%20noai"] == "x_robots_tag: img2dataset: noai"
    declared = results[f"k{list(cases).index('/large/declared?bytes=3000000')}"]
    assert "Content-Length" in declared.error, "a declared oversize body is refused from its header"
    redirect_ok = results["k2"]
    assert redirect_ok.final_url == srv.url("/photo/coffee.png") and redirect_ok.content_type == "image/png"


@pytest.mark.parametrize("tag", ["noai", "noml"])
def test_opt_out_is_decided_before_the_body_is_read(server: ImageServer, tag: str):
    config = DownloadConfig(allow_hosts=LOCAL, max_bytes=50_000_000)
    results = run([("endless", server.url(f"/endless/opted-out-{tag}?tag={tag}"))], config)

    assert (results["endless"].status, results["endless"].error) == ("opted_out", f"x_robots_tag: {tag}")
    assert results["endless"].body is None
    # Had the body been read, the client would have taken max_bytes before giving up.
    assert server.bytes_sent(f"/endless/opted-out-{tag}") < config.max_bytes // 4


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
    """The k-th start comes no sooner than k intervals after the first could: measured from before
    the first request, which holds however late a busy machine wakes any one of them (the gaps
    between two late wake-ups can shrink; the schedule they keep cannot)."""

    async def starts() -> tuple[float, list[float]]:
        gate, stamps = _HostGate(DownloadConfig(per_host_rate=50.0, per_host_concurrency=4)), []

        async def one() -> None:
            async with gate:
                stamps.append(time.monotonic())

        begin = time.monotonic()
        await asyncio.gather(*(one() for _ in range(6)))
        return begin, sorted(stamps)

    begin, stamps = asyncio.run(starts())
    assert all(stamp - begin >= k / 50.0 - 1e-6 for k, stamp in enumerate(stamps)), [round(s - begin, 4) for s in stamps]


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


class _QuietHandler(BaseHTTPRequestHandler):
    """Keep-alive like real hosts, and no access log on the test's output."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler], ip: str = "127.0.0.1") -> Iterator[str]:
    """Serve `handler` on a free port of `ip` in a thread; yields the base URL."""
    httpd = ThreadingHTTPServer((ip, 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{ip}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@contextmanager
def robots_host(routes: dict[str, tuple[int, bytes, dict[str, str]]]) -> Iterator[tuple[str, Counter[str]]]:
    """A real HTTP host answering `routes` (path -> status, body, headers) and a photo anywhere else.

    The image server always serves robots.txt with 200; this one can answer it with any status or
    redirect. A body given as an int is that many bytes streamed in chunks; what was written lands
    in hits[path + " bytes"]. Yields the base URL and the hits per path.
    """
    hits: Counter[str] = Counter()
    photo = photo_bytes("astronaut", "jpg", 64)

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            hits[self.path] += 1
            status, body, headers = routes.get(self.path, (200, photo, {"Content-Type": "image/jpeg"}))
            self.send_response(status)
            size = body if isinstance(body, int) else len(body)
            for name, value in {"Content-Length": str(size), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            if not isinstance(body, int):
                self.wfile.write(body)
                return
            chunk = b"\xff" * 65536
            try:
                for _ in range(0, body, len(chunk)):
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    hits[self.path + " bytes"] += len(chunk)
            except OSError:
                self.close_connection = True  # the client hung up: what it was sent is counted

    with _serving(Handler) as base:
        yield base, hits


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, "ok"),  # RFC 9309 "unavailable": no rules, even though the error page reads like rules
        (401, "ok"),
        (403, "ok"),
        (429, "http_429"),  # rate-limited: treated as unreachable, and retryable
        (500, "http_5xx"),  # "unreachable": complete disallow
        (503, "http_5xx"),
    ],
)
def test_robots_txt_status_decides_what_may_be_fetched(status: int, expected: str):
    routes = {"/robots.txt": (status, b"User-agent: *\nDisallow: /\n", {"Content-Type": "text/plain"})}
    with robots_host(routes) as (base, hits):
        results = run([("a", base + "/a.jpg")], DownloadConfig(allow_hosts=LOCAL, retries=0))
    assert results["a"].status == expected, results["a"]
    assert hits["/a.jpg"] == (1 if expected == "ok" else 0), "an unreachable robots.txt stops every request to the host"
    if expected != "ok":
        assert "robots.txt" in results["a"].error


@pytest.mark.parametrize(("redirects", "expected"), [(5, "robots_disallowed"), (6, "ok")])
def test_robots_txt_redirects_are_followed_five_times(redirects: int, expected: str):
    """RFC 9309 2.3.1.2: follow at least five redirects; past that, robots.txt may count as unavailable."""
    hops = ["/robots.txt", *(f"/hop/{i}" for i in range(1, redirects)), "/rules.txt"]
    routes = {path: (302, b"", {"Location": target}) for path, target in itertools.pairwise(hops)}
    routes["/rules.txt"] = (200, b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"})
    with robots_host(routes) as (base, hits):
        results = run([("a", base + "/private/a.jpg")], DownloadConfig(allow_hosts=LOCAL, retries=0))
    assert results["a"].status == expected, results["a"]
    assert hits["/rules.txt"] == (1 if redirects <= 5 else 0)


def test_robots_txt_is_read_the_rfc_9309_way():
    robots = (
        "User-agent: *\n"
        "Disallow: /photo/\n"
        "Allow: /photo/astronaut\n"  # longer than "/photo/", so it wins though listed second
        "Disallow: /*.png$\n"
        "\n"
        "User-agent: img2dataset\n"  # LAION's opt-out convention, while the * group allows /xrobots/
        "Disallow: /xrobots/\n"
    )
    cases = {
        "/photo/astronaut.jpg": "ok",
        "/photo/china.jpg": "robots_disallowed",
        "/gen/pic.png": "robots_disallowed",
        "/gen/pic.jpg": "ok",
        "/xrobots/plain": "opted_out",  # img2dataset's own group: an AI-crawler opt-out, not ours
    }
    with ImageServer(robots_txt=robots) as srv:
        results = run([(path, srv.url(path)) for path in cases], DownloadConfig(allow_hosts=LOCAL, retries=0))
        assert {path: r.status for path, r in results.items()} == cases
        assert all(srv.hits(path) == 0 for path, status in cases.items() if status != "ok"), "disallowed paths are never requested"
        assert results["/xrobots/plain"].error.startswith("ai_crawler_robots: img2dataset ")


def test_robots_txt_with_a_bom_is_obeyed():
    with ImageServer(robots_txt="\ufeffUser-agent: *\nDisallow: /private/\n") as srv:
        results = run([("private", srv.url("/private/a.jpg")), ("photo", srv.url("/photo/astronaut.jpg"))], DownloadConfig(allow_hosts=LOCAL))
        assert (results["private"].status, results["photo"].status) == ("robots_disallowed", "ok")
        assert srv.hits("/private/a.jpg") == 0


def test_robots_txt_is_read_up_to_its_limit():
    limit = DownloadConfig().robots_max_bytes
    within = "User-agent: *\n" + "#" * (ROBOTS_MIN_PARSE_BYTES - 100) + "\nDisallow: /private/\n"
    robots = within + "#" * (limit - len(within) + 10) + "\nDisallow: /photo/\n"  # the last rule lies past the limit
    with ImageServer(robots_txt=robots) as srv:
        results = run([("private", srv.url("/private/a.jpg")), ("photo", srv.url("/photo/astronaut.jpg"))], DownloadConfig(allow_hosts=LOCAL))
    assert (results["private"].status, results["photo"].status) == ("robots_disallowed", "ok")
    with pytest.raises(ValueError, match="robots_max_bytes"):
        DownloadConfig(robots_max_bytes=64 * 1024)


# --- every opt-out signal, before any download (issue #14) ---------------------------------------

PHOTO_HEADERS = {"Content-Type": "image/jpeg"}
TDMREP_PRIVATE = json.dumps(
    [
        {"location": "/private/*", "tdm-reservation": 1, "tdm-policy": "https://provider.example/policies/1.json"},
        {"location": "/", "tdm-reservation": 0},
    ]
).encode()


def _signal(result: FetchResult) -> str:
    assert result.status == "opted_out" and result.body is None, result
    signal = result.error.split(":", 1)[0]
    assert signal in OPT_OUT_SIGNALS, result.error
    return signal


def test_every_opt_out_signal_is_honoured_before_the_body(caplog):
    photo = photo_bytes("astronaut", "jpg", 64)
    tdm_routes = {
        "/.well-known/tdmrep.json": (200, TDMREP_PRIVATE, {"Content-Type": "application/json"}),
        "/header/reserved.jpg": (200, 40_000_000, {**PHOTO_HEADERS, "tdm-reservation": "1"}),
        "/header/policy.jpg": (200, photo, {**PHOTO_HEADERS, "TDM-Reservation": "1", "tdm-policy": "https://p.example/policy"}),
        "/header/not-reserved.jpg": (200, photo, {**PHOTO_HEADERS, "tdm-reservation": "0"}),
        "/xrobots/noml.jpg": (200, 40_000_000, {**PHOTO_HEADERS, "X-Robots-Tag": "noml"}),
    }
    ai_routes = {"/robots.txt": (200, b"User-agent: GPTBot\nDisallow: /\n\nUser-agent: *\nAllow: /\n", {"Content-Type": "text/plain"})}
    with robots_host(tdm_routes) as (tdm, tdm_hits), robots_host(ai_routes) as (ai, ai_hits):
        items = [
            *((f"private{i}", f"{tdm}/private/{i}.jpg") for i in range(6)),
            ("public", f"{tdm}/public/a.jpg"),
            ("header", f"{tdm}/header/reserved.jpg"),
            ("policy", f"{tdm}/header/policy.jpg"),
            ("zero", f"{tdm}/header/not-reserved.jpg"),
            ("noml", f"{tdm}/xrobots/noml.jpg"),
            ("gptbot", f"{ai}/photos/a.jpg"),
            ("hop", f"{ai}/redirect-me"),
        ]
        ai_routes["/redirect-me"] = (302, b"", {"Location": f"{tdm}/private/hop.jpg"})
        with caplog.at_level(logging.WARNING, logger="gpu_workers.downloader"):
            results = run(items, DownloadConfig(allow_hosts=LOCAL, retries=0, max_bytes=50_000_000))

    statuses = {key: r.status for key, r in results.items()}
    assert statuses == {
        **{f"private{i}": "opted_out" for i in range(6)},
        "public": "ok",
        "header": "opted_out",
        "policy": "opted_out",
        "zero": "ok",
        "noml": "opted_out",
        "gptbot": "opted_out",
        "hop": "opted_out",
    }
    assert results["private0"].error == "tdmrep_json: /private/* (policy https://provider.example/policies/1.json)"
    assert {_signal(results[f"private{i}"]) for i in range(6)} == {"tdmrep_json"}
    assert results["header"].error == "tdm_reservation: 1"
    assert results["policy"].error == "tdm_reservation: 1 (policy https://p.example/policy)"
    assert results["noml"].error == "x_robots_tag: noml"
    assert results["gptbot"].error.startswith("ai_crawler_robots: GPTBot ")
    assert _signal(results["hop"]) == "ai_crawler_robots", "GPTBot's group covers the first hop already"
    assert [_signal(results[k]) for k in ("header", "policy", "noml", "gptbot")] == [
        "tdm_reservation", "tdm_reservation", "x_robots_tag", "ai_crawler_robots"
    ]

    # Site-wide files: once per host; what they opt out is never requested.
    assert tdm_hits["/.well-known/tdmrep.json"] == 1 and tdm_hits["/robots.txt"] == 1
    assert not [path for path in tdm_hits if path.startswith("/private/")], "a reserved location is never requested"
    assert ai_hits["/photos/a.jpg"] == ai_hits["/redirect-me"] == 0
    assert ai_hits["/.well-known/tdmrep.json"] == 0, "robots.txt opted the paths out first"
    # Header signals: the request is made, the body is not read (40 MB offered and within max_bytes;
    # what the server got out is what the socket buffers took before the client hung up).
    assert tdm_hits["/header/reserved.jpg"] == tdm_hits["/xrobots/noml.jpg"] == 1
    assert tdm_hits["/header/reserved.jpg bytes"] < 10_000_000 and tdm_hits["/xrobots/noml.jpg bytes"] < 10_000_000
    assert not caplog.records, "a valid tdmrep.json logs nothing"


def test_a_redirect_into_a_reserved_location_is_refused_before_the_hop():
    routes = {"/.well-known/tdmrep.json": (200, TDMREP_PRIVATE, {"Content-Type": "application/json"})}
    with robots_host(routes) as (reserved, reserved_hits):
        with robots_host({"/go": (302, b"", {"Location": f"{reserved}/private/a.jpg"})}) as (front, front_hits):
            results = run([("hop", f"{front}/go")], DownloadConfig(allow_hosts=LOCAL, retries=0))
    assert results["hop"].error.startswith("tdmrep_json: /private/*"), "each hop's origin has its tdmrep.json checked"
    assert front_hits["/go"] == 1 and front_hits["/.well-known/tdmrep.json"] == 1
    assert reserved_hits["/.well-known/tdmrep.json"] == 1 and reserved_hits["/private/a.jpg"] == 0


@pytest.mark.parametrize(
    ("status", "body", "warns"),
    [
        (404, TDMREP_PRIVATE, False),  # not served: the host does not implement TDMRep
        (403, TDMREP_PRIVATE, False),
        (500, TDMREP_PRIVATE, False),
        (200, b"<html>soft 404</html>", True),  # malformed: no reservation, and a warning
        (200, b'{"location": "/private/*", "tdm-reservation": 1}', True),
    ],
)
def test_tdmrep_json_that_is_not_served_or_malformed_reserves_nothing(status: int, body: bytes, warns: bool, caplog):
    routes = {"/.well-known/tdmrep.json": (status, body, {"Content-Type": "application/json"})}
    with robots_host(routes) as (base, hits), caplog.at_level(logging.WARNING, logger="gpu_workers.downloader"):
        results = run([(str(i), f"{base}/private/{i}.jpg") for i in range(4)], DownloadConfig(allow_hosts=LOCAL, retries=0))
    assert {r.status for r in results.values()} == {"ok"}
    assert hits["/.well-known/tdmrep.json"] == 1, "fetched once per host, whatever it answered"
    warnings = [r for r in caplog.records if "tdmrep.json" in r.getMessage()]
    assert len(warnings) == (1 if warns else 0), [r.getMessage() for r in caplog.records]


def test_opt_out_signals_can_be_switched_off_for_mirrors():
    routes = {
        "/.well-known/tdmrep.json": (200, TDMREP_PRIVATE, {"Content-Type": "application/json"}),
        "/robots.txt": (200, b"User-agent: GPTBot\nDisallow: /\n", {"Content-Type": "text/plain"}),
        "/header.jpg": (200, photo_bytes("astronaut", "jpg", 64), {**PHOTO_HEADERS, "tdm-reservation": "1"}),
    }
    with robots_host(routes) as (base, hits):
        config = DownloadConfig(allow_hosts=LOCAL, retries=0, respect_tdmrep=False, ai_crawler_tokens=())
        results = run([("private", f"{base}/private/a.jpg"), ("header", f"{base}/header.jpg")], config)
    assert {k: r.status for k, r in results.items()} == {"private": "ok", "header": "ok"}
    assert hits["/.well-known/tdmrep.json"] == 0


# --- politeness to a host: Retry-After pauses the host, a refusing host is given up -------------------

LOOPBACK = ("127.0.0.0/8",)  # two hosts: 127.0.0.1 and 127.0.0.2


@contextmanager
def answering_host(answer, ip: str = "127.0.0.1") -> Iterator[tuple[str, list[tuple[str, float, float]]]]:
    """A real HTTP host on `ip`: robots.txt and tdmrep.json are 404 (no rules), every other path is a
    photo answered as answer(n) says, n counting the image requests from 1: (status, headers, delay_s).
    Yields the base URL and its requests as (path, time.monotonic(), time.time()) on arrival."""
    requests: list[tuple[str, float, float]] = []
    lock = threading.Lock()
    photo = photo_bytes("astronaut", "jpg", 64)

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            with lock:
                requests.append((self.path, time.monotonic(), time.time()))
                n = sum(1 for path, _, _ in requests if path.startswith("/img/"))
            if not self.path.startswith("/img/"):
                status, headers, delay, body = 404, {}, 0.0, b""
            else:
                status, headers, delay = answer(n)
                body = photo if status == 200 else b""
            time.sleep(delay)
            self.send_response(status)
            for name, value in {"Content-Type": "image/jpeg", "Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    with _serving(Handler, ip) as base:
        yield base, requests


def image_requests(requests: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    return [r for r in requests if r[0].startswith("/img/")]


def test_a_429_with_retry_after_pauses_the_whole_host_while_other_hosts_go_on():
    refusing_first = lambda n: (429, {"Retry-After": "1"}, 0.0) if n == 1 else (200, {}, 0.0)  # noqa: E731
    slow = lambda n: (200, {}, 0.15)  # noqa: E731 - keeps the other host busy across the whole pause
    with answering_host(refusing_first, "127.0.0.1") as (a, a_requests), answering_host(slow, "127.0.0.2") as (b, b_requests):
        items = [(f"a{i}", f"{a}/img/{i}.jpg") for i in range(5)] + [(f"b{i}", f"{b}/img/{i}.jpg") for i in range(12)]
        config = DownloadConfig(allow_hosts=LOOPBACK, per_host_concurrency=1, retries=1, backoff_base_s=0.01, max_retry_after_s=10)
        results = run(items, config)

    assert {r.status for r in results.values()} == {"ok"}, results
    (first, refused_at, _), *later = image_requests(a_requests)
    assert len(later) == 5, "the other 4 URLs, and the refused one once more"
    # Every other request of the host waited for the Retry-After, not only the refused URL's retry.
    assert all(at >= refused_at + 0.99 for _, at, _ in later), [round(at - refused_at, 3) for _, at, _ in later]
    resumed = min(at for _, at, _ in later)
    assert any(refused_at < at < resumed for _, at, _ in image_requests(b_requests)), "the other host went on meanwhile"


def test_retry_after_as_an_http_date_pauses_the_host_until_then():
    until: list[float] = []

    def refusing_first(n: int):
        if n > 1:
            return 200, {}, 0.0
        until.append(int(time.time()) + 2)  # a whole second: HTTP dates have no fractions
        return 503, {"Retry-After": email.utils.formatdate(until[0], usegmt=True)}, 0.0

    with answering_host(refusing_first) as (a, requests):
        items = [(str(i), f"{a}/img/{i}.jpg") for i in range(4)]
        results = run(items, DownloadConfig(allow_hosts=LOOPBACK, per_host_concurrency=1, retries=1, max_retry_after_s=10))

    assert {r.status for r in results.values()} == {"ok"}, results
    (_, _, refused_wall), *later = image_requests(requests)
    assert 1.0 < until[0] - refused_wall <= 2.0
    assert len(later) == 4 and all(wall >= until[0] - 0.05 for _, _, wall in later), [round(w - until[0], 3) for _, _, w in later]


def test_a_host_that_keeps_refusing_is_given_up_after_the_limit():
    always_503 = lambda n: (503, {}, 0.0)  # noqa: E731
    fine = lambda n: (200, {}, 0.0)  # noqa: E731
    with answering_host(always_503, "127.0.0.1") as (a, a_requests), answering_host(fine, "127.0.0.2") as (b, _):
        items = [(f"a{i}", f"{a}/img/{i}.jpg") for i in range(8)] + [(f"b{i}", f"{b}/img/{i}.jpg") for i in range(3)]
        config = DownloadConfig(allow_hosts=LOOPBACK, per_host_concurrency=1, retries=2, backoff_base_s=0.01, host_refusal_limit=3)
        results = run(items, config)

    requested = image_requests(a_requests)
    assert len(requested) == 3, "the host received as many image requests as the limit, not one (or three) per URL"
    a_results = {key: r for key, r in results.items() if key.startswith("a")}
    assert {r.status for r in a_results.values()} <= {"http_5xx", "host_refused"}
    asked = {path for path, _, _ in requested}
    for key, result in a_results.items():
        if f"/img/{key[1:]}.jpg" not in asked:
            assert result.status == "host_refused" and "3 consecutive 429/503" in result.error, result
    assert sum(r.status == "host_refused" for r in a_results.values()) >= 8 - 3
    assert {results[f"b{i}"].status for i in range(3)} == {"ok"}, "only the refusing host is given up"


def test_per_host_politeness_comes_from_the_settings():
    from altlake.config import Settings

    settings = Settings.from_env(
        {"ALTLAKE_PER_HOST_CONCURRENCY": "3", "ALTLAKE_PER_HOST_RATE": "2.5", "ALTLAKE_MAX_RETRY_AFTER_S": "7", "ALTLAKE_HOST_REFUSAL_LIMIT": "2"}
    )
    config = DownloadConfig.from_settings(settings, allow_hosts=LOCAL)
    assert (config.per_host_concurrency, config.per_host_rate, config.max_retry_after_s, config.host_refusal_limit) == (3, 2.5, 7.0, 2)
    assert config.politeness() == {
        "user_agent": settings.user_agent, "per_host_concurrency": 3, "per_host_rate": 2.5, "max_retry_after_s": 7.0, "host_refusal_limit": 2,
    }  # fmt: skip
    assert DownloadConfig.from_settings(settings, per_host_rate=None, per_host_concurrency=1).per_host_rate == 2.5, "None keeps the setting"
    assert DownloadConfig.from_settings(settings, per_host_concurrency=1).per_host_concurrency == 1
    with pytest.raises(ValueError, match="per_host_concurrency"):
        DownloadConfig(per_host_concurrency=0)
