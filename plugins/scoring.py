"""What the score_candidates DAG's tasks do, as plain functions (the DAG file only wires them).

plan -> score (one mapped task per batch, plugins/worker_backends.py) -> merge -> check. The
worker's `_SUCCESS` marker, not the task state or XCom, decides whether a batch is merged: it is
the same on every backend, and a batch whose worker never wrote it is marked failed with the
reason, so its uids are planned again by a later run while the other batches are merged now.
"""

from __future__ import annotations

import logging
import shlex
from collections import Counter

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from altlake import stats
from altlake.config import Settings
from altlake.profiles import MODEL_FLAGS, ProfileError, load_profiles, select_profile
from altlake.schemas import BATCH_FAILED, BATCH_PLANNED
from plugins.spark import task_spark

log = logging.getLogger(__name__)

# Per-host politeness: the setting (and form field, where the form has one) -> its `altlake score` flag.
POLITENESS_FLAGS = {
    "per_host_concurrency": "--per-host-concurrency",
    "per_host_rate": "--per-host-rate",
    "max_retry_after_s": "--max-retry-after",
    "host_refusal_limit": "--host-refusal-limit",
}


def run_settings(params: dict) -> Settings:
    """ALTLAKE_* settings with the run's form overrides (empty fields keep the settings; a rate of 0 is a value)."""
    politeness = {name: params.get(name) for name in POLITENESS_FLAGS}
    return Settings.from_env(batch_size=params.get("batch_size") or None, **politeness)


def politeness_args(settings: Settings) -> list[str]:
    """`altlake score` flags carrying the run's per-host politeness. Always explicit, so the
    deployment's ALTLAKE_* values (or the form's) reach workers in containers too, where only
    WORKER_SETTINGS are forwarded; given after ALTLAKE_WORKER_ARGS, so they win over it."""
    args: list[str] = []
    for name, flag in POLITENESS_FLAGS.items():
        args += [flag, str(getattr(settings, name))]
    return args


def with_worker_args(batches: list[dict], worker_args: list[str]) -> list[dict]:
    """The planned batches, each carrying the run's extra worker flags (`score_kwargs` hands them on)."""
    return [{**batch, "worker_args": list(worker_args)} for batch in batches]


def score_kwargs(batch: dict, deployed_args: list[str]) -> dict:
    """One mapped score task's kwargs: the batch, and the deployment's worker args followed by the run's."""
    run_args = batch.get("worker_args") or []
    return {"batch": {k: v for k, v in batch.items() if k != "worker_args"}, "worker_args": [*deployed_args, *run_args]}


def check_deployment(settings: Settings, worker_backend: str) -> None:
    """The backend is fixed when the DAG is parsed (the mapped operator is built then): a form asking
    for another must fail loudly rather than silently score on the deployed one. The models are the
    run's profile, so ALTLAKE_WORKER_ARGS must not choose any (the worker refuses both at once)."""
    if worker_backend and worker_backend != settings.worker_backend:
        raise AirflowFailException(
            f"this deployment scores on worker_backend={settings.worker_backend!r}; the form asked for "
            f"{worker_backend!r}: set ALTLAKE_WORKER_BACKEND for the Airflow deployment instead"
        )
    model_flags = [arg.split("=", 1)[0] for arg in shlex.split(settings.worker_args) if arg.split("=", 1)[0] in MODEL_FLAGS.values()]
    if model_flags:
        raise AirflowFailException(
            f"ALTLAKE_WORKER_ARGS chooses models ({', '.join(model_flags)}), but each run scores with the model profile "
            "of its form: move those models into a profile of ALTLAKE_MODEL_PROFILES and drop the flags"
        )


def profile_names(settings: Settings) -> list[str]:
    """The deployment's model profiles, default first (the form's choices, read when the DAG is
    parsed: a broken profiles file or an unknown default is an import error that says why)."""
    profiles = load_profiles(settings.model_profiles)
    default = select_profile(profiles, settings.model_profile, "ALTLAKE_MODEL_PROFILE").name
    return [default, *sorted(name for name in profiles if name != default)]


def profile_args(settings: Settings, profile: str) -> list[str]:
    """`--profile NAME` for the run's workers, once the deployment's profiles file (re-read: it may
    have changed since the DAG was parsed) still defines it."""
    try:
        select_profile(load_profiles(settings.model_profiles), profile, settings.model_profiles or "built-in profiles")
    except ProfileError as error:
        raise AirflowFailException(str(error)) from error
    return ["--profile", profile]


def plan(settings: Settings, crawl: str | None, batch_size: int | None, max_batches: int | None, rescore_profile: str | None = None) -> dict:
    """Plan new batches and pick up batches an interrupted run left planned (the worker skips any
    that already finished), so re-running the DAG resumes instead of starting over. With
    `rescore_profile`, rows scored ok under another profile are planned again too."""
    from spark_jobs.batches import plan_batches
    from spark_jobs.lake import read_table

    spark = task_spark(settings, "altlake-plan-batches")
    summary = plan_batches(spark, settings, crawl or None, batch_size, max_batches, rescore_profile)
    new_ids = {b["batch_id"] for b in summary["batches"]}
    leftover = [
        {"batch_id": r["batch_id"], "n_rows": r["n_rows"], "input_path": r["input_path"], "output_path": r["output_path"]}
        for r in read_table(spark, settings, "batches").where(f"status = '{BATCH_PLANNED}'").orderBy("batch_id").collect()
        if r["batch_id"] not in new_ids
    ]
    batches = summary.pop("batches") + leftover
    counts = {**summary, "new_batches": len(new_ids), "resumed_batches": len(leftover)}
    log.info("%s", plan_summary_line(counts))
    return {"batches": batches, "counts": counts}


