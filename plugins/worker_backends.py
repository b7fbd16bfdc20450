"""Where Airflow runs the scoring worker: one interface over a local subprocess, AWS Batch and Kubernetes.

The DAG calls `build_score_operator(settings, batches, pool=...)` at parse time and gets one mapped
task, one task instance per batch dict (a row of the `batches` table: batch_id, input_path,
output_path, ...). `Settings.worker_backend` (ALTLAKE_WORKER_BACKEND) picks the operator class;
every backend runs the same command, `altlake score --input IN --output OUT --batch-id ID [worker_args]`
(in containers through the image's ENTRYPOINT, the altlake CLI), so a batch scores the same on a
laptop, a GPU node pool or an AWS Batch queue.

Why one job (or pod) per batch rather than AWS Batch array jobs: a batch is already a large unit
(`Settings.batch_size` rows, minutes of GPU time), so per-job submit overhead is negligible, while
one Airflow task instance per batch gives per-batch retries with backoff, per-batch logs and XCom,
pool-limited concurrency, and a direct match with the per-batch status in the `batches` table.
An array job would retry, time out and fail as a whole group.

Retries: Airflow retries a failed batch with exponential backoff (every backend); AWS Batch itself
only retries host/Spot reclaims, so application errors surface in Airflow's logs. Re-running is
safe because the worker skips a batch whose `_SUCCESS` marker exists and writes each file atomically.

XCom: `local` returns the worker's JSON summary; `aws_batch` returns the job id; `kubernetes`
returns nothing. A downstream merge should read each batch's `_SUCCESS` marker, which holds the
same summary for every backend.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import BaseOperator
from kubernetes.client import models as k8s

from altlake.config import WORKER_BACKENDS, Settings

BACKENDS = WORKER_BACKENDS

# The worker image's ENTRYPOINT is the altlake CLI (infra/docker/worker.Dockerfile), so containers
# get only the arguments: AWS Batch's command override and a pod's args both replace the image's CMD.
CONTAINER_ARGS = ("score",)
# The same command on the Airflow worker's own Python: no reliance on PATH or an activated venv.
LOCAL_COMMAND = (sys.executable, "-m", "altlake_cli.main", "score")

# Settings the worker itself reads, forwarded as ALTLAKE_* variables to wherever it runs.
WORKER_SETTINGS = ("lake_dir", "s3_endpoint", "user_agent", "model_profiles")

# A tqdm refresh every 30 s instead of every 0.1 s: progress stays visible in task logs without
# flooding them (tqdm reads TQDM_* variables as defaults).
LOG_FRIENDLY_ENV = {"TQDM_MININTERVAL": "30"}

STDERR_TAIL_LINES = 40

# Longest a batch may run. Also given to AWS Batch and Kubernetes themselves: a deferred task that
# times out in Airflow does not stop its job or pod, so the cloud side must enforce it too.
WORKER_TIMEOUT = timedelta(hours=4)


class WorkerFailed(RuntimeError):
    """The worker exited non-zero or broke its output contract; Airflow retries the task."""


def worker_environment(settings: Settings) -> dict[str, str]:
    """ALTLAKE_* variables that give the worker the same configuration as the DAG that started it."""
    env = {f"ALTLAKE_{name.upper()}": str(getattr(settings, name)) for name in WORKER_SETTINGS}
    return {name: value for name, value in env.items() if value}


def score_arguments(batch: Mapping[str, Any], worker_args: Sequence[str] = ()) -> list[str]:
    """`--input IN --output OUT --batch-id ID [worker_args]` for one batch; a malformed batch is a clear error."""
    missing = [key for key in ("batch_id", "input_path", "output_path") if not batch.get(key)]
    if missing:
        raise ValueError(f"batch {dict(batch)!r} lacks {', '.join(missing)}: expected a row of the batches table")
    return [
        "--input", str(batch["input_path"]),
        "--output", str(batch["output_path"]),
        "--batch-id", str(batch["batch_id"]),
        *worker_args,
    ]  # fmt: skip


def parse_summary(stdout: str) -> dict:
    """The worker's JSON summary: the last JSON object on stdout (one line or pretty-printed)."""
    text = stdout.rstrip()
    decoder = json.JSONDecoder()
    starts = [match.start() for match in re.finditer(r"(?m)^\{", text)]
    for start in reversed(starts):
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if end == len(text) and isinstance(value, dict):
            return value
    raise WorkerFailed(f"the worker exited 0 but printed no JSON summary on stdout; stdout ends with: {text[-2000:]!r}")


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _job_name(batch_id: str, max_length: int) -> str:
    """`altlake-score-<batch id>` restricted to the characters job / pod names allow."""
    safe = re.sub(r"[^a-z0-9-]+", "-", batch_id.lower()).strip("-")
    return f"altlake-score-{safe}"[:max_length].rstrip("-")


