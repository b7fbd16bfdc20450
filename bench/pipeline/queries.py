"""`python -m bench.pipeline.queries --lake LAKE --out FILE`: SQL on the lake, timed inside one session.

`altlake sql` starts a Spark session per query (~15 s), which would hide what table maintenance
changes: the files and log commits a reader opens. Here one session runs each query REPEATS times
and times each `collect()`: the first run plans the query and reads the Delta log cold, the later
ones are what a notebook user feels. The maintain stage runs this before and after `altlake maintain`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from altlake.config import Settings

# The README's "Querying the lake" examples (with the output format `altlake sql` prints them in),
# then two scans of the largest tables, where compaction matters most.
README_EXAMPLES = (
    ("SELECT status, count(*) FROM crawl_files GROUP BY 1", "table"),
    ("SELECT url, text, similarity FROM pairs ORDER BY similarity DESC LIMIT 10", "json"),
    ("DESCRIBE HISTORY candidates", "csv"),
    ("SELECT host, count(*) AS batches, sum(rows_ok) AS images, round(sum(rows_ok) / sum(wall_s), 1) AS images_per_s, "
     "round(sum(bytes_downloaded) / 1e9, 2) AS gb FROM batches WHERE finished_at > now() - INTERVAL 1 DAY GROUP BY host", "table"),
)  # fmt: skip
SCANS = (
    "SELECT language, count(*) FROM candidates GROUP BY 1",
    "SELECT status, count(*), avg(similarity) FROM scores GROUP BY 1",
)
QUERIES = tuple(q for q, _ in README_EXAMPLES) + SCANS
REPEATS = 3


def time_queries(spark, queries: tuple[str, ...] = QUERIES, repeats: int = REPEATS) -> list[dict]:
    """Each query's seconds per run and rows returned."""
    timed = []
    for query in queries:
        seconds, rows = [], 0
        for _ in range(repeats):
            started = time.perf_counter()
            rows = len(spark.sql(query).collect())
            seconds.append(round(time.perf_counter() - started, 3))
        timed.append({"sql": query, "seconds": seconds, "first_s": seconds[0], "best_s": min(seconds), "rows": rows})
    return timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline.queries", description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON: one entry per query")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    from spark_jobs.session import get_spark, require_lake

    settings = Settings.from_env(lake_dir=args.lake)
    require_lake(settings)
    timed = time_queries(get_spark(settings, "altlake-bench-queries"), repeats=args.repeats)
    args.out.write_text(json.dumps(timed, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
