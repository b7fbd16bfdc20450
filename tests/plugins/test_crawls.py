"""Picking the newest crawl and its WAT files from a crawl list served on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from airflow.sdk.exceptions import AirflowFailException

from altlake.config import Settings
from plugins.crawls import CrawlListError, fetch_crawl_ids, newest_crawl
from plugins.ingest import resolve_inputs

# The shape of https://index.commoncrawl.org/collinfo.json (newest first there; shuffled here).
COLLINFO = [
    {"id": "CC-MAIN-2024-33", "name": "August 2024 Index", "from": "2024-08-03T00:00:00"},
    {"id": "CC-MAIN-2025-05", "name": "January 2025 Index", "from": "2025-01-12T00:00:00"},
    {"id": "CC-MAIN-2024-51", "name": "December 2024 Index", "from": "2024-12-01T00:00:00"},
    {"id": "not-a-crawl", "name": "junk entry"},
]


@pytest.fixture
def http_root(tmp_path):
    """A static HTTP server on 127.0.0.1 over tmp_path/www; yields (root dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_newest_crawl_is_the_latest_id_whatever_the_order(http_root):
    root, base = http_root
    (root / "collinfo.json").write_text(json.dumps(COLLINFO))
    assert fetch_crawl_ids(f"{base}/collinfo.json") == ["CC-MAIN-2024-33", "CC-MAIN-2025-05", "CC-MAIN-2024-51"]
    assert newest_crawl(f"{base}/collinfo.json") == "CC-MAIN-2025-05"


def test_unusable_crawl_lists_fail_with_the_reason(http_root):
    root, base = http_root
    (root / "junk.json").write_text("<html>not json</html>")
    (root / "empty.json").write_text("[]")
    with pytest.raises(CrawlListError, match="cannot read the crawl list"):
        newest_crawl(f"{base}/junk.json")
    with pytest.raises(CrawlListError, match="names no crawl id"):
        newest_crawl(f"{base}/empty.json")
    with pytest.raises(CrawlListError, match="cannot read the crawl list"):
        newest_crawl(f"{base}/missing.json")


def test_scheduled_inputs_are_the_newest_crawls_listing(http_root):
    """The monthly run: no crawl, no paths -> newest crawl, its wat.paths.gz, cut to the limit."""
    root, base = http_root
    (root / "collinfo.json").write_text(json.dumps(COLLINFO))
    listing = root / "crawl-data" / "CC-MAIN-2025-05" / "wat.paths.gz"
    listing.parent.mkdir(parents=True)
    entries = [f"crawl-data/CC-MAIN-2025-05/segments/1/wat/part-{i:05d}.warc.wat.gz" for i in range(5)]
    listing.write_bytes(gzip.compress("\n".join(entries).encode()))
    settings = Settings.from_env(environ={}, crawl_list_url=f"{base}/collinfo.json")

    inputs = resolve_inputs(settings, crawl="", wat_paths=[], wat_limit=2, wat_prefix=f"{base}/")

    assert inputs == {"crawl": "CC-MAIN-2025-05", "wat_paths": [f"{base}/{e}" for e in entries[:2]]}


def test_explicit_crawl_and_paths_win(tmp_path, sample_wat):
    settings = Settings.from_env(environ={}, crawl_list_url="http://127.0.0.1:9/unreachable.json")
    inputs = resolve_inputs(settings, crawl="CC-MAIN-2015-18", wat_paths=[str(sample_wat)])
    assert inputs == {"crawl": "CC-MAIN-2015-18", "wat_paths": [str(sample_wat)]}
    with pytest.raises(AirflowFailException, match="no WAT files"):
        resolve_inputs(settings, crawl="CC-MAIN-2015-18", wat_paths=[str(tmp_path / "nothing-*.wat.gz")])


@pytest.mark.parametrize("crawl", ["2024-10", "CC-MAIN-2024-1", "CC-MAIN-2024-10\n", "cc-main-2024-10"])
def test_a_malformed_crawl_fails_before_any_listing_is_read(crawl):
    """The one crawl-id contract (altlake.names): MERGE orders crawls by their ids as strings."""
    settings = Settings.from_env(environ={}, crawl_list_url="http://127.0.0.1:9/unreachable.json")
    with pytest.raises(AirflowFailException, match="is not a Common Crawl id like CC-MAIN-2024-10"):
        resolve_inputs(settings, crawl=crawl, wat_paths=["http://127.0.0.1:9/never-read.wat.gz"])


def test_the_crawl_list_keeps_only_ids_of_the_one_pattern(http_root):
    root, base = http_root
    entries = [{"id": "CC-MAIN-2024-10"}, {"id": "CC-MAIN-2024-10\n"}, {"id": "CC-MAIN-2024-1"}, {"id": 2024}, {"name": "no id"}]
    (root / "odd.json").write_text(json.dumps(entries))
    assert fetch_crawl_ids(f"{base}/odd.json") == ["CC-MAIN-2024-10"]
