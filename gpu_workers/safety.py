"""What the downloader may fetch: the SSRF address guard, robots.txt and X-Robots-Tag opt-outs.

Kept apart from the HTTP code so each rule is a small pure function with its own tests, and so the
release side (or a reviewer) can read exactly what "safe" and "polite" mean here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
import urllib.robotparser
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# --- SSRF: which addresses may be connected to ----------------------------------------------------


class BlockedAddress(OSError):
    """A host resolved to (or is) an address we refuse to connect to.

    An OSError so aiohttp's connector passes it through its DNS error path untouched (as the cause
    of ClientConnectorDNSError), where the downloader recognises it.
    """

    def __init__(self, host: str, address: str, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"refusing {host} -> {address}: {reason} address")
        self.host, self.address, self.reason = host, address, reason


def address_block_reason(address: IPAddress) -> str | None:
    """Why `address` must not be contacted (loopback, private, ...), or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("non-global", not address.is_global),  # e.g. 100.64.0.0/10 carrier-grade NAT
    )
    return next((reason for reason, hit in checks if hit), None)


@dataclass(frozen=True)
class AddressPolicy:
    """SSRF policy: public addresses only, plus an explicit allow-list of host names and networks.

    `allow` entries are host names ("mirror.internal"), addresses ("127.0.0.1") or networks
    ("10.1.0.0/16"); tests and private mirrors use it, production leaves it empty.
    """

    allow_names: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_allow_list(cls, allow: Iterable[str]) -> AddressPolicy:
        names, networks = set(), []
        for entry in allow:
            entry = entry.strip().lower()
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def check(self, host: str, address: str) -> None:
        """Raise BlockedAddress unless connecting to `address` (resolved from `host`) is allowed."""
        if host.lower().rstrip(".") in self.allow_names:
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
        if any(ip in network for network in self.allow_networks):
            return
        reason = address_block_reason(ip)
        if reason:
            raise BlockedAddress(host, address, reason)

    def is_allow_listed(self, host: str) -> bool:
        """Whether `host` (a name or an IP literal) is named by the allow-list itself."""
        host = host.lower().rstrip(".").strip("[]")
        if host in self.allow_names:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in network for network in self.allow_networks)

    def check_literal(self, host: str) -> None:
        """Check a URL host that is an IP literal (aiohttp connects to those without resolving)."""
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return  # a name: the resolver checks what it resolves to
        self.check(host, host.strip("[]"))


class InvalidUrl(ValueError):
    """A URL the HTTP client cannot (or must not) request: bad syntax, another scheme, no host."""


def guard_url(url: str, policy: AddressPolicy, allow_listed_only: bool = False) -> yarl.URL:
    """The URL exactly as the HTTP client will connect to it, with the SSRF checks made on that form.

    aiohttp parses a string URL with yarl, which applies IDNA / UTS #46 mapping to the host:
    fullwidth digits (１２７.０.０.１), ideographic full stops (127。0。0。1), circled digits and
    other Unicode forms become an ASCII IP literal that aiohttp connects to without asking the
    resolver. So the decision is taken on yarl's host, and callers request the returned URL object,
    never the string again: what was checked is what is connected to. Names are left to
    GuardedResolver, which checks every address they resolve to.
    """
    try:
        target = yarl.URL(url)
        host, port = target.raw_host, target.port
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InvalidUrl(f"unparseable URL: {type(exc).__name__}: {exc}") from exc
    if target.scheme not in ("http", "https") or not host or port is None:
        raise InvalidUrl(f"not an http(s) URL with a host: {url[:200]}")
    if allow_listed_only and not policy.is_allow_listed(host):
        raise BlockedAddress(host, host, "off-list", f"refusing {host}: not on the allow-list (allow-listed hosts only)")
    policy.check_literal(host)
    return target


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that filters resolved addresses through an AddressPolicy.

    The connector connects to exactly the addresses returned here, so a DNS answer that changes
    between a check and the connect (rebinding) cannot slip a private address through.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:  # any bad answer blocks the name: never pick "the good one" of a mix
            self._policy.check(host, result["host"])
        return results

    async def close(self) -> None:
        await self._inner.close()


