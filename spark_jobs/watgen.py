"""Common-Crawl-shaped WAT files from a seeded generator, for tests, the demo and the benchmark.

Each page becomes the three metadata records a real WAT holds (request, response, metadata),
with the real JSON envelope: WARC-Header-Metadata, Payload-Metadata.HTTP-Response-Metadata with
Headers and HTML-Metadata (Head: Title, Base, Metas, Link, Scripts; Links: IMG@/src, A@/href, ...).
Pages mix absolute, relative and protocol-relative image URLs, `<base>` tags, HTML entities,
alt texts in several languages, Creative Commons license links, duplicate pairs, and the junk the
LAION-5B rules must drop (so every reject reason occurs).

    python -m spark_jobs.watgen --out crawl.warc.wat.gz --pages 1000 --gzip --image-base http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import gzip as gzip_module
import hashlib
import math
import random
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

# Real alt-text-like sentences, by language (fastText recognises each with high confidence).
SENTENCES: dict[str, tuple[str, ...]] = {
    "en": (
        "A red bicycle leaning against a brick wall",
        "Mountain lake at sunrise with mist over the water",
        "Two children playing football in the park",
        "Fresh vegetables on a wooden kitchen table",
        "Old lighthouse on a rocky coast during a storm",
        "Portrait of a smiling woman wearing a straw hat",
    ),
    "de": (
        "Ein rotes Fahrrad lehnt an einer Ziegelmauer",
        "Bergsee bei Sonnenaufgang mit Nebel über dem Wasser",
        "Frisches Gemüse auf einem hölzernen Küchentisch",
        "Alter Leuchtturm an einer felsigen Küste",
    ),
    "fr": (
        "Un vélo rouge appuyé contre un mur de briques",
        "Lac de montagne au lever du soleil",
        "Des légumes frais sur une table de cuisine en bois",
        "Vieux phare sur une côte rocheuse pendant une tempête",
    ),
    "es": (
        "Una bicicleta roja apoyada contra una pared de ladrillos",
        "Lago de montaña al amanecer con niebla sobre el agua",
        "Dos niños jugando al fútbol en el parque",
    ),
    "it": (
        "Una bicicletta rossa appoggiata a un muro di mattoni",
        "Verdure fresche su un tavolo da cucina in legno",
    ),
    "pt": (
        "Uma bicicleta vermelha encostada numa parede de tijolos",
        "Legumes frescos numa mesa de cozinha de madeira",
    ),
    "ru": (
        "Красный велосипед у кирпичной стены",
        "Горное озеро на рассвете с туманом над водой",
    ),
    "zh": (
        "一辆红色自行车靠在砖墙上",
        "清晨雾气笼罩的山间湖泊",
    ),
    "ja": (
        "レンガの壁に立てかけられた赤い自転車",
        "朝日が昇る山の湖",
    ),
}
# Texts that need fixing: HTML entities (as WATs carry them) and mojibake that ftfy repairs.
ENTITY_TEXTS = ("Fish &amp; chips on a plate", "Caf&eacute; terrace at night", "Thai word &#3648;&#3605;&#3659;&#3634;")
MOJIBAKE_TEXTS = ("CafÃ© terrace with wicker chairs", "NaÃ¯ve painting of a village fÃªte")
LICENSES = (
    "https://creativecommons.org/licenses/by/4.0/",
    "https://creativecommons.org/licenses/by-sa/3.0/",
    "http://creativecommons.org/licenses/by-nc/2.0/",
)
SITE_WORDS = ("photo", "travel", "garden", "recipes", "news", "outdoor", "design", "pets", "city", "art")
TLDS = ("com", "org", "net", "de", "fr", "es", "it", "ru", "jp", "co.uk")


@dataclass
class GeneratedWat:
    path: str
    pages: int
    records: int
    bytes_written: int


# Calibrated on the real Common Crawl sample (CC-MAIN-2015-18, bench/extract/README.md has the figures):
# per HTML page 51-243 links (mean 150), of which 18% IMG@/src; 81% of IMG links carry an alt; a page's
# template images repeat (distinct pairs / alt links 37% there; 50% here, see DUPLICATE_*).
IMAGES_MEDIAN, IMAGES_SIGMA, IMAGES_MAX = 12, 1.27, 300  # lognormal IMG links per page: median 12, mean ~27
ANCHORS_MIN, ANCHORS_MAX = 45, 200  # A@/href links per page (real: 46-201)
ALT_MISSING = 0.19  # IMG links without alt (missing key or "")
GRID_PAGE = 0.5  # pages with 20+ image links whose links repeat 2-5 times (thumbnail grids, template blocks)
DUPLICATE_LINK = 0.1  # otherwise, chance that an image link occurs twice
BOILERPLATE_ALTS = ("Facebook", "Twitter", "RSS feed", "Search", "Home", "Powered by WordPress", "Subscribe by email")
ANCHOR_WORDS = ("Home", "About us", "Contact", "Read more", "Next page", "Privacy policy", "Archives", "Login", "Tags")
HTML_RESPONSES = 0.9  # share of responses that are HTML pages (real sample 4 of 5; redirects and 404s are the rest)


class _Page:
    """One HTML page's links, in the shapes real WATs carry them."""

    def __init__(self, rng: random.Random, index: int, image_base: str | None, junk_ratio: float, noai_ratio: float = 0.0):
        self.rng = rng
        # A few pages per site, next to each other (Common Crawl's WARCs of that era are sorted by URL).
        site = random.Random(index // 4)
        self.host = f"www.{site.choice(SITE_WORDS)}{site.choice(SITE_WORDS)}{index // 4 % 997}.{site.choice(TLDS)}"
        self.url = f"http://{self.host}/{rng.choice(SITE_WORDS)}/{index}.html"
        self.image_base = image_base.rstrip("/") if image_base else None
        # Pages whose images are relative resolve them against <base> when the images live elsewhere.
        self.base = f"{self.image_base}/" if self.image_base and rng.random() < 0.5 else None
        self.junk_ratio = junk_ratio
        self.language = rng.choice(list(SENTENCES))
        self.license = rng.choice(LICENSES) if rng.random() < 0.15 else None
        # No draw at all without noai pages, so the default (calibrated) files stay byte for byte the same.
        self.noai = noai_ratio > 0 and rng.random() < noai_ratio

    def image_url(self, n: int) -> str:
        name = f"{self.rng.choice(SITE_WORDS)}-{n}.{self.rng.choice(('jpg', 'jpeg', 'png', 'webp'))}"
        style = self.rng.random()
        if self.base:  # relative to <base>
            return f"images/{name}" if style < 0.7 else f"{self.base}images/{name}?w=640&amp;h=480"
        if self.image_base:
            return f"{self.image_base}/{self.host}/{name}"
        if style < 0.4:
            return f"http://{self.host}/wp-content/uploads/2015/04/{name}"
        if style < 0.6:
            return f"/images/{name}"
        if style < 0.7:
            return f"../media/{name}"
        if style < 0.8:
            return f"//cdn.{self.host.removeprefix('www.')}/{name}"
        return f"https://img.{self.host.removeprefix('www.')}/resize.php?src={name}&amp;w=300&amp;q=80"

    def alt_text(self, n: int) -> str:
        """Mostly distinct texts (a sentence plus the image's own detail), as real alt texts are."""
        roll = self.rng.random()
        if roll < 0.06:
            return self.rng.choice(ENTITY_TEXTS)
        if roll < 0.09:
            return self.rng.choice(MOJIBAKE_TEXTS)
        language = self.language if roll < 0.8 else self.rng.choice(list(SENTENCES))
        sentence = self.rng.choice(SENTENCES[language])
        return sentence if roll < 0.3 else f"{sentence} {n}"

    def junk_link(self) -> dict:
        """A link with an alt that one LAION-5B rule must drop."""
        kind = self.rng.randrange(10)
        good = self.image_url(self.rng.randrange(10_000))
        if kind == 0:
            return {"alt": "logo", "path": "IMG@/src", "url": good}  # text_too_short
        if kind == 1:
            return {"alt": "Spinner animation", "path": "IMG@/src", "url": f"http://{self.host}/spinner.gif"}
        if kind == 2:
            return {"alt": "Vector icon of a house", "path": "IMG@/src", "url": "/icons/house.svg"}
        if kind == 3:
            return {"alt": "Inline pixel image", "path": "IMG@/src", "url": "data:image/png;base64,iVBORw0KGgo="}
        if kind == 4:
            return {"alt": "Click to open the gallery", "path": "IMG@/src", "url": "javascript:openGallery(3)"}
        if kind == 5:
            return {"alt": "Photo on a very long host name", "path": "IMG@/src", "url": f"http://{'x' * 70}.com/a.jpg"}
        if kind == 6:
            return {"alt": "A photo with a huge tracking query", "path": "IMG@/src", "url": good + "?t=" + "a" * 2100}
        if kind == 7:
            return {"alt": " ".join(["caption"] * 400), "path": "IMG@/src", "url": good}  # text_too_long
        if kind == 8:
            return {"alt": "Picture from the archive", "path": "IMG@/src", "url": "ftp://files.example.org/pic.jpg"}
        return {"alt": "Photo behind a broken link", "path": "IMG@/src", "url": "http://[broken/pic.jpg"}

    def image_links(self) -> list[dict]:
        """The page's IMG@/src links: content images, site boilerplate, alt-less images, junk, repeats."""
        rng = self.rng
        total = min(IMAGES_MAX, max(1, round(rng.lognormvariate(math.log(IMAGES_MEDIAN), IMAGES_SIGMA))))
        repeats = rng.randint(2, 5) if total >= 20 and rng.random() < GRID_PAGE else 1
        links: list[dict] = []
        for name in rng.sample(BOILERPLATE_ALTS, rng.randint(0, 3)):  # same url+alt on every page of the site
            site = f"{self.image_base}/{self.host}" if self.image_base else f"http://{self.host}"
            links.append({"alt": name, "path": "IMG@/src", "url": f"{site}/theme/{name.split()[0].lower()}.png"})
        while len(links) < total:
            roll = rng.random()
            n = rng.randrange(10_000)
            if roll < ALT_MISSING:
                link = {"path": "IMG@/src", "url": self.image_url(n)}
                if roll < ALT_MISSING / 2:
                    link["alt"] = ""
            elif roll < ALT_MISSING + (1 - ALT_MISSING) * self.junk_ratio:
                link = self.junk_link()
            else:
                alt = self.alt_text(n)
                link = {"alt": alt, "path": "IMG@/src", "url": self.image_url(n)}
                if rng.random() < 0.5:
                    link["title"] = alt
            copies = repeats if repeats > 1 else (2 if rng.random() < DUPLICATE_LINK else 1)
            links += [dict(link) for _ in range(copies)]
        return links[:total]

    def links(self) -> list[dict]:
        rng = self.rng
        links: list[dict] = [
            {"path": "STYLE/#text", "href": f"http://{self.host}/wp-content/themes/site/style.css"} for _ in range(rng.randint(0, 3))
        ]
        for _ in range(rng.randint(ANCHORS_MIN, ANCHORS_MAX)):
            target = f"/{rng.choice(SITE_WORDS)}/{rng.randrange(2010, 2016)}/{rng.choice(SITE_WORDS)}-{rng.randrange(10_000)}.html"
            if rng.random() < 0.4:
                target = f"http://{self.host}{target}"
            anchor = {"path": "A@/href", "text": rng.choice(ANCHOR_WORDS), "url": target}
            if rng.random() < 0.25:
                anchor["title"] = anchor["text"]
            elif rng.random() < 0.1:
                anchor["target"] = "_blank"
            links.append(anchor)
        for link in self.image_links():  # images sit between the anchors, in blocks as pages lay them out
            links.insert(rng.randrange(len(links) + 1), link)
        if self.license:
            links.append({"path": "A@/href", "rel": "license", "url": self.license})
        links.append({"path": "FORM@/action", "method": "get", "url": "/search"})
        return links

    def head(self) -> dict:
        rng = self.rng
        head: dict = {
            "Title": f"{rng.choice(SENTENCES[self.language])} | {self.host}",
            "Metas": [{"name": "viewport", "content": "width=device-width, initial-scale=1"},
                      {"name": "description", "content": rng.choice(SENTENCES[self.language])}]
            + [{"content": f"{rng.choice(SITE_WORDS)} {rng.randrange(999)}", "name": f"og:{rng.choice(SITE_WORDS)}"}
               for _ in range(rng.randint(2, 16))]
            + ([{"name": "robots", "content": "noai"}] if self.noai else []),
            "Link": [{"path": "LINK@/href", "rel": "stylesheet", "type": "text/css", "url": f"/css/site.css?v={rng.randrange(99)}"},
                     {"path": "LINK@/href", "rel": "icon", "type": "image/x-icon", "url": "/favicon.ico"}]
            + [{"path": "LINK@/href", "rel": "alternate", "type": "application/rss+xml", "url": f"http://{self.host}/feed/{i}/"}
               for i in range(rng.randint(0, 10))],
            "Scripts": [{"path": "SCRIPT@/src", "type": "text/javascript", "url": f"//cdn.example.net/lib{i}.min.js?ver=1.{i}"}
                        for i in range(rng.randint(2, 11))],
        }
        if self.base:
            head["Base"] = self.base
        return head


def _record(headers: dict[str, str], body: bytes) -> bytes:
    lines = ["WARC/1.0", *(f"{k}: {v}" for k, v in headers.items()), f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body + b"\r\n\r\n"


def _envelope(warc_type: str, target: str, record_id: str, payload: dict, filename: str, offset: int) -> dict:
    return {
        "Container": {
            "Filename": filename,
            "Compressed": True,
            "Offset": str(offset),
            "Gzip-Metadata": {"Header-Length": "10", "Footer-Length": "8"},
        },
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Length": "400",
            "WARC-Header-Metadata": {
                "WARC-Type": warc_type,
                "WARC-Date": "2024-02-20T10:00:00Z",
                "WARC-Record-ID": record_id,
                "WARC-Target-URI": target,
                "Content-Type": f"application/http; msgtype={warc_type}",
            },
            "Payload-Metadata": payload,
        },
    }


def _page_records(page: _Page, rng: random.Random, filename: str, offset: int) -> list[bytes]:
    ids = [f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}>" for _ in range(6)]
    request = {
        "Actual-Content-Type": "application/http; msgtype=request",
        "HTTP-Request-Metadata": {
            "Request-Message": {"Method": "GET", "Version": "HTTP/1.1", "Path": page.url.split("/", 3)[3]},
            "Headers": {
                "Host": page.host,
                "Accept-Encoding": "x-gzip, gzip, deflate",
                "User-Agent": "CCBot/2.0 (http://commoncrawl.org/faq/)",
                "Accept-Language": "en-US,en;q=0.8,*;q=0.5",
                "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                "Connection": "close",
            },
            "Headers-Length": "257",
        },
        "Trailing-Slop-Length": "0",
    }
    html_page = rng.random() < HTML_RESPONSES
    response_meta: dict = {
        "Response-Message": {"Status": "200" if html_page else "404", "Version": "HTTP/1.1", "Reason": "OK"},
        "Headers": {
            "Content-Type": "text/html; charset=UTF-8",
            "Server": "nginx",
            "Date": "Tue, 20 Feb 2024 10:00:00 GMT",
            "X-Powered-By": "PHP/5.4.45",
            "Cache-Control": "max-age=0, no-cache",
            "Vary": "Accept-Encoding,Cookie",
            "Set-Cookie": f"session={uuid.UUID(int=rng.getrandbits(128)).hex}; path=/; HttpOnly",
            "Connection": "close",
        },
        "Headers-Length": "300",
        "Entity-Length": str(rng.randrange(5_000, 90_000)),
        "Entity-Trailing-Slop-Bytes": "0",
        "Entity-Digest": "sha1:5ZDPMWG5PEUVMPLSDCD27D24JP52X2LL",
    }
    if html_page:
        response_meta["HTML-Metadata"] = {"Head": page.head(), "Links": page.links()}
    response = {"Actual-Content-Type": "application/http; msgtype=response", "HTTP-Response-Metadata": response_meta}
    metadata = {
        "Actual-Content-Type": "application/metadata-fields",
        "WARC-Metadata-Metadata": {"Metadata-Records": [{"Name": "fetchTimeMs", "Value": str(rng.randrange(900))}],
                                   "Trailing-Slop-Length": "0", "Actual-Content-Length": "20"},
        "Trailing-Slop-Length": "4",
    }
    out = []
    for i, (kind, payload) in enumerate((("request", request), ("response", response), ("metadata", metadata))):
        record = _envelope(kind, page.url, ids[i], payload, filename, offset + i * 500)
        record["Envelope"]["Block-Digest"] = "sha1:ZPY7ANBHCTAT54SN2R2VGDT6OCF4PVNN"
        record["Envelope"]["Actual-Content-Length"] = "1024"
        record["Envelope"]["WARC-Header-Metadata"].update(
            {"WARC-Warcinfo-ID": ids[5], "WARC-IP-Address": "93.184.216.34", "Content-Length": "1024",
             "WARC-Concurrent-To": ids[(i + 1) % 3], "WARC-Payload-Digest": "sha1:3I42H3S6NNFQ2MSVX7XZKYAYSCX5QBYJ"}
        )
        body = orjson.dumps(record)
        headers = {
            "WARC-Type": "metadata",
            "WARC-Target-URI": page.url,
            "WARC-Date": "2024-02-20T10:00:00Z",
            "WARC-Record-ID": ids[i + 3],
            "WARC-Refers-To": ids[i],
            "Content-Type": "application/json",
        }
        out.append(_record(headers, body))
    return out


def generate_wat(
    out: str | Path,
    pages: int,
    *,
    gzip: bool = False,
    image_base: str | None = None,
    seed: int = 0,
    junk_ratio: float = 0.2,
    noai_ratio: float = 0.0,
) -> GeneratedWat:
    """Write a WAT of `pages` HTML pages (3 records each, after one warcinfo record); a `noai_ratio`
    share of them say <meta name="robots" content="noai"> (none by default, as in real WATs)."""
    rng = random.Random(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    filename = f"CC-MAIN-synthetic-{hashlib.sha1(f'{seed}'.encode()).hexdigest()[:8]}.warc.gz"
    info = b"software: altlake watgen\r\nformat: WARC File Format 1.0\r\n"
    records = 1
    written = 0
    with open(out, "wb") as f:

        def emit(record: bytes) -> None:
            nonlocal written
            data = gzip_module.compress(record, compresslevel=5, mtime=0) if gzip else record
            f.write(data)
            written += len(data)

        emit(_record({"WARC-Type": "warcinfo", "WARC-Filename": filename, "Content-Type": "application/warc-fields"}, info))
        for index in range(pages):
            page = _Page(rng, index, image_base, junk_ratio, noai_ratio)
            for record in _page_records(page, rng, filename, written):
                emit(record)
                records += 1
    return GeneratedWat(str(out), pages, records, written)


# --- explicit pages (the demo and end-to-end tests choose every link) ------------------------------


@dataclass(frozen=True)
class PageSpec:
    """One HTML page with exactly these image links: (src as written in the HTML, alt text)."""

    url: str
    links: tuple[tuple[str, str], ...]
    title: str = "altlake demo page"
    license_url: str | None = None
    base: str | None = None
    metas: tuple[tuple[str, str], ...] = ()  # <meta name=.. content=..>, e.g. (("robots", "noai"),)


def _explicit_page_records(page: PageSpec, index: int, filename: str, offset: int) -> list[bytes]:
    host = page.url.split("/", 3)[2]
    head: dict = {"Title": page.title}
    if page.metas:
        head["Metas"] = [{"name": name, "content": content} for name, content in page.metas]
    if page.base:
        head["Base"] = page.base
    links = [{"path": "IMG@/src", "url": src, "alt": alt} for src, alt in page.links]
    if page.license_url:
        links.append({"path": "A@/href", "rel": "license", "url": page.license_url})
    response = {
        "Actual-Content-Type": "application/http; msgtype=response",
        "HTTP-Response-Metadata": {
            "Response-Message": {"Status": "200", "Version": "HTTP/1.1", "Reason": "OK"},
            "Headers": {"Content-Type": "text/html; charset=UTF-8", "Host": host},
            "HTML-Metadata": {"Head": head, "Links": links},
        },
    }
    ids = [f"<urn:uuid:{uuid.UUID(bytes=hashlib.md5(f'{page.url}|{index}|{i}'.encode()).digest())}>" for i in range(2)]
    body = orjson.dumps(_envelope("response", page.url, ids[0], response, filename, offset))
    headers = {
        "WARC-Type": "metadata",
        "WARC-Target-URI": page.url,
        "WARC-Date": "2024-02-20T10:00:00Z",
        "WARC-Record-ID": ids[1],
        "WARC-Refers-To": ids[0],
        "Content-Type": "application/json",
    }
    return [_record(headers, body)]


def write_wat(out: str | Path, pages: Iterable[PageSpec], *, gzip: bool = False) -> GeneratedWat:
    """Write a WAT holding exactly `pages` (one response metadata record each, after a warcinfo)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    filename = f"CC-MAIN-explicit-{out.stem}.warc.gz"
    info = b"software: altlake watgen\r\nformat: WARC File Format 1.0\r\n"
    records, written, n_pages = 0, 0, 0
    with open(out, "wb") as f:
        chunks = [_record({"WARC-Type": "warcinfo", "WARC-Filename": filename, "Content-Type": "application/warc-fields"}, info)]
        for n_pages, page in enumerate(pages, start=1):
            chunks += _explicit_page_records(page, n_pages, filename, written)
        for record in chunks:
            data = gzip_module.compress(record, compresslevel=5, mtime=0) if gzip else record
            f.write(data)
            written += len(data)
            records += 1
    return GeneratedWat(str(out), n_pages, records, written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spark_jobs.watgen", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="file to write (.warc.wat or .warc.wat.gz)")
    parser.add_argument("--pages", type=int, required=True, help="HTML pages (3 records each)")
    parser.add_argument("--gzip", action="store_true", help="gzip each record, as Common Crawl does")
    parser.add_argument("--image-base", help="serve every image URL from here, e.g. http://127.0.0.1:8000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--junk-ratio", type=float, default=0.2, help="share of alt-bearing image links that break a LAION rule")
    parser.add_argument("--noai-ratio", type=float, default=0.0, help='share of pages with <meta name="robots" content="noai">')
    args = parser.parse_args(argv)
    result = generate_wat(
        args.out, args.pages, gzip=args.gzip, image_base=args.image_base, seed=args.seed, junk_ratio=args.junk_ratio,
        noai_ratio=args.noai_ratio,
    )
    print(orjson.dumps(result.__dict__).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
