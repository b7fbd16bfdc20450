"""Names every runtime agrees on: crawl ids, Common Crawl's locations, the pair uid, the demo model.

Each value is written here once; the DAG forms, the command line, the Spark jobs and the worker
import it, so a pattern or a prefix cannot drift between them.
"""

from __future__ import annotations

import hashlib
import re

# --- crawl ids ------------------------------------------------------------------------------------

# A Common Crawl id, CC-MAIN-YYYY-WW (year, then the two-digit week). The lake orders crawls as
# strings (MERGE keeps the greater `last_seen_crawl`), which is only the crawls' time order for
# ids of exactly this shape: every way a crawl id enters the lake checks it against this pattern.
CRAWL_ID_PATTERN = r"CC-MAIN-\d{4}-\d{2}"
CRAWL_ID = re.compile(rf"^{CRAWL_ID_PATTERN}$")
CRAWL_ID_EXAMPLE = "CC-MAIN-2024-10"


def is_crawl_id(value: object) -> bool:
    """Whether `value` is a Common Crawl id like CC-MAIN-2024-10."""
    return isinstance(value, str) and CRAWL_ID.fullmatch(value) is not None


def check_crawl_id(value: object) -> str:
    """`value` when it is a Common Crawl id; else ValueError with a message fit for one line."""
    if not is_crawl_id(value):
        raise ValueError(f"crawl {value!r} is not a Common Crawl id like {CRAWL_ID_EXAMPLE} (CC-MAIN-YYYY-WW)")
    return value


# --- Common Crawl's locations ---------------------------------------------------------------------

# The same public bucket, two ways in. The prefix joins the entries of a crawl's wat.paths.gz
# listing (crawl-data/CC-MAIN-.../*.warc.wat.gz) and locates the listing itself.
# - COMMONCRAWL_S3: Spark's s3a:// reader, in-region on AWS (the `altlake extract` command line's
#   default, run where the cluster has S3 access).
# - COMMONCRAWL_HTTPS: Common Crawl's HTTPS front, readable anywhere without AWS credentials (the
#   cc_ingest DAG's default, so a fresh deployment ingests before it is given any AWS access).
COMMONCRAWL_S3 = "s3a://commoncrawl/"
COMMONCRAWL_HTTPS = "https://data.commoncrawl.org/"

# --- LAION-5B rules the candidates contract promises ----------------------------------------------

# The shortest alt text kept (characters, after cleaning): extraction drops shorter ones and the
# candidates quality gate expects none.
MIN_TEXT_CHARS = 5

# --- the pair uid ---------------------------------------------------------------------------------


def pair_uid(url: str, text: str) -> str:
    """Stable id of a pair: the same (url, text) gets the same uid in every run and crawl.

    The lake's key (candidates, scores, pairs): changing it re-keys every table.
    """
    return hashlib.sha256(f"{url}\x00{text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


# --- models ---------------------------------------------------------------------------------------

# The model name that selects the project's own demo models (gpu_workers/demo_models), and what
# the workers load when the deployment names none.
DEMO_MODEL = "demo"
