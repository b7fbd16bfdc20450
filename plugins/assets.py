"""The Airflow Assets that connect altlake's DAGs, each defined once.

The ingestion DAG lists an asset in its outlets and the scoring DAG schedules on the very same
object, so renaming one can never silently disconnect the two.
"""

from __future__ import annotations

from airflow.sdk import Asset

# Updated each time a crawl's new candidates passed their quality gate; the event's extra holds
# {"crawl", "rows", "run_id", "docs_dir"}.
CANDIDATES_ASSET = Asset(name="altlake_candidates", uri="altlake://candidates", group="altlake")
# Updated each time scoring batches were merged into `scores`; the extra holds {"batches", "rows", "statuses"}.
SCORES_ASSET = Asset(name="altlake_scores", uri="altlake://scores", group="altlake")
