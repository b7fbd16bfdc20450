"""Which Common Crawl to ingest: the newest one in Common Crawl's crawl list (collinfo.json).

The list's URL is a setting (ALTLAKE_CRAWL_LIST_URL) so tests and air-gapped deployments point it
at a mirror; any URL urllib opens works (https://, http://, file://).
"""

from __future__ import annotations

import json
import urllib.request

from altlake.names import CRAWL_ID_EXAMPLE, is_crawl_id


class CrawlListError(RuntimeError):
    """The crawl list could not be read or holds no usable crawl id."""


def fetch_crawl_ids(url: str, timeout_s: float = 30.0) -> list[str]:
    """Every weekly-style crawl id (CC-MAIN-YYYY-WW) the list names, in the list's order."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            entries = json.loads(response.read())
    except (OSError, ValueError) as error:
        raise CrawlListError(f"cannot read the crawl list at {url}: {error}") from error
    if not isinstance(entries, list):
        raise CrawlListError(f"the crawl list at {url} is not a JSON list of crawls")
    return [e["id"] for e in entries if isinstance(e, dict) and is_crawl_id(e.get("id"))]


def newest_crawl(url: str) -> str:
    """The newest crawl id: ids sort by year then week, whatever order the list is in."""
    ids = fetch_crawl_ids(url)
    if not ids:
        raise CrawlListError(f"the crawl list at {url} names no crawl id like {CRAWL_ID_EXAMPLE}")
    return max(ids)
