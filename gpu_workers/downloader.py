"""The scoring worker's polite, safe image downloader.

One aiohttp session (connection reuse, aiodns + TTL DNS cache) runs on an asyncio loop (uvloop) in a
background thread; `download()` is a plain generator around it, so the worker's pipeline stays
synchronous. At most `max_in_flight` inputs are pulled ahead of what the caller has consumed, so
memory is flat however long the input is. Every (key, url) comes back exactly once, as an image
body or a failure class from `altlake.schemas.DOWNLOAD_FAILURES` with a readable reason.

Order of checks per hop: URL syntax -> SSRF address policy on the host exactly as the client will
connect to it (`safety.guard_url`: IP literals here, resolved names in the resolver, so each
redirect is checked before anything is sent) -> robots.txt (ours, then AI-crawler tokens' own
groups) -> /.well-known/tdmrep.json -> request -> HTTP status -> X-Robots-Tag and tdm-reservation
opt-outs and Content-Length (before the body) -> bounded body read. Both per-origin files are
fetched once per origin through the same guards and cached. An opted-out row's error starts with
its signal from `altlake.schemas.OPT_OUT_SIGNALS` ("x_robots_tag: noai"), so stores count by signal.

The per-attempt deadline counts time spent on the wire (every hop, headers and body), not time
spent waiting for one of the host's slots: a slow but healthy host with a long queue is polite
to wait for, not a timeout.

Politeness is per host (the URL's host, whatever its port): at most `per_host_concurrency` open
requests and `per_host_rate` request starts per second. A 429 or 503 with Retry-After (seconds or an
HTTP date) pauses the whole host: no request of any of its URLs starts before then (capped at
`max_retry_after_s`). After `host_refusal_limit` consecutive 429/503 answers the host is given up
for the batch: every URL of it not yet requested ends `host_refused`, without a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urljoin

import aiohttp
import uvloop
import yarl
from aiohttp.resolver import AsyncResolver

from altlake.config import Settings
from altlake.schemas import STATUS_OK
from gpu_workers.safety import (
    ROBOTS_MIN_PARSE_BYTES,
    ROBOTS_PARSE_BYTES,
    TDMREP_MAX_BYTES,
    TDMREP_PATH,
    AddressPolicy,
    BlockedAddress,
    GuardedResolver,
    InvalidUrl,
    RobotsCache,
    RobotsRules,
    TdmRep,
    guard_url,
    parse_agent_tokens,
    parse_robots,
    parse_tdmrep,
    tdm_header_opt_out,
    x_robots_opt_out,
)
from gpu_workers.stage_clock import NO_CLOCK, StageClock

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Failure classes worth another attempt within the same run (after backoff / Retry-After). Timeouts
# are not: a server that is slow now is slow in a second too, and RETRYABLE_STATUSES brings the row
# back in a later scoring run.
RETRY_NOW = frozenset({"http_429", "http_5xx", "connect"})
_CHUNK = 64 * 1024
_MAX_IDLE_GATES = 4096
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadConfig:
    """How politely and how safely to download; defaults suit a production crawl."""

    user_agent: str = Settings.user_agent
    timeout_s: float = 30.0  # total deadline of one attempt: every hop, headers and body
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 10.0  # longest silence between two body chunks
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    concurrency: int = 256  # open requests in total
    per_host_concurrency: int = 8
    per_host_rate: float = 0.0  # request starts per second per host; 0 = no rate limit
    retries: int = 2  # extra attempts on 429 / 5xx / connection errors
    backoff_base_s: float = 0.5  # base * 2**attempt, with +-50% jitter
    max_retry_after_s: float = 30.0  # cap on a server's Retry-After, for the URL and for its whole host
    host_refusal_limit: int = 5  # consecutive 429/503 answers that give a host up for the batch; 0 = never
    respect_robots: bool = True
    respect_x_robots: bool = True
    respect_tdmrep: bool = True  # W3C TDMRep: the tdm-reservation header and /.well-known/tdmrep.json
    # Product tokens whose own robots.txt groups (and X-Robots-Tag scopes) opt a path out of AI use.
    ai_crawler_tokens: tuple[str, ...] = parse_agent_tokens(Settings.ai_crawler_tokens)
    allow_hosts: tuple[str, ...] = ()  # SSRF allow-list: host names, IPs or CIDRs (tests, private mirrors)
    allow_listed_only: bool = False  # refuse every host not on allow_hosts, before any DNS (offline demos)
    dns_cache_ttl_s: float = 300.0
    robots_max_bytes: int = ROBOTS_PARSE_BYTES  # RFC 9309: at least 500 KiB must be parsed
    reject_content_types: tuple[str, ...] = ("text/", "application/json", "application/xml")

    def __post_init__(self) -> None:
        if self.robots_max_bytes < ROBOTS_MIN_PARSE_BYTES:  # a smaller cap would drop rules RFC 9309 says to obey
            raise ValueError(f"robots_max_bytes must be at least {ROBOTS_MIN_PARSE_BYTES} (RFC 9309 section 2.5)")
        if self.per_host_concurrency < 1 or self.per_host_rate < 0 or self.max_retry_after_s < 0 or self.host_refusal_limit < 0:
            raise ValueError(
                "per_host_concurrency must be at least 1, and per_host_rate, max_retry_after_s and host_refusal_limit "
                f"at least 0 (got {self.per_host_concurrency}, {self.per_host_rate}, {self.max_retry_after_s}, {self.host_refusal_limit})"
            )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> DownloadConfig:
        """The platform's user agent (with its contact URL), AI-crawler tokens and per-host politeness,
        then explicit overrides (None keeps the setting)."""
        values: dict = {"user_agent": settings.user_agent, "ai_crawler_tokens": parse_agent_tokens(settings.ai_crawler_tokens)}
        values.update({name: getattr(settings, name) for name in POLITENESS})
        return cls(**{**values, **{name: value for name, value in overrides.items() if value is not None}})

    def politeness(self) -> dict:
        """What a batch's _SUCCESS records of how it treated hosts (the POLITENESS fields, user agent)."""
        return {"user_agent": self.user_agent, **{name: getattr(self, name) for name in POLITENESS}}


