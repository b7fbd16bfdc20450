"""What the downloader may fetch: the SSRF address guard and the opt-outs (robots.txt, AI-crawler
robots groups, X-Robots-Tag, W3C TDMRep's header and /.well-known/tdmrep.json).

Kept apart from the HTTP code so each rule is a small pure function with its own tests, and so the
release side (or a reviewer) can read exactly what "safe" and "polite" mean here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import string
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import quote, urlsplit

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from protego import Protego

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
R = TypeVar("R")

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

# Directives that mean "do not put this image in a dataset / index / model".
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noml", "noindex", "noimageindex", "none"})
# Directives that carry a value after a colon, so "name: value" is not a user-agent scope.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def user_agent_token(user_agent: str) -> str:
    """The product token robots rules match against: "altlake" for "altlake/0.1 (+https://...)"."""
    return user_agent.strip().split("/", 1)[0].split(" ", 1)[0].lower()


def parse_agent_tokens(text: str) -> tuple[str, ...]:
    """Product tokens from a comma-separated setting ("CCBot, GPTBot,,img2dataset"), blanks dropped."""
    return tuple(dict.fromkeys(token.strip() for token in text.split(",") if token.strip()))


def x_robots_opt_out(header_values: Iterable[str], user_agent: str, ai_tokens: Iterable[str] = ()) -> str | None:
    """The first opt-out directive in X-Robots-Tag headers that applies to us, or None.

    Each header value is a comma list; "bot: a, b" scopes the following directives to "bot" (Google's
    syntax), so "otherbot: noindex" does not apply to altlake while "altlake: noai" does, and so does
    a scope naming one of `ai_tokens` ("img2dataset: noai", "GPTBot: noml": the site opts out of AI use).
    """
    applies = {None, "*", user_agent_token(user_agent), *(token.lower() for token in ai_tokens)}
    for value in header_values:
        scope: str | None = None
        for token in value.split(","):
            token = token.strip().lower()
            if not token:
                continue
            name, colon, rest = token.partition(":")
            if colon and name.strip() not in _VALUED_DIRECTIVES:
                scope, token = name.strip(), rest.strip()
            if scope not in applies:
                continue
            directive = token.split(":", 1)[0].strip()
            if directive in OPT_OUT_DIRECTIVES:
                return directive if scope is None else f"{scope}: {directive}"
    return None


# --- robots.txt ------------------------------------------------------------------------------------


# RFC 9309 section 2.5: a parser must read at least 500 KiB of a robots.txt; the rest may be ignored.
ROBOTS_MIN_PARSE_BYTES = 500 * 1024
ROBOTS_PARSE_BYTES = 512 * 1024  # what we read


@dataclass(frozen=True)
class RobotsRules:
    """robots.txt of one origin (parsed by Protego, an RFC 9309 parser), or why it could not be read.

    `failure` is a download failure class (http_5xx, http_429, timeout, ...): RFC 9309 says an
    unreachable robots.txt means "disallow everything", and reporting the transient class keeps the
    row retryable instead of marking it robots_disallowed for ever.
    """

    parser: Protego | None
    failure: str | None = None
    error: str | None = None

    def allows(self, url: str, user_agent: str) -> bool:
        """Whether we (the product token of `user_agent`) may fetch `url`, by RFC 9309."""
        return self.allows_agent(url, user_agent_token(user_agent))

    def allows_agent(self, url: str, agent: str) -> bool:
        """RFC 9309 for one product token: its own group(s), else the "*" group; never when unreachable."""
        return self.parser is not None and self.parser.can_fetch(url, agent)

    def has_own_group(self, agent: str) -> bool:
        """Whether robots.txt has a group for `agent` itself, rather than leaving it to "*" (or nothing).

        Protego 0.7 (pinned in requirements.txt) has no public call for this. `_get_matching_rule_set`
        is the one its `can_fetch` uses to pick the group for a token (memoised, with its token
        matching), so asking it gives exactly the group `allows_agent` obeys; its `user_agent` is "*"
        for the fallback group. tests/gpu_workers/test_safety.py pins this behaviour.
        """
        if self.parser is None:
            return False
        group = self.parser._get_matching_rule_set(agent)  # noqa: SLF001 - see the docstring
        return group is not None and group.user_agent != "*"

    def ai_crawler_opt_out(self, url: str, tokens: Iterable[str], user_agent: str = "") -> str | None:
        """The first AI-crawler token whose OWN group disallows `url`, or None.

        A site writing "User-agent: GPTBot / Disallow: /" opts its content out of AI use; a "*" group
        says nothing about AI (and already binds us through `allows`), so a token without a group of
        its own never counts. Our own token is skipped: its group is `allows`'s business.
        """
        ours = user_agent_token(user_agent) if user_agent else None
        for token in tokens:
            if token.lower() != ours and self.has_own_group(token) and not self.allows_agent(url, token):
                return token
        return None


def parse_robots(status: int | None, body: bytes | None, max_bytes: int = ROBOTS_PARSE_BYTES) -> RobotsRules:
    """Rules from a robots.txt response, with RFC 9309's meaning of each status (section 2.3.1).

    2xx: the file's rules. Other 4xx (401, 403 too): "unavailable", no rules. 5xx or no response:
    "unreachable", complete disallow. 429 counts as unreachable: the RFC only gives 4xx as an example
    of "unavailable", 429 means "slow down" rather than "no file", and Google's robots.txt spec
    excepts it from its 4xx rule; allow-all would let rate limiting switch the file off. A body over
    `max_bytes` is cut after its last whole line, so half a rule never becomes a broader one.
    """
    if status is not None and 200 <= status < 300:
        body = body or b""
        if len(body) > max_bytes:
            body = body[: max(body.rfind(b"\n", 0, max_bytes), body.rfind(b"\r", 0, max_bytes)) + 1]
        return RobotsRules(Protego.parse(body.decode("utf-8-sig", errors="replace")))  # -sig: a BOM is no rule
    if status == 429:
        return RobotsRules(None, "http_429", "robots.txt answered HTTP 429")
    if status is not None and 400 <= status < 500:
        return RobotsRules(Protego.parse(""))
    return RobotsRules(None, "http_5xx", f"robots.txt answered HTTP {status}")


class RobotsCache(Generic[R]):
    """A per-origin file (robots.txt; /.well-known/tdmrep.json with `path`), fetched once per origin.

    Concurrent first requests to a host share one fetch. Bounded (least recently used origins are
    forgotten) so a crawl over millions of hosts keeps flat memory; entries expire after `ttl_s` as
    crawlers are expected to re-read robots.txt (and TDMRep's file is cached the same way).
    """

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[R]],
        ttl_s: float = 86_400,
        max_origins: int = 50_000,
        path: str = "/robots.txt",
    ):
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._max_origins = max_origins
        self._path = path
        self._entries: OrderedDict[str, tuple[float, asyncio.Future[R]]] = OrderedDict()

    async def rules(self, origin: str) -> R:
        """Rules for `origin` ("https://host:port"), fetching origin + `path` on first use."""
        now = time.monotonic()
        entry = self._entries.get(origin)
        if entry is None or now - entry[0] > self._ttl_s:
            entry = (now, asyncio.ensure_future(self._fetch(origin + self._path)))
            self._entries[origin] = entry
            while len(self._entries) > self._max_origins:
                self._entries.popitem(last=False)
        self._entries.move_to_end(origin)
        return await asyncio.shield(entry[1])


# --- W3C TDMRep (TDM Reservation Protocol) --------------------------------------------------------
#
# The Community Group final report of 10 May 2024 (https://www.w3.org/community/reports/tdmrep/
# CG-FINAL-tdmrep-20240510/; source: github.com/w3c/tdm-reservation-protocol spec/index.html):
# - `tdm-reservation` is 1 (TDM rights reserved: the DSM Directive article 4 "opt-out") or 0 (not
#   reserved); any other value is a protocol error and means "unset" (section "tdm-reservation").
# - As an HTTP response header, beside an optional `tdm-policy` URL (section "TDM Header Field").
# - In /.well-known/tdmrep.json: a JSON array of rules {"location", "tdm-reservation", optional
#   "tdm-policy"}; failing to serve it means the origin does not implement the protocol. The URL's
#   path is matched against each `location`, case-sensitively; the first matching rule is used ("the
#   most specific match is the first in sequence"); no match is "unset". Percent-encoded unreserved
#   characters are decoded before comparing; a match is a prefix match ("the end of the path from
#   the rule is reached before a difference"), with robots.txt's "*" (any run of characters) and a
#   final "$" (end of the URL); a literal "$" is written %24 (section "TDM File on the Origin Server").
# - Processing priority: the file is checked before any resource of the origin is fetched; a header
#   supersedes the file. We decide on the file BEFORE the request, so a reserved location is never
#   requested (nor a header that could lift the reservation read): stricter than the report, never
#   laxer.

TDMREP_PATH = "/.well-known/tdmrep.json"
TDMREP_MAX_BYTES = 512 * 1024

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Characters a URL may carry verbatim (RFC 3986 reserved + unreserved) and "%"; "$" and "*" are not
# among them, so a literal one on the URL side compares as %24 / %2A, as the report's
# "/path/foo-%24" example asks, and can never be mistaken for the pattern's special characters.
_URL_SAFE = "".join(sorted((set(":/?#[]@!&'()+,;=") | _UNRESERVED | {"%"})))
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _tdm_normalise(text: str) -> str:
    """`text` percent-encoded for comparison: escapes of unreserved characters decoded, others upper-cased."""

    def unescape(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(unescape, quote(text, safe=_URL_SAFE))


@dataclass(frozen=True)
class TdmPattern:
    """A tdmrep.json `location`: a path prefix with "*" wildcards and an optional final "$" anchor."""

    parts: tuple[str, ...]  # the normalised text between the "*"s
    anchored: bool

    @classmethod
    def parse(cls, location: str) -> TdmPattern:
        anchored = location.endswith("$")
        body = location[:-1] if anchored else location
        return cls(tuple(_tdm_normalise(part) for part in body.split("*")), anchored)

    def matches(self, path: str) -> bool:
        """Whether the normalised `path` (path and query) matches; linear, with no regex backtracking."""
        first, *middle = self.parts
        if not path.startswith(first):
            return False
        if not middle:
            return path == first if self.anchored else True
        *middle, last = middle
        pos = len(first)
        for part in middle:
            found = path.find(part, pos)
            if found == -1:
                return False
            pos = found + len(part)
        if self.anchored:
            return len(path) - len(last) >= pos and path.endswith(last)
        return path.find(last, pos) != -1


def tdm_url_path(url: str) -> str:
    """The part of `url` TDMRep locations match: its path (at least "/") and query, normalised."""
    parts = urlsplit(url)
    return _tdm_normalise((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))


def tdm_reservation_value(value: object) -> int | None:
    """1 or 0 from a `tdm-reservation` value, None (unset) for anything else (a protocol error).

    The report's value is the integer 0 or 1; its string form ("1", which every HTTP header is and
    hand-written JSON often is) is read the same, since it leaves no doubt about the publisher's wish.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


