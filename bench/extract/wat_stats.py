"""The statistics that decide extraction cost, for any WAT: run it on the real sample and on a generated file.

    python -m bench.extract.wat_stats FILE [FILE ...]

Records by kind, HTML pages, links per page and the IMG share, alt presence, distinct (url, alt)
pairs per alt link (what per-file dedup saves), JSON bytes per record kind, gzipped bytes per page.
`generate_wat`'s defaults are calibrated against these figures (bench/extract/README.md).
"""

from __future__ import annotations

import statistics
import sys
import zlib
from collections import Counter

import orjson
from fastwarc.warc import ArchiveIterator, WarcRecordType

from spark_jobs.wat import DecodedStream, open_wat, page_links


def wat_stats(path: str) -> dict:
    """One pass over the file; every figure is computed from the parsed JSON."""
    kinds: Counter[str] = Counter()
    sizes: dict[str, list[int]] = {}
    links, images, with_alt, alt_links, distinct = [], [], 0, 0, set()
    gz_bytes = 0
    with open_wat(path) as raw:
        for record in ArchiveIterator(DecodedStream(raw), parse_http=False, stream_detect=False,
                                      record_types=WarcRecordType.any_type):
            body = record.reader.read()
            gz_bytes += len(zlib.compress(body, 5))
            if record.record_type != WarcRecordType.metadata:
                kinds["warcinfo"] += 1
                continue
            envelope = orjson.loads(body)["Envelope"]
            kind = envelope["WARC-Header-Metadata"].get("WARC-Type", "?")
            html = envelope["Payload-Metadata"].get("HTTP-Response-Metadata", {}).get("HTML-Metadata")
            kind = "response (HTML)" if html else kind
            kinds[kind] += 1
            sizes.setdefault(kind, []).append(len(body))
            if html:
                page = html.get("Links") or []
                imgs = [link for link in page if link.get("path") == "IMG@/src"]
                links.append(len(page))
                images.append(len(imgs))
                with_alt += sum(1 for link in imgs if link.get("alt"))
                parsed = page_links(envelope)
                if parsed:
                    alt_links += len(parsed[1])
                    distinct.update(parsed[1])
    pages = kinds["response (HTML)"]
    metadata_records = sum(n for k, n in kinds.items() if k != "warcinfo")
    return {
        "records": sum(kinds.values()),
        "records_by_kind": dict(kinds),
        "html_page_share_of_metadata_records": round(pages / max(metadata_records, 1), 3),
        "html_pages": pages,
        "links_per_page_mean": round(statistics.mean(links), 1) if links else 0,
        "img_links_per_page_mean": round(statistics.mean(images), 1) if images else 0,
        "img_links_per_page_median": statistics.median(images) if images else 0,
        "img_share_of_links": round(sum(images) / max(sum(links), 1), 3),
        "alt_share_of_img_links": round(with_alt / max(sum(images), 1), 3),
        "distinct_pairs_per_alt_link": round(len(distinct) / max(alt_links, 1), 3),
        "json_bytes_mean_by_kind": {k: round(statistics.mean(v)) for k, v in sizes.items()},
        "gzip_bytes_per_page": round(gz_bytes / max(kinds["response"] + pages, 1)),
    }


if __name__ == "__main__":
    for wat in sys.argv[1:]:
        print(wat)
        print(orjson.dumps(wat_stats(wat), option=orjson.OPT_INDENT_2).decode())