# --- X-Robots-Tag ---------------------------------------------------------------------------------

# Directives that mean "do not put this image in a dataset / index".
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
# Directives that carry a value after a colon, so "name: value" is not a user-agent scope.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def user_agent_token(user_agent: str) -> str:
    """The product token robots rules match against: "altlake" for "altlake/0.1 (+https://...)"."""
    return user_agent.strip().split("/", 1)[0].split(" ", 1)[0].lower()


def x_robots_opt_out(header_values: Iterable[str], user_agent: str) -> str | None:
    """The first opt-out directive in X-Robots-Tag headers that applies to us, or None.

    Each header value is a comma list; "bot: a, b" scopes the following directives to "bot" (Google's
    syntax), so "otherbot: noindex" does not apply to altlake while "altlake: noai" does.
    """
    ours = user_agent_token(user_agent)
    for value in header_values:
        scope: str | None = None
        for token in value.split(","):
            token = token.strip().lower()
            if not token:
                continue
            name, colon, rest = token.partition(":")
            if colon and name.strip() not in _VALUED_DIRECTIVES:
                scope, token = name.strip(), rest.strip()
            if scope not in (None, "*", ours):
                continue
            directive = token.split(":", 1)[0].strip()
            if directive in OPT_OUT_DIRECTIVES:
                return directive if scope is None else f"{scope}: {directive}"
    return None


# --- robots.txt ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RobotsRules:
    """robots.txt of one origin, or why it could not be read.

    `failure` is a download failure class (http_5xx, timeout, ...): RFC 9309 says an unreachable
    robots.txt means "disallow everything", and reporting the transient class keeps the row
    retryable instead of marking it robots_disallowed for ever.
    """

    parser: urllib.robotparser.RobotFileParser | None
    failure: str | None = None
    error: str | None = None

    def allows(self, url: str, user_agent: str) -> bool:
        return self.parser is not None and self.parser.can_fetch(user_agent_token(user_agent), url)


def parse_robots(status: int | None, body: bytes | None) -> RobotsRules:
    """Rules from a robots.txt response, with RFC 9309's meaning of each status."""
    parser = urllib.robotparser.RobotFileParser()
    if status is not None and 200 <= status < 300:
        parser.parse((body or b"").decode("utf-8", errors="replace").splitlines())
    elif status is not None and 400 <= status < 500:
        parser.allow_all = True  # "unavailable": no rules (401/403 included, per RFC 9309)
    else:
        return RobotsRules(None, "http_5xx", f"robots.txt answered HTTP {status}")
    return RobotsRules(parser)


class RobotsCache:
    """robots.txt per origin, fetched once: concurrent first requests to a host share one fetch.

    Bounded (least recently used origins are forgotten) so a crawl over millions of hosts keeps
    flat memory; entries expire after `ttl_s` as crawlers are expected to re-read robots.txt.
    """

    def __init__(self, fetch: Callable[[str], Awaitable[RobotsRules]], ttl_s: float = 86_400, max_origins: int = 50_000):
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._max_origins = max_origins
        self._entries: OrderedDict[str, tuple[float, asyncio.Task[RobotsRules]]] = OrderedDict()

    async def rules(self, origin: str) -> RobotsRules:
        """Rules for `origin` ("https://host:port"), fetching robots.txt on first use."""
        now = time.monotonic()
        entry = self._entries.get(origin)
        if entry is None or now - entry[0] > self._ttl_s:
            entry = (now, asyncio.ensure_future(self._fetch(origin + "/robots.txt")))
            self._entries[origin] = entry
            while len(self._entries) > self._max_origins:
                self._entries.popitem(last=False)
        self._entries.move_to_end(origin)
        return await asyncio.shield(entry[1])