# Per-host politeness: DownloadConfig fields that are also Settings (ALTLAKE_*) and `altlake score` flags.
POLITENESS = ("per_host_concurrency", "per_host_rate", "max_retry_after_s", "host_refusal_limit")


@dataclass
class FetchResult:
    key: str
    url: str
    status: str  # "ok" or a failure class from altlake.schemas.DOWNLOAD_FAILURES
    error: str | None = None
    http_status: int | None = None
    final_url: str | None = None
    body: bytes | None = None
    content_type: str | None = None
    elapsed_s: float = 0.0
    attempts: int = 0
    retry_after_s: float | None = field(default=None, repr=False)  # the server's wish, for backoff


def download(
    items: Iterable[tuple[str, str]], config: DownloadConfig, max_in_flight: int = 512, clock: StageClock = NO_CLOCK
) -> Iterator[FetchResult]:
    """Fetch every (key, url); yield one FetchResult per input, in completion order.

    Inputs are pulled lazily: after k results were consumed, at most k + max_in_flight inputs
    have been taken from `items`. Closing the generator early cancels what is still running.
    The download thread's CPU (HTTP, robots.txt, X-Robots-Tag, the address guard) goes to `clock`.
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    inputs = iter(items)
    with _LoopThread(config, clock) as fetcher:
        in_flight, exhausted = 0, False
        while True:
            while in_flight < max_in_flight and not exhausted:
                item = next(inputs, None)
                if item is None:
                    exhausted = True
                    break
                key, url = item
                fetcher.submit(key, url)
                in_flight += 1
            if in_flight == 0:
                return
            result = fetcher.results.get()
            in_flight -= 1
            yield result


class _LoopThread:
    """An asyncio loop in a daemon thread that owns the Fetcher; results come back on a queue."""

    def __init__(self, config: DownloadConfig, clock: StageClock = NO_CLOCK) -> None:
        self.config, self.clock = config, clock
        self.results: queue.SimpleQueue[FetchResult] = queue.SimpleQueue()
        # libuv's loop (uvloop) rather than asyncio's selector loop: ~0.05 ms less CPU per image in bench/download.
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="altlake-download", daemon=True)
        self._fetcher: Fetcher | None = None
        self._tasks: set[asyncio.Task] = set()

    def __enter__(self) -> _LoopThread:
        self._thread.start()
        self._fetcher = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()
        return self

    async def _open(self) -> Fetcher:
        return Fetcher(self.config)

    def submit(self, key: str, url: str) -> None:
        self._loop.call_soon_threadsafe(self._start, key, url)

    def _start(self, key: str, url: str) -> None:
        task = self._loop.create_task(self._run(key, url))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: str, url: str) -> None:
        assert self._fetcher is not None
        try:
            result = await self._fetcher.fetch(key, url)
        except Exception as exc:  # noqa: BLE001 - a bug must still answer for its key, or download() waits for ever
            result = FetchResult(key=key, url=url, status="error", error=f"{type(exc).__name__}: {exc}")
        self.results.put(result)

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._fetcher is not None:
            await self._fetcher.close()
        self.clock.add("download", time.thread_time())  # this thread did nothing else since it started

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _Failure(Exception):
    """A classified failure of one attempt; carries what the FetchResult needs."""

    def __init__(self, status: str, error: str, http_status: int | None = None, retry_after_s: float | None = None):
        super().__init__(error)
        self.status, self.error, self.http_status, self.retry_after_s = status, error, http_status, retry_after_s


class Fetcher:
    """Async fetching with the shared session, host limits and robots cache (lives on one loop)."""

    def __init__(self, config: DownloadConfig, clock: StageClock = NO_CLOCK) -> None:
        self.config, self.clock = config, clock
        self.policy = AddressPolicy.from_allow_list(config.allow_hosts)
        connector = aiohttp.TCPConnector(
            limit=config.concurrency,
            limit_per_host=config.per_host_concurrency,
            resolver=GuardedResolver(self.policy, AsyncResolver()),
            use_dns_cache=True,
            ttl_dns_cache=int(config.dns_cache_ttl_s),
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": config.user_agent, "Accept": "image/avif,image/webp,image/*;q=0.9,*/*;q=0.5"},
            timeout=aiohttp.ClientTimeout(sock_connect=config.connect_timeout_s, sock_read=config.read_timeout_s),
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self.robots: RobotsCache[RobotsRules] = RobotsCache(self._fetch_robots)
        self.tdmrep: RobotsCache[TdmRep] = RobotsCache(self._fetch_tdmrep, path=TDMREP_PATH)
        self._global = asyncio.Semaphore(config.concurrency)
        self._hosts: dict[str, _HostGate] = {}

    async def close(self) -> None:
        await self.session.close()

    async def fetch(self, key: str, url: str) -> FetchResult:
        """One input to one result, with retries; never raises (except on cancellation)."""
        started = time.perf_counter()
        result = FetchResult(key=key, url=url, status="error")
        for attempt in range(self.config.retries + 1):
            result.attempts = attempt + 1
            try:
                final_url, (response_status, content_type, body) = await self._get(
                    url, self._read_image, self.config.respect_robots, self.config.respect_tdmrep
                )
                result.status, result.error, result.http_status = STATUS_OK, None, response_status
                result.final_url, result.content_type, result.body = final_url, content_type, body
                break
            except _Failure as failure:
                result.status, result.error = failure.status, failure.error
                result.http_status, result.retry_after_s = failure.http_status, failure.retry_after_s
            except TimeoutError:
                result.status, result.error = "timeout", f"no complete response within {self.config.timeout_s:g}s"
            except Exception as exc:  # noqa: BLE001 - any surprise becomes a recorded row, never a lost one
                result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
            if result.status not in RETRY_NOW or attempt == self.config.retries:
                break
            await asyncio.sleep(retry_delay(attempt, result.retry_after_s, self.config))
        result.elapsed_s = time.perf_counter() - started
        return result

    async def _get(
        self, url: str, read: Callable[[aiohttp.ClientResponse], Awaitable[T]], check_robots: bool, check_tdmrep: bool = False
    ) -> tuple[str, T]:
        """GET following redirects ourselves, so every hop passes the address (robots, tdmrep.json) checks.

        One deadline covers the attempt's time on the wire, hop after hop; waiting for a host slot
        (politeness) is not counted against it.
        """
        current, budget = url, _Deadline(self.config.timeout_s)
        for _ in range(self.config.max_redirects + 1):
            target = self._check_url(current)
            if check_robots:
                await self._check_robots(target)
            if check_tdmrep:
                await self._check_tdmrep(target)
            async with self._host_slot(target.raw_host) as gate, budget.running(), self._request(target) as response:
                gate.answered(response.status, response.headers.get("Retry-After"))
                if response.status in REDIRECT_CODES and "Location" in response.headers:
                    current = urljoin(current, response.headers["Location"])
                    continue
                return current, await read(response)
        raise _Failure("too_many_redirects", f"more than {self.config.max_redirects} redirects (last: {current})")

    @contextlib.asynccontextmanager
    async def _host_slot(self, host: str) -> AsyncIterator[_HostGate]:
        """Hold a slot of `host` (concurrency + rate, after any pause) and of the global limit for one request;
        raises _Failure("host_refused") once the host was given up."""
        gate = self._hosts.get(host)
        if gate is None:
            if len(self._hosts) >= _MAX_IDLE_GATES:  # forget idle hosts: flat memory on huge crawls
                self._hosts = {name: g for name, g in self._hosts.items() if not g.idle()}
            gate = self._hosts[host] = _HostGate(self.config)
        gate.users += 1
        try:
            async with gate, self._global:
                yield gate
        finally:
            gate.users -= 1

    def _check_url(self, url: str) -> yarl.URL:
        """The URL to request, as the client will connect to it, after syntax and SSRF checks."""
        try:
            return guard_url(url, self.policy, self.config.allow_listed_only)
        except InvalidUrl as exc:
            raise _Failure("invalid_url", str(exc)) from exc
        except BlockedAddress as exc:
            raise _Failure("blocked_address", str(exc)) from exc

    async def _check_robots(self, target: yarl.URL) -> None:
        origin = target.origin()
        rules = await self.robots.rules(str(origin))
        if rules.failure:
            raise _Failure(rules.failure, f"not fetched, robots.txt of {origin.raw_authority} unreadable: {rules.error}")
        if not rules.allows(str(target), self.config.user_agent):
            raise _Failure("robots_disallowed", f"robots.txt of {origin.raw_authority} disallows {target.raw_path or '/'}")
        token = rules.ai_crawler_opt_out(str(target), self.config.ai_crawler_tokens, self.config.user_agent)
        if token:
            raise _Failure("opted_out", f"ai_crawler_robots: {token} (robots.txt of {origin.raw_authority} disallows {target.raw_path or '/'})")

    async def _check_tdmrep(self, target: yarl.URL) -> None:
        """W3C TDMRep's site-wide file: a reserved location is opted out before it is ever requested."""
        rule = (await self.tdmrep.rules(str(target.origin()))).reservation(str(target))
        if rule is not None:
            policy = f" (policy {rule.policy})" if rule.policy else ""
            raise _Failure("opted_out", f"tdmrep_json: {rule.location}{policy}")

    def _request(self, target: yarl.URL):
        """GET without following redirects, mapping transport errors to failure classes."""
        return _ClassifiedRequest(self.session, target)

    async def _read_image(self, response: aiohttp.ClientResponse) -> tuple[int, str, bytes]:
        """Status, opt-out and size checks on the headers, then a bounded body read."""
        status = response.status
        if status >= 400 or status < 200:
            kind = "http_429" if status == 429 else "http_4xx" if 400 <= status < 500 else "http_5xx" if status >= 500 else "error"
            retry_after = parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
            raise _Failure(kind, f"HTTP {status} {response.reason or ''}".strip(), status, retry_after)
        if status >= 300:
            raise _Failure("error", f"HTTP {status} without a Location header", status)
        if self.config.respect_x_robots:
            directive = x_robots_opt_out(response.headers.getall("X-Robots-Tag", []), self.config.user_agent, self.config.ai_crawler_tokens)
            if directive:
                raise _Failure("opted_out", f"x_robots_tag: {directive}", status)
        if self.config.respect_tdmrep:
            reserved = tdm_header_opt_out(response.headers.getall("tdm-reservation", []), response.headers.get("tdm-policy"))
            if reserved:
                raise _Failure("opted_out", f"tdm_reservation: {reserved}", status)
        content_type = response.content_type or ""
        if any(content_type.startswith(prefix) for prefix in self.config.reject_content_types):
            raise _Failure("not_image", f"Content-Type {content_type} is not an image", status)
        if response.content_length is not None and response.content_length > self.config.max_bytes:
            raise _Failure("too_large", f"Content-Length {response.content_length} > {self.config.max_bytes} bytes", status)
        body = await _read_limited(response, self.config.max_bytes)
        if body is None:
            raise _Failure("too_large", f"body exceeds {self.config.max_bytes} bytes", status)
        return status, content_type, body

    async def _fetch_robots(self, robots_url: str) -> RobotsRules:
        """GET robots.txt through the same guards (address policy, host gate, redirects); never raises."""
        try:
            return (await self._get(robots_url, self._read_robots, check_robots=False))[1]
        except _Failure as failure:
            if failure.status == "too_many_redirects":
                return parse_robots(404, None)  # RFC 9309: treat as "unavailable", i.e. no rules
            return RobotsRules(None, failure.status, failure.error)
        except TimeoutError:
            return RobotsRules(None, "timeout", f"no response within {self.config.timeout_s:g}s")
        except Exception as exc:  # noqa: BLE001 - recorded on every row of the host, never raised
            return RobotsRules(None, "error", f"{type(exc).__name__}: {exc}")

    async def _fetch_tdmrep(self, url: str) -> TdmRep:
        """GET /.well-known/tdmrep.json through the same guards; never raises.

        TDMRep: an origin that does not serve the file (any failure: 4xx, 5xx, timeout, too many
        redirects) does not implement the protocol, so there is no reservation. A malformed file is
        no reservation either, and logged once per origin (the result is cached).
        """
        try:
            rep = (await self._get(url, self._read_tdmrep, check_robots=False))[1]
        except _Failure as failure:
            log.debug("%s not read (%s): no TDM reservation", url, failure.error)
            return TdmRep()
        except TimeoutError:
            log.debug("%s timed out: no TDM reservation", url)
            return TdmRep()
        except Exception as exc:  # noqa: BLE001 - a broken file must never fail the host's rows
            log.warning("%s unreadable (%s: %s): no TDM reservation", url, type(exc).__name__, exc)
            return TdmRep()
        if rep.warning:
            log.warning("%s: %s; %d rule(s) kept", url, rep.warning, len(rep.rules))
        return rep

    async def _read_tdmrep(self, response: aiohttp.ClientResponse) -> TdmRep:
        """Only a 2xx body is read (one byte past the limit, so an oversize file is told apart)."""
        if not 200 <= response.status < 300:
            return parse_tdmrep(response.status, None)
        return parse_tdmrep(response.status, await _read_limited(response, TDMREP_MAX_BYTES + 1, truncate=True), TDMREP_MAX_BYTES)

    async def _read_robots(self, response: aiohttp.ClientResponse) -> RobotsRules:
        """Reads one byte past the limit, so parse_robots can tell a cut file (and drop its cut line)."""
        limit = self.config.robots_max_bytes
        return parse_robots(response.status, await _read_limited(response, limit + 1, truncate=True), limit)


