"""One canonical form of a URL, so a takedown matches every spelling of the same address.

A takedown by URL or domain must not be dodged by spelling: `HTTP://Example.COM:80/a/./b/%7Eimg.jpg#x`
and `http://example.com/a/b/~img.jpg` name the same image. The canonical form is the WHATWG
parse (what browsers fetch: scheme and host lower-cased, IDNA to punycode, default ports and dot
segments removed; the maintained `ada-url` parser) plus RFC 3986's percent-encoding
normalisation (unreserved characters decoded, hex upper-cased), with the parts that never change
the image dropped: fragment, user info, an empty query, a trailing dot of the host and a trailing
slash of the path.

It is computed once per candidate at extraction (`candidates.url_canonical`), and every
takedown implementation (extraction, the Spark tables, the release build) compares canonical
forms: a url request by equality, a domain request against the host and its parent domains.
"""

from __future__ import annotations

import re

from ada_url import URL

# Characters a canonical path or query keeps as they are: RFC 3986's unreserved and reserved sets
# (reserved ones may carry meaning, so `/` and `%2F` stay apart). Every other character is
# percent-encoded and every encoded unreserved one decoded, so `|`, `%7c` and `%7C` agree.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_RESERVED = frozenset(":/?#[]@!$&'()*+,;=")
_PERCENT_OR_OTHER = re.compile(r"%[0-9A-Fa-f]{2}|[^A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]")

# A URL that is already canonical, recognised without parsing (most URLs in a crawl are; the
# parse costs 8 µs a URL, this 0.5): lower-case http(s), a lower-case host name whose last label
# is not numeric (numbers go through WHATWG's IPv4 rules) and has no punycode, no port, user
# info, fragment or percent sign, no dot segment, no trailing slash, and a non-empty query, if
# any, without a quote. A test checks that the full parse leaves every such URL unchanged.
_ALREADY_CANONICAL = re.compile(
    r"https?://(?:[a-z0-9-]+\.)*[a-z](?:[a-z0-9-]*[a-z0-9])?"
    r"(?:/|(?:/(?!\.\.?(?:/|\?|$))[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+)"
    r"(?:\?[A-Za-z0-9\-._~!$&()*+,;=:@/?]+)?"
)
# The host of a canonical URL: it has no user info, so the host runs from `//` to the first
# `:`, `/` or `?` (an IPv6 literal keeps its brackets). Spark's regexp_extract uses this pattern
# too, so both sides read hosts the same way.
CANONICAL_HOST_PATTERN = r"^[a-z]+://(\[[^\]]*\]|[^/:?]+)"
_CANONICAL_HOST = re.compile(CANONICAL_HOST_PATTERN)


def _normalise_percent(part: str) -> str:
    """RFC 3986 6.2.2: decode percent-encoded unreserved characters, encode the rest upper-case."""

    def fix(match: re.Match) -> str:
        text = match.group(0)
        if text[0] == "%" and len(text) == 3:
            char = chr(int(text[1:], 16))
            return char if char in _UNRESERVED else text.upper()
        return "".join(f"%{byte:02X}" for byte in text.encode("utf-8", "surrogatepass"))

    return _PERCENT_OR_OTHER.sub(fix, part)


def canonical_url(url: str | None) -> str | None:
    """The canonical form of an http(s) URL, or None when it is not one a browser could fetch."""
    if not url:
        return None
    if _ALREADY_CANONICAL.fullmatch(url) and "xn--" not in url:
        return url
    return _parse_canonical(url)


def _parse_canonical(url: str) -> str | None:
    """The full parse behind canonical_url (WHATWG, then RFC 3986's percent-encoding rules)."""
    try:
        parsed = URL(url.strip())
    except ValueError:
        return None
    scheme = parsed.protocol
    host = parsed.hostname.rstrip(".")
    if scheme not in ("http:", "https:") or not host:
        return None
    port = f":{parsed.port}" if parsed.port else ""
    # %2E segments are dot segments too (WHATWG removes them), so only decode after parsing.
    path = _normalise_percent(parsed.pathname)
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    query = _normalise_percent(parsed.search[1:]) if len(parsed.search) > 1 else ""
    return f"{scheme}//{host}{port}{path}{'?' + query if query else ''}"


def canonical_host(url_or_host: str | None) -> str | None:
    """The canonical host of a URL, a canonical URL, or a bare host name (`Bücher.Example.` ->
    `xn--bcher-kva.example`); None when there is none."""
    if not url_or_host:
        return None
    value = url_or_host.strip()
    canonical = canonical_url(value if "://" in value else f"http://{value}/")
    if canonical is None:
        return None
    return _CANONICAL_HOST.match(canonical).group(1)


def host_suffixes(host: str) -> list[str]:
    """The host and each parent domain (a.b.example.com -> a.b.example.com, b.example.com,
    example.com, com): a domain takedown matches when any of them is its value."""
    if host.startswith("["):
        return [host]
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]