class LocalScoreOperator(BaseOperator):
    """Runs `altlake score` for one batch in a subprocess of the Airflow worker.

    A subprocess, not an import of `score_batch`, so the model's memory is returned when the batch
    ends and a crash in native code fails one task instead of the Airflow worker.
    """

    ui_color = "#e8f4d4"

    def __init__(
        self,
        *,
        batch: dict,
        worker_args: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
        worker_command: Sequence[str] = LOCAL_COMMAND,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.worker_args = list(worker_args)
        self.environment = dict(environment or {})
        self.worker_command = list(worker_command)
        self._process: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        return [*self.worker_command, *score_arguments(self.batch, self.worker_args)]

    def execute(self, context) -> dict:
        command = self.command
        self.log.info("Scoring batch %s: %s", self.batch["batch_id"], shlex.join(command))
        env = {**os.environ, **LOG_FRIENDLY_ENV, **self.environment}
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        # stdout goes to a file (read once at the end) while stderr is streamed into the task log
        # line by line, so neither pipe can fill up and block the worker.
        with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as stdout:
            self._process = subprocess.Popen(
                command, stdout=stdout, stderr=subprocess.PIPE, env=env, text=True, errors="replace"
            )
            for line in self._process.stderr:
                line = line.rstrip()
                if line:
                    tail.append(line)
                    self.log.info("worker: %s", line)
            returncode = self._process.wait()
            stdout.seek(0)
            output = stdout.read()
        if returncode != 0:
            raise WorkerFailed(
                f"altlake score {describe_exit(returncode)} for batch {self.batch['batch_id']}; "
                f"last {len(tail)} stderr lines:\n" + "\n".join(tail)
            )
        summary = parse_summary(output)
        self.log.info("Batch %s scored: %s", self.batch["batch_id"], json.dumps(summary, sort_keys=True))
        return summary

    def on_kill(self) -> None:
        """Stop the worker with the task, so a killed task frees its GPU and pool slot for real."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()


class AwsBatchScoreOperator(BatchOperator):
    """One AWS Batch job per batch: the job definition's image, our command, env and GPU count."""

    def __init__(
        self,
        *,
        batch: dict,
        worker_args: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
        gpus: int = 1,
        cpus: int = 8,
        memory_gb: int = 24,
        **kwargs,
    ) -> None:
        self.batch = batch
        device = ["--device", "cuda" if gpus else "cpu"]  # a missing GPU fails loudly, never runs slow
        resources = [{"type": "VCPU", "value": str(cpus)}, {"type": "MEMORY", "value": str(memory_gb * 1024)}]
        if gpus:
            resources.append({"type": "GPU", "value": str(gpus)})
        container_overrides: dict[str, Any] = {
            "command": [*CONTAINER_ARGS, *score_arguments(batch, [*device, *worker_args])],
            "environment": [{"name": name, "value": value} for name, value in sorted((environment or {}).items())],
            "resourceRequirements": resources,
        }
        kwargs.setdefault(
            "retry_strategy",
            {  # Batch retries lost hosts (Spot reclaims) itself; any other failure goes to Airflow.
                "attempts": 3,
                "evaluateOnExit": [
                    {"onStatusReason": "Host EC2*", "action": "RETRY"},
                    {"onReason": "*", "action": "EXIT"},
                ],
            },
        )
        super().__init__(
            job_name=_job_name(str(batch.get("batch_id", "")), 128),
            container_overrides=container_overrides,
            tags={"altlake:batch_id": str(batch.get("batch_id", ""))},
            **kwargs,
        )


class KubernetesScoreOperator(KubernetesPodOperator):
    """One pod per batch on a GPU node: worker image, our command, env, `nvidia.com/gpu` limit."""

    def __init__(
        self,
        *,
        batch: dict,
        worker_args: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
        gpus: int = 1,
        cpus: int = 8,
        memory_gb: int = 24,
        **kwargs,
    ) -> None:
        self.batch = batch
        device = ["--device", "cuda" if gpus else "cpu"]
        requests = {"cpu": str(cpus), "memory": f"{memory_gb}Gi"}
        limits = {"memory": f"{memory_gb}Gi"}  # no CPU limit: throttling slows decoding for nothing
        tolerations = None
        if gpus:
            limits["nvidia.com/gpu"] = str(gpus)
            # GPU node pools are usually tainted so that only GPU pods land there.
            tolerations = [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
        batch_label = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(batch.get("batch_id", "")))[:63].strip("-_.")
        super().__init__(
            name=_job_name(str(batch.get("batch_id", "")), 50),  # the operator appends a random suffix
            arguments=[*CONTAINER_ARGS, *score_arguments(batch, [*device, *worker_args])],
            env_vars=dict(environment or {}),
            labels={"app.kubernetes.io/name": "altlake-worker", "altlake/batch-id": batch_label},
            container_resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
            tolerations=tolerations,
            **kwargs,
        )


def _local_kwargs(settings: Settings) -> tuple[type[BaseOperator], dict[str, Any]]:
    return LocalScoreOperator, {}


def _aws_batch_kwargs(settings: Settings) -> tuple[type[BaseOperator], dict[str, Any]]:
    _require(settings, "aws_batch_job_queue", "aws_batch_job_definition")
    return AwsBatchScoreOperator, {
        **_resources(settings),
        "job_queue": settings.aws_batch_job_queue,
        "job_definition": settings.aws_batch_job_definition,
        "aws_conn_id": settings.aws_batch_conn_id or None,
        "deferrable": True,  # the Airflow worker slot is free while the GPU job runs
        "awslogs_enabled": True,
        "submit_job_timeout": int(WORKER_TIMEOUT.total_seconds()),
    }


def _kubernetes_kwargs(settings: Settings) -> tuple[type[BaseOperator], dict[str, Any]]:
    _require(settings, "worker_image", "k8s_namespace")
    return KubernetesScoreOperator, {
        **_resources(settings),
        "image": settings.worker_image,
        "namespace": settings.k8s_namespace,
        "image_pull_policy": "IfNotPresent",
        "get_logs": True,
        "on_finish_action": "delete_pod",
        "startup_timeout_seconds": 900,  # a GPU node may have to be provisioned first
        "active_deadline_seconds": int(WORKER_TIMEOUT.total_seconds()),
        "deferrable": True,
    }


def _resources(settings: Settings) -> dict[str, int]:
    return {"gpus": settings.worker_gpus, "cpus": settings.worker_cpus, "memory_gb": settings.worker_memory_gb}


_BACKEND_KWARGS = {"local": _local_kwargs, "aws_batch": _aws_batch_kwargs, "kubernetes": _kubernetes_kwargs}


def _require(settings: Settings, *names: str) -> None:
    missing = [f"ALTLAKE_{name.upper()}" for name in names if not getattr(settings, name)]
    if missing:
        raise ValueError(f"worker_backend={settings.worker_backend!r} needs {', '.join(missing)} to be set")


def score_operator_kwargs(settings: Settings, *, pool: str, task_id: str = "score") -> tuple[type[BaseOperator], dict[str, Any]]:
    """The operator class of the configured backend and the `.partial(...)` kwargs every batch shares."""
    if settings.worker_backend not in _BACKEND_KWARGS:
        raise ValueError(f"unknown worker_backend {settings.worker_backend!r}; expected one of {', '.join(BACKENDS)}")
    operator_class, backend_kwargs = _BACKEND_KWARGS[settings.worker_backend](settings)
    return operator_class, {
        "task_id": task_id,
        "pool": pool,
        "retries": settings.worker_retries,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(hours=1),
        "execution_timeout": WORKER_TIMEOUT,
        "map_index_template": "{{ task.batch['batch_id'] }}",
        "worker_args": shlex.split(settings.worker_args),
        "environment": worker_environment(settings),
        **backend_kwargs,
    }


def build_score_operator(settings: Settings, batches: Any, *, pool: str, task_id: str = "score"):
    """One mapped scoring task over `batches` (an XComArg of batch dicts), on the configured backend."""
    operator_class, partial_kwargs = score_operator_kwargs(settings, pool=pool, task_id=task_id)
    return operator_class.partial(**partial_kwargs).expand(batch=batches)
