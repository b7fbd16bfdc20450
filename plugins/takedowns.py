"""What the apply_takedowns DAG's tasks do, as plain functions (the DAG file only wires them).

add (record the form's requests; all are checked before any is written) -> apply (delete every
match from candidates, scores and pairs). Both are idempotent, so the daily run with an empty form
simply re-applies the recorded requests to rows ingested since.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException

from altlake.config import Settings
from altlake.schemas import TAKEDOWN_KINDS


def requests_from_params(params: dict) -> list:
    """TakedownRequests from the form: a list per kind plus an optional sha256/md5 hash-list file."""
    from spark_jobs.takedowns import TakedownRequest, read_hash_list

    values = {kind: list(params.get(kind) or []) for kind in TAKEDOWN_KINDS}
    if params.get("hash_list"):
        kind = params.get("hash_list_kind") or "sha256"
        try:
            values[kind] += read_hash_list(params["hash_list"], kind)
        except (OSError, ValueError) as error:
            raise AirflowFailException(f"hash list {params['hash_list']!r} cannot be used: {error}") from error
    requested = [TakedownRequest(kind, value, params.get("reason") or "") for kind in TAKEDOWN_KINDS for value in values[kind]]
    if requested and not (params.get("reason") or "").strip():
        raise AirflowFailException("takedown requests need a reason (e.g. 'GDPR request 2024-113')")
    return requested


def add(settings: Settings, params: dict) -> dict:
    from spark_jobs.session import get_spark
    from spark_jobs.takedowns import add_takedowns

    requests = requests_from_params(params)
    try:
        return add_takedowns(get_spark(settings, "altlake-takedowns"), settings, requests)
    except ValueError as error:  # a bad entry: retrying cannot help, and nothing was written
        raise AirflowFailException(str(error)) from error


def apply(settings: Settings) -> dict:
    from spark_jobs.session import get_spark
    from spark_jobs.takedowns import apply_takedowns

    return apply_takedowns(get_spark(settings, "altlake-takedowns"), settings)
