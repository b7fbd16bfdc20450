"""The last log line of build_release's and apply_takedowns' tasks: what a person reads first.

The release results are those spark_jobs.release.build_release returns for the scenario of
tests/spark_jobs/test_release.py (its stages and counts are asserted there); the takedown ones
come from a real run of the tasks' functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from altlake.config import Settings
from altlake.stats import StageStats, chain

# build_release's result for test_release's scenario (14 candidates, one unscored, one timeout,
# one below the threshold, two duplicates, one on a hash list, one near-duplicate pair).
PUBLISHED = {
    "release_id": "20240501-3f2a9c1b",
    "location": "/lake/releases/20240501-3f2a9c1b",
    "sources": {"candidates": 1, "scores": 1, "takedowns": 1, "pairs": 2},
    "counts": {"en": 6, "multi": 1, "nolang": 1},
    "stages": chain([
        StageStats("scored", 14, {"not_scored": 1}),
        StageStats("downloaded", 13, {"timeout": 1}),
        StageStats("threshold", 12, {"below_threshold": 1}),
        StageStats("exact_dedup", 11, {"duplicate": 2}),
        StageStats("takedowns", 9, {"taken_down": 1}),
        StageStats("near_dedup", 8, marked={"near_duplicate": 1}),
    ]),
    "gx": {"scores": {"success": True, "evaluated": 14, "failed": []}, "pairs": {"success": True, "evaluated": 17, "failed": []}},
    "files": 21,
    "index": {"rows": 8},
}  # fmt: skip


def test_publish_summary_says_what_was_kept_and_why_the_rest_was_dropped():
    from plugins.release import publish_summary_line

    line = publish_summary_line(PUBLISHED)
    assert line.startswith("Summary: release 20240501-3f2a9c1b published at /lake/releases/20240501-3f2a9c1b: ")
    assert "8 pair(s) kept (en 6, multi 1, nolang 1) of 14 candidates; scored: 14 in, 13 kept; dropped 1 not_scored" in line
    assert "downloaded: 13 in, 12 kept; dropped 1 timeout | threshold: 12 in, 11 kept; dropped 1 below_threshold" in line
    assert "exact_dedup: 11 in, 9 kept; dropped 2 duplicate | takedowns: 9 in, 8 kept; dropped 1 taken_down" in line
    assert "near_dedup: 8 in, 8 kept; marked 1 near_duplicate" in line
    assert line.endswith("GX: scores 14/14 expectations passed, pairs 17/17 expectations passed")
    # recorded_release's shape: the same inputs were released before, and that release is reused
    reused = {k: PUBLISHED[k] for k in ("release_id", "location", "counts", "stages")} | {"reused": True}
    again = publish_summary_line({**reused, "counts": {"en": 6, "multi": 0, "nolang": 0}})
    assert "reused (nothing new" in again and "kept (en 6) of 14 candidates" in again and "GX" not in again


def test_index_summary_names_the_indices_and_their_recall():
    from plugins.release import index_summary_line

    indices = {"image": {"file": "index/image.index", "factory": "Flat", "kind": "flat", "rows": 8, "recall_at_10": 1.0},
               "text": {"file": "index/text.index", "factory": "Flat", "kind": "flat", "rows": 8, "recall_at_10": 1.0}}  # fmt: skip
    line = index_summary_line({"release_id": "20240501-3f2a9c1b", "rows": 8, "skipped": True, "in_manifest": True, "indices": indices})
    assert line == (
        "Summary: release 20240501-3f2a9c1b: KNN indices over 8 pair(s) recorded in its manifest (built before publishing): "
        "image (flat, recall@10 1.0), text (flat, recall@10 1.0)"
    )


class _Lines(logging.Handler):
    """The messages logged to one logger, whatever handlers the logging setup put elsewhere."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def last(self) -> str:
        return self.messages[-1]


@pytest.fixture
def lines() -> Iterator[_Lines]:
    """plugins.takedowns' messages, read on the logger itself: once Airflow has set up logging in this
    test process, records may no longer propagate to caplog's handler on the root logger."""
    logger, lines = logging.getLogger("plugins.takedowns"), _Lines()
    previous = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(previous)


def test_takedown_tasks_say_what_matched_and_what_matched_nothing(tmp_path, lines):
    """add and apply as the DAG runs them, on a lake with one row the form's URL names."""
    from plugins.takedowns import add, amend, apply
    from spark_jobs.lake import read_table
    from spark_jobs.session import get_spark
    from tests.spark_jobs.lakegen import add_candidates, candidate

    settings = Settings.from_env(lake_dir=str(tmp_path / "lake"), spark_master="local[2]", spark_shuffle_partitions=2)
    listed = candidate("https://img.example.org/private.jpg", "a picture someone asked to remove")
    add_candidates(get_spark(settings, "altlake-tests"), settings, [listed, candidate("https://other.org/a.jpg", "kept")])
    form = {"url": [listed["url"]], "domain": ["nowhere.example"], "reason": "GDPR request 2024-113"}

    added = add(settings, form)
    assert lines.last == (
        'Summary: takedown "GDPR request 2024-113": 2 request(s) (1 url, 1 domain): 2 recorded, 0 already on record '
        f"(takedowns version {added['takedowns_version']}); rows they match: candidates 1, scores 0, pairs 0; "
        "1 match no row yet (domain nowhere.example): they still block future crawls"
    )
    matched = {r["kind"]: r["matched"] for r in read_table(get_spark(settings, "altlake-tests"), settings, "takedowns").collect()}
    assert matched == {"url": {"candidates": 1, "scores": 0, "pairs": 0}, "domain": {"candidates": 0, "scores": 0, "pairs": 0}}
    applied = apply(settings, added)
    assert lines.last == (
        'Summary: takedown "GDPR request 2024-113" (2 request(s) in the form, 2 on record in all): matched 1 image-text '
        "pair(s) (by url 1, domain 0, sha256 0, md5 0, pdq 0); rows deleted from candidates 1, scores 0, pairs 0; "
        "this run's domain request(s) matched nothing"
    )
    amend(settings, applied)
    assert lines.last == "Summary: no published release holds a newly taken-down row (0 release(s) checked)"

    again = add(settings, {"reason": None})  # the daily run: an empty form
    assert lines.last == "Summary: no takedown request in the form: the apply task re-applies the recorded ones"
    apply(settings, again)
    assert lines.last.startswith("Summary: takedowns (no new request: the 2 on record re-applied): nothing matched")