def plan_summary_line(counts: dict) -> str:
    """The plan task's last log line: what came in, what is queued, what was left out and why."""
    line = (
        f"Summary: {counts['candidates']} candidate(s): {counts['eligible']} queued in {counts['new_batches']} new "
        f"batch(es) ({counts['unscored']} never scored, {counts['retryable']} to retry"
        + (f", {counts['rescore']} scored under another profile to rescore" if counts.get("rescore") else "")
        + ")"
    )
    if counts["resumed_batches"]:
        line += f", {counts['resumed_batches']} batch(es) an interrupted run left are resumed"
    if counts["not_retried"]:
        line += f"; {counts['not_retried']} failed for good or out of retries (ALTLAKE_RETRY_LIMITS), not queued"
    if counts["already_planned"]:
        line += f"; {counts['already_planned']} already in a planned batch"
    if not counts["eligible"] and not counts["resumed_batches"]:
        line += "; nothing to score"
    return line


def merge(settings: Settings, batches: list[dict]) -> dict:
    """Merge every finished batch into `scores` (MERGE on uid: safe to repeat); a batch without
    `_SUCCESS` after all its task attempts is marked failed with why. Skips (no asset event) when
    nothing new was merged."""
    from spark_jobs.merge_scores import mark_batch_failed, merge_planned_batches

    if not batches:
        raise AirflowSkipException("no batches were planned: nothing to merge")
    spark = task_spark(settings, "altlake-merge-scores")
    result = merge_planned_batches(spark, settings, [b["batch_id"] for b in batches])
    outputs = {b["batch_id"]: b["output_path"] for b in batches}
    failed = []
    for outcome in result["batches"]:
        if outcome["status"] == "incomplete":
            reason = (
                f"the scoring worker did not finish: no _SUCCESS in {outputs[outcome['batch_id']]} after every "
                f"attempt of task score[{outcome['batch_id']}] (see its log)"
            )
            mark_batch_failed(spark, settings, outcome["batch_id"], reason)
            failed.append({"batch_id": outcome["batch_id"], "error": reason})
        elif outcome["status"] == "failed":
            failed.append({"batch_id": outcome["batch_id"], "error": outcome["error"]})
    merged = [o for o in result["batches"] if o["status"] == "merged"]
    statuses: Counter[str] = Counter()
    for outcome in merged:
        statuses.update(outcome["statuses"])
    summary = {
        "merged_batches": len(merged),
        "failed_batches": failed,
        "rows": sum(o["rows"] for o in merged),
        "inserted": sum(o["inserted"] for o in merged),
        "updated": sum(o["updated"] for o in merged),
        "statuses": dict(sorted(statuses.items())),
        "stages": stats.combine(o["stages"] for o in merged),
    }
    log.info("%s", merge_summary_line(summary))
    if not merged:
        raise AirflowSkipException(f"no batch finished ({len(failed)} failed): the scores table is unchanged")
    return summary


def merge_summary_line(summary: dict) -> str:
    """The merge task's last log line: batches merged or failed, rows by outcome."""
    statuses = ", ".join(f"{n} {status}" for status, n in summary["statuses"].items()) or "none"
    line = (
        f"Summary: {summary['merged_batches']} batch(es) merged into scores: {summary['rows']} row(s) "
        f"({summary['inserted']} new, {summary['updated']} updated); outcomes: {statuses}"
    )
    if any(stage["dropped"] for stage in summary.get("stages", [])):
        line += "; " + stats.summary(summary["stages"])
    if summary["failed_batches"]:
        line += f"; {len(summary['failed_batches'])} batch(es) failed and will be planned again (see the check task)"
    return line


def check(settings: Settings, batches: list[dict]) -> dict:
    """Fail the run, naming each batch and its reason, when any batch of this run ended failed;
    the merged batches are already in `scores` and the failed ones are planned again next run."""
    from spark_jobs.lake import read_table

    ids = [b["batch_id"] for b in batches]
    if not ids:
        return {"batches": 0, "failed": []}
    spark = task_spark(settings, "altlake-check-batches")
    table = read_table(spark, settings, "batches")
    rows = table.where(table["batch_id"].isin(ids)).collect()
    failed = sorted((r["batch_id"], r["error"]) for r in rows if r["status"] == BATCH_FAILED)
    unfinished = sorted(r["batch_id"] for r in rows if r["status"] == BATCH_PLANNED)
    if failed or unfinished:
        lines = [f"  - {batch_id}: {error}" for batch_id, error in failed]
        lines += [f"  - {batch_id}: still planned (not merged)" for batch_id in unfinished]
        raise AirflowFailException(
            f"{len(failed) + len(unfinished)} of {len(ids)} batches did not finish; the others are merged and "
            f"these are planned again by the next run:\n" + "\n".join(lines)
        )
    return {"batches": len(ids), "failed": []}