def tdm_header_opt_out(reservations: Iterable[str], policy: str | None = None) -> str | None:
    """The `tdm-reservation` response header's reservation, as "1" (with its policy), or None.

    Several fields (or a comma list) that disagree reserve: a reservation is never read away.
    """
    values = {tdm_reservation_value(item) for field in reservations for item in field.split(",")}
    if 1 not in values:
        return None
    return f"1 (policy {policy.strip()})" if policy and policy.strip() else "1"


@dataclass(frozen=True)
class TdmRule:
    location: str
    reservation: int | None  # 1 reserved, 0 not reserved, None unset (a protocol error)
    policy: str | None
    pattern: TdmPattern


@dataclass(frozen=True)
class TdmRep:
    """An origin's /.well-known/tdmrep.json rules (none when it serves no valid file), and why not."""

    rules: tuple[TdmRule, ...] = ()
    warning: str | None = None  # a malformed file: logged, and read as "no reservation"

    def reservation(self, url: str) -> TdmRule | None:
        """The rule reserving TDM for `url`: the first rule whose location matches, if it says 1."""
        if not self.rules:
            return None
        path = tdm_url_path(url)
        for rule in self.rules:
            if rule.pattern.matches(path):
                return rule if rule.reservation == 1 else None
        return None


def parse_tdmrep(status: int | None, body: bytes | None, max_bytes: int = TDMREP_MAX_BYTES) -> TdmRep:
    """Rules from a /.well-known/tdmrep.json response.

    Anything but a 2xx (404 and every other 4xx, 5xx, no response) means the origin does not
    implement TDMRep: no rules. A 2xx that is not a JSON array of rules is malformed: no rules and a
    warning. Within an array, an entry without a string `location` cannot match anything and is
    skipped (with a warning); a missing or invalid `tdm-reservation` makes its rule "unset", which
    still stops the search when its location matches (the first match is the one used).
    """
    if status is None or not 200 <= status < 300:
        return TdmRep()
    body = body or b""
    if len(body) > max_bytes:
        return TdmRep(warning=f"tdmrep.json larger than {max_bytes} bytes, ignored")
    try:
        document = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        return TdmRep(warning=f"tdmrep.json is not JSON ({type(exc).__name__}: {str(exc)[:200]})")
    if not isinstance(document, list):
        return TdmRep(warning=f"tdmrep.json is a JSON {type(document).__name__}, not an array of rules")
    rules, skipped, unset = [], 0, 0
    for entry in document:
        location = entry.get("location") if isinstance(entry, dict) else None
        if not isinstance(location, str) or not location.strip():
            skipped += 1
            continue
        reservation = tdm_reservation_value(entry.get("tdm-reservation"))
        unset += reservation is None
        policy = entry.get("tdm-policy")
        policy = (policy.strip() or None) if isinstance(policy, str) else None
        location = location.strip()
        rules.append(TdmRule(location, reservation, policy, TdmPattern.parse(location)))
    problems = [
        f"{n} {what}"
        for n, what in ((skipped, "rule(s) without a location skipped"), (unset, "rule(s) with an invalid tdm-reservation read as unset"))
        if n
    ]
    return TdmRep(tuple(rules), f"tdmrep.json: {', '.join(problems)}" if problems else None)