class _Deadline:
    """Seconds left for one attempt, spent only while a request is on the wire."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if self.left <= 0:
            raise TimeoutError
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.left):
                yield
        finally:
            self.left -= time.monotonic() - started


class _HostGate:
    """Per-host politeness: concurrency limit, minimum spacing between request starts, the host-wide
    pause a Retry-After asks for, and giving the host up after consecutive refusals (429/503)."""

    def __init__(self, config: DownloadConfig) -> None:
        self._slots = asyncio.Semaphore(config.per_host_concurrency)
        self._interval = 1.0 / config.per_host_rate if config.per_host_rate > 0 else 0.0
        self._max_pause_s, self._refusal_limit = config.max_retry_after_s, config.host_refusal_limit
        self._next_start = 0.0
        self._paused_until = 0.0  # time.monotonic() before which no request of the host starts
        self._refusals = 0  # consecutive 429/503 answers
        self.refused: str | None = None  # why the host was given up for the batch
        self.users = 0

    def idle(self) -> bool:
        """Forgettable: nobody waiting, no pause or spacing pending, and not given up (that lasts the batch)."""
        return self.users == 0 and self.refused is None and max(self._next_start, self._paused_until) <= time.monotonic()

    def answered(self, status: int, retry_after: str | None) -> None:
        """Count a response of the host: a 429/503 is a refusal (and pauses the host for its Retry-After)."""
        if status not in (429, 503):
            self._refusals = 0
            return
        self._refusals += 1
        pause = parse_retry_after(retry_after)
        if pause is not None:
            self._paused_until = max(self._paused_until, time.monotonic() + min(pause, self._max_pause_s))
        if self._refusal_limit and self._refusals >= self._refusal_limit and self.refused is None:
            self.refused = f"host given up for the batch after {self._refusals} consecutive 429/503 answers (last: HTTP {status})"

    def _check_refused(self) -> None:
        if self.refused is not None:
            raise _Failure("host_refused", self.refused)

    async def __aenter__(self) -> _HostGate:
        self._check_refused()
        await self._slots.acquire()
        try:
            while True:  # a pause may begin (or the host be given up) while this request waits
                self._check_refused()
                now = time.monotonic()
                if self._paused_until > now:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                start = max(now, self._next_start)
                if self._interval:
                    self._next_start = start + self._interval  # reserved before sleeping: concurrent starts stay spaced
                if start > now:
                    await asyncio.sleep(start - now)
                    if self.refused is not None or self._paused_until > time.monotonic():
                        continue
                break
        except BaseException:
            self._slots.release()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        self._slots.release()


class _ClassifiedRequest:
    """`async with` around session.get that turns aiohttp/OS errors into _Failure classes."""

    def __init__(self, session: aiohttp.ClientSession, url: yarl.URL) -> None:
        self._session, self._url = session, url
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            self._response = await self._session.get(self._url, allow_redirects=False)
        except Exception as exc:
            raise classify_exception(exc) from exc
        return self._response

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._response is not None:
            self._response.release()
        if exc is not None and not isinstance(exc, (_Failure, asyncio.CancelledError, TimeoutError)):
            raise classify_exception(exc) from exc


def classify_exception(exc: BaseException) -> _Failure:
    """Map a transport exception to a download failure class with a readable reason."""
    blocked = exc if isinstance(exc, BlockedAddress) else getattr(exc, "os_error", None) or exc.__cause__
    if isinstance(blocked, BlockedAddress):
        return _Failure("blocked_address", str(blocked))
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return _Failure("dns", f"DNS lookup failed: {exc}")
    if isinstance(exc, (aiohttp.ServerTimeoutError, TimeoutError)):
        return _Failure("timeout", f"timed out: {exc or type(exc).__name__}")
    if isinstance(exc, aiohttp.TooManyRedirects):
        return _Failure("too_many_redirects", str(exc))
    if isinstance(exc, (aiohttp.InvalidURL, ValueError)):
        return _Failure("invalid_url", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        return _Failure("connect", f"{type(exc).__name__}: {exc}")
    return _Failure("error", f"{type(exc).__name__}: {exc}")


async def _read_limited(response: aiohttp.ClientResponse, max_bytes: int, truncate: bool = False) -> bytes | None:
    """Read at most max_bytes; None when the body is longer (or its first max_bytes if truncate)."""
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            if truncate:
                chunks.append(chunk[: max_bytes - (size - len(chunk))])
                break
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def retry_delay(attempt: int, retry_after_s: float | None, config: DownloadConfig) -> float:
    """Seconds before attempt+1: the server's Retry-After (capped), else jittered exponential backoff."""
    if retry_after_s is not None:
        return min(retry_after_s, config.max_retry_after_s)
    return config.backoff_base_s * (2**attempt) * random.uniform(0.5, 1.5)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds to wait: delta-seconds or an HTTP date (RFC 9110); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
