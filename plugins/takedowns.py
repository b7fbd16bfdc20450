"""What the apply_takedowns DAG's tasks do, as plain functions (the DAG file only wires them).

add (record the form's requests; all are checked before any is written) -> apply (delete every
match from candidates, scores and pairs). Both are idempotent, so the daily run with an empty form
simply re-applies the recorded requests to rows ingested since.
"""

from __future__ import annotations

import logging

from airflow.sdk.exceptions import AirflowFailException

from altlake.config import Settings
from altlake.schemas import TAKEDOWN_KINDS
from plugins.spark import task_spark

log = logging.getLogger(__name__)


def requests_from_params(params: dict) -> list:
    """TakedownRequests from the form: a list per kind plus an optional sha256/md5/pdq hash-list file;
    pdq requests carry the form's maximum distance."""
    from spark_jobs.takedowns import TakedownRequest, read_hash_list

    values = {kind: list(params.get(kind) or []) for kind in TAKEDOWN_KINDS}
    if params.get("hash_list"):
        kind = params.get("hash_list_kind") or "sha256"
        try:
            values[kind] += read_hash_list(params["hash_list"], kind)
        except (OSError, ValueError) as error:
            raise AirflowFailException(f"hash list {params['hash_list']!r} cannot be used: {error}") from error
    distance = params.get("pdq_max_distance")
    requested = [
        TakedownRequest(kind, value, params.get("reason") or "", distance if kind == "pdq" else None)
        for kind in TAKEDOWN_KINDS
        for value in values[kind]
    ]
    if requested and not (params.get("reason") or "").strip():
        raise AirflowFailException("takedown requests need a reason (e.g. 'GDPR request 2024-113')")
    return requested


def add(settings: Settings, params: dict) -> dict:
    """Record the form's requests; the result also names them (reason, count per kind) so that the
    apply task's summary can say whether this run's requests matched anything."""
    from spark_jobs.takedowns import add_takedowns

    requests = requests_from_params(params)
    try:
        recorded = add_takedowns(task_spark(settings, "altlake-takedowns"), settings, requests)
    except ValueError as error:  # a bad entry: retrying cannot help, and nothing was written
        raise AirflowFailException(str(error)) from error
    requested = {kind: n for kind in TAKEDOWN_KINDS if (n := sum(r.kind == kind for r in requests))}
    result = {**recorded, "reason": (params.get("reason") or "").strip(), "requested": requested}
    log.info("%s", add_summary_line(result))
    return result


def apply(settings: Settings, added: dict) -> dict:
    """Delete every match of every recorded request; `added` is the add task's result (this run's requests)."""
    from spark_jobs.takedowns import apply_takedowns

    result = {"added": added, **apply_takedowns(task_spark(settings, "altlake-takedowns"), settings)}
    log.info("%s", apply_summary_line(result))
    return result


def amend(settings: Settings, applied: dict, aws_conn_id: str = "") -> dict:
    """Add a removals addendum beside every published release the takedowns now reach further."""
    from plugins.release import store_options
    from spark_jobs.removals import amend_releases

    result = amend_releases(task_spark(settings, "altlake-takedowns"), settings, store_options=store_options(settings, aws_conn_id))
    log.info("%s", amend_summary_line(result))
    return result


def purge(settings: Settings) -> dict:
    """Remove what earlier applies deleted from the tables' Delta history, once their grace has passed."""
    from spark_jobs.takedowns import purge_takedowns

    result = purge_takedowns(task_spark(settings, "altlake-takedowns"), settings)
    log.info("%s", purge_summary_line(result))
    return result


def purge_summary_line(result: dict) -> str:
    """The purge task's last log line: which tables lost taken-down rows from their history, and
    how many applies still wait for their grace period."""
    waiting = sum(result["waiting"].values())
    wait = f"{waiting} table deletion(s) wait for the {result['grace_hours']} h grace period" if waiting else "nothing waits"
    if not result["purged"]:
        return f"Summary: takedown purge: nothing due; {wait}"
    return f"Summary: takedown purge: removed from the Delta history of {', '.join(sorted(result['purged']))}; {wait}"


def amend_summary_line(result: dict) -> str:
    """The amend task's last log line: which published releases got an addendum, and how many rows."""
    if not result["amended"]:
        return f"Summary: no published release holds a newly taken-down row ({result['releases']} release(s) checked)"
    amended = ", ".join(f"{release} {n} row(s)" for release, n in sorted(result["amended"].items()))
    return (
        f"Summary: removals addenda added (takedowns version {result['takedowns_version']}): {amended}; "
        "the search service hides them on its next reload"
    )


def add_summary_line(added: dict) -> str:
    """The add task's last log line: what the form asked for and what was new."""
    if not added["received"]:
        return "Summary: no takedown request in the form: the apply task re-applies the recorded ones"
    kinds = ", ".join(f"{n} {kind}" for kind, n in added["requested"].items())
    matched = ", ".join(f"{table} {n}" for table, n in added["matched_rows"].items())
    line = (
        f'Summary: takedown "{added["reason"]}": {added["received"]} request(s) ({kinds}): {added["added"]} recorded, '
        f"{added['already_present']} already on record (takedowns version {added['takedowns_version']}); rows they match: {matched}"
    )
    if added["matched_nothing"]:
        shown = ", ".join(added["matched_nothing"][:5]) + (", ..." if len(added["matched_nothing"]) > 5 else "")
        line += f"; {len(added['matched_nothing'])} match no row yet ({shown}): they still block future crawls"
    return line


def apply_summary_line(result: dict) -> str:
    """The apply task's last log line: what matched, by which kind of request, and what was deleted.
    A request that matched nothing says so: a person who sent one must not read it as done."""
    added = result["added"]
    if added["received"]:
        head = f'takedown "{added["reason"]}" ({added["received"]} request(s) in the form, {result["requests"]} on record in all)'
    else:
        head = f"takedowns (no new request: the {result['requests']} on record re-applied)"
    if not result["matched_uids"]:
        return f"Summary: {head}: nothing matched: no row of candidates, scores or pairs matches any request (what earlier runs deleted is gone)"
    kinds = ", ".join(f"{kind} {n}" for kind, n in result["matched_by_kind"].items())
    deleted = ", ".join(f"{table} {n}" for table, n in result["deleted"].items())
    line = f"Summary: {head}: matched {result['matched_uids']} image-text pair(s) (by {kinds}); rows deleted from {deleted}"
    unmatched = [kind for kind in added["requested"] if not result["matched_by_kind"].get(kind)]
    if unmatched:
        line += f"; this run's {' and '.join(unmatched)} request(s) matched nothing"
    return line
