"""Scoring worker backends: the local one runs for real (subprocess, real worker, real Airflow run);
AWS Batch and Kubernetes are checked on the exact requests they would send, with no cloud call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from altlake.config import Settings
from altlake.paths import LakePaths
from plugins import worker_backends as wb

REPO = Path(__file__).resolve().parents[2]

BATCH = {
    "batch_id": "b-00042",
    "input_path": "s3://lake/batches/b-00042/input.parquet",
    "output_path": "s3://lake/batches/b-00042/output",
}


def write_batch(settings: Settings, batch_id: str, rows: list[dict]) -> dict:
    """A batch as the planner leaves it: input parquet at LakePaths.batch_input, a batches-table dict."""
    paths = LakePaths(settings.lake_dir)
    input_path = paths.batch_input(batch_id)
    Path(input_path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), input_path)
    return {"batch_id": batch_id, "input_path": input_path, "output_path": paths.batch_output(batch_id)}


def python_worker(script: str) -> list[str]:
    """A worker command that runs `script` with the batch flags in sys.argv (subprocess plumbing only)."""
    return [sys.executable, "-c", textwrap.dedent(script)]


# --- shared pieces ----------------------------------------------------------------------------------


def test_score_arguments_carry_the_batch_and_reject_a_malformed_one():
    args = wb.score_arguments(BATCH, ["--device", "cpu"])
    assert args == [
        "--input", BATCH["input_path"], "--output", BATCH["output_path"], "--batch-id", "b-00042", "--device", "cpu",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="lacks output_path"):
        wb.score_arguments({"batch_id": "b1", "input_path": "x.parquet"})


def test_parse_summary_takes_the_last_json_object_on_stdout():
    pretty = json.dumps({"rows": 3, "statuses": {"ok": 2}}, indent=2)
    assert wb.parse_summary(f"loading model\n{{not json\n{pretty}\n") == {"rows": 3, "statuses": {"ok": 2}}
    assert wb.parse_summary('{"rows": 1}\n{"rows": 2}\n') == {"rows": 2}
    with pytest.raises(wb.WorkerFailed, match="no JSON summary"):
        wb.parse_summary("done\n")


def test_worker_environment_forwards_the_worker_settings_only():
    settings = Settings.from_env(s3_endpoint="http://127.0.0.1:9000", user_agent="ua/1", lake_dir="s3a://lake")
    env = wb.worker_environment(settings)
    assert env == {
        "ALTLAKE_LAKE_DIR": "s3a://lake",
        "ALTLAKE_S3_ENDPOINT": "http://127.0.0.1:9000",
        "ALTLAKE_USER_AGENT": "ua/1",
    }


def test_every_backend_gets_retries_with_backoff_and_the_callers_pool():
    for settings in (
        Settings.from_env(worker_backend="local", worker_retries=5),
        Settings.from_env(worker_backend="aws_batch", worker_retries=5, aws_batch_job_queue="q", aws_batch_job_definition="d"),
        Settings.from_env(worker_backend="kubernetes", worker_retries=5, worker_image="registry/altlake-worker:1"),
    ):
        operator_class, kwargs = wb.score_operator_kwargs(settings, pool="scoring")
        operator = operator_class(batch=BATCH, **kwargs)
        assert (operator.pool, operator.retries, operator.retry_exponential_backoff) == ("scoring", 5, 2.0)
        assert operator.max_retry_delay == timedelta(hours=1)


def test_misconfigured_backends_fail_at_parse_time_with_the_setting_to_fix():
    with pytest.raises(ValueError, match="ALTLAKE_AWS_BATCH_JOB_QUEUE, ALTLAKE_AWS_BATCH_JOB_DEFINITION"):
        wb.score_operator_kwargs(Settings.from_env(worker_backend="aws_batch"), pool="scoring")
    with pytest.raises(ValueError, match="ALTLAKE_WORKER_IMAGE"):
        wb.score_operator_kwargs(Settings.from_env(worker_backend="kubernetes"), pool="scoring")
    with pytest.raises(ValueError, match="ALTLAKE_WORKER_BACKEND='slurm': must be one of local, aws_batch, kubernetes"):
        Settings.from_env(worker_backend="slurm")  # refused with the settings, before any operator is made


def test_the_mapped_task_serializes_for_every_backend():
    """The scheduler stores the DAG serialized: partial kwargs must survive, for each backend."""
    from airflow.sdk import DAG, task
    from airflow.serialization.serialized_objects import DagSerialization

    for settings in (
        Settings.from_env(worker_backend="local"),
        Settings.from_env(worker_backend="aws_batch", aws_batch_job_queue="q", aws_batch_job_definition="d"),
        Settings.from_env(worker_backend="kubernetes", worker_image="registry/altlake-worker:1"),
    ):
        with DAG(f"score_{settings.worker_backend}", schedule=None, start_date=datetime(2024, 1, 1)) as dag:

            @task
            def plan() -> list[dict]:
                return [BATCH]

            wb.build_score_operator(settings, plan(), pool="scoring")
        serialized = DagSerialization.to_dict(dag)
        restored = DagSerialization.from_dict(serialized)
        score = restored.get_task("score")
        assert score.partial_kwargs["pool"] == "scoring"
        assert score.partial_kwargs["retries"] == settings.worker_retries
        assert score._expand_input_attr == "expand_input"
        assert restored.get_task("plan").task_id in score.upstream_task_ids


# --- local backend: real subprocesses -----------------------------------------------------------------


def test_local_operator_returns_the_summary_and_passes_batch_and_settings(tmp_path: Path):
    batch = {**BATCH, "input_path": str(tmp_path / "in.parquet"), "output_path": str(tmp_path / "out")}
    operator = wb.LocalScoreOperator(
        task_id="score",
        batch=batch,
        worker_args=["--device", "cpu"],
        environment={"ALTLAKE_USER_AGENT": "ua/test"},
        worker_command=python_worker(
            """
            import json, os, sys
            print("progress 50%", file=sys.stderr)
            print("a stray stdout line")
            print(json.dumps({"argv": sys.argv[1:], "ua": os.environ["ALTLAKE_USER_AGENT"]}, indent=2))
            """
        ),
    )
    summary = operator.execute(context={})
    assert summary["ua"] == "ua/test"
    assert summary["argv"] == wb.score_arguments(batch, ["--device", "cpu"])


def test_local_operator_failure_reports_exit_code_and_stderr_tail():
    operator = wb.LocalScoreOperator(
        task_id="score",
        batch=BATCH,
        worker_command=python_worker(
            """
            import sys
            for i in range(100):
                print(f"stderr line {i}", file=sys.stderr)
            sys.exit(3)
            """
        ),
    )
    with pytest.raises(wb.WorkerFailed) as failure:
        operator.execute(context={})
    message = str(failure.value)
    assert "exited with code 3 for batch b-00042" in message
    assert "stderr line 99" in message
    assert f"stderr line {99 - wb.STDERR_TAIL_LINES}\n" not in message  # only the tail


def test_local_operator_reports_a_worker_killed_by_a_signal():
    operator = wb.LocalScoreOperator(
        task_id="score",
        batch=BATCH,
        worker_command=python_worker("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
    )
    with pytest.raises(wb.WorkerFailed, match="was killed by SIGKILL"):
        operator.execute(context={})


DAG_FILE = '''
import json, os
from datetime import datetime

from airflow.sdk import dag, task

from altlake.config import Settings
from plugins.worker_backends import build_score_operator


@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def score_local():
    @task
    def plan() -> list[dict]:
        return json.loads(os.environ["TEST_BATCHES"])

    @task
    def collect(summaries) -> None:
        with open(os.environ["TEST_SUMMARIES"], "w") as out:
            json.dump(list(summaries), out)

    collect(build_score_operator(Settings.from_env(), plan(), pool="default_pool").output)


dag_object = score_local()

if __name__ == "__main__":
    run = dag_object.test()
    states = {f"{ti.task_id}[{ti.rendered_map_index or ti.map_index}]": str(ti.state) for ti in run.get_task_instances()}
    print("RESULT " + json.dumps({"state": str(run.state), "tasks": states}))
'''


def test_local_backend_in_a_real_airflow_run_scores_the_batch(settings: Settings, tmp_path: Path):
    """A real `dag.test()` of the mapped scoring task with the real worker and a local image server.

    One batch only: each worker start loads torch and the models, the slow part of this test."""
    from altlake_cli.image_server import ImageServer

    with ImageServer() as server:
        photos = [
            {"uid": "u1", "url": server.url("/gen/a.jpg?w=640&h=480"), "text": "a generated photo", "language": "en"},
            {"uid": "u2", "url": server.url("/status/404"), "text": "a missing photo", "language": "en"},
            {"uid": "u3", "url": server.url("/gen/b.png?w=320&h=240"), "text": "another photo", "language": "en"},
        ]
        batch = write_batch(settings, "b-0", photos)
        home = tmp_path / "airflow"
        (home / "dags").mkdir(parents=True)
        dag_path = home / "dags" / "score_local.py"
        dag_path.write_text(DAG_FILE)
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "ALTLAKE_LAKE_DIR": settings.lake_dir,
            "ALTLAKE_WORKER_BACKEND": "local",
            "ALTLAKE_WORKER_RETRIES": "0",
            "ALTLAKE_WORKER_ARGS": "--device cpu --allow-host 127.0.0.1",
            "TEST_BATCHES": json.dumps([batch]),
            "TEST_SUMMARIES": str(tmp_path / "summaries.json"),
        }
        airflow = str(Path(sys.executable).with_name("airflow"))
        subprocess.run([airflow, "db", "migrate"], env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
        run = subprocess.run([sys.executable, str(dag_path)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)

    result_lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    log_tail = (run.stdout + run.stderr)[-4000:]
    assert result_lines, f"dag.test printed no result; log tail:\n{log_tail}"
    result = json.loads(result_lines[-1].removeprefix("RESULT "))
    assert result["state"] == "success", (result, log_tail)
    assert result["tasks"]["score[b-0]"] == "success"  # rendered by map_index_template

    (summary,) = json.loads((tmp_path / "summaries.json").read_text())  # the task's XCom, fanned in
    assert summary["batch_id"] == "b-0"
    assert summary["statuses"] == {"ok": 2, "http_4xx": 1}
    results = pq.read_table(Path(batch["output_path"]) / "results.parquet")
    assert sorted(results.column("uid").to_pylist()) == ["u1", "u2", "u3"]
    assert (Path(batch["output_path"]) / "_SUCCESS").exists()


# --- AWS Batch: the exact submit_job request, through botocore's Stubber ------------------------------


class RecordingTaskInstance:
    """Only the XCom side of a task instance: BatchOperator pushes its console link there."""

    def __init__(self) -> None:
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcoms[key] = value


def test_aws_batch_operator_submits_one_gpu_job_per_batch(monkeypatch):
    from botocore.stub import Stubber

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = Settings.from_env(
        worker_backend="aws_batch",
        aws_batch_job_queue="altlake-gpu",
        aws_batch_job_definition="altlake-worker:7",
        aws_batch_conn_id="",  # boto3's default chain: no Airflow connection lookup in a unit test
        worker_args="--model ViT-L-14 --pretrained laion2b_s32b_b82k",
        worker_gpus=2,
        worker_cpus=6,
        worker_memory_gb=20,
        s3_endpoint="",
        lake_dir="s3a://lake",
    )
    operator_class, kwargs = wb.score_operator_kwargs(settings, pool="scoring")
    operator = operator_class(batch=BATCH, **kwargs)
    assert operator_class is wb.AwsBatchScoreOperator
    assert operator.deferrable is True

    expected_command = [  # after the image's ENTRYPOINT, the altlake CLI
        "score",
        "--input", BATCH["input_path"], "--output", BATCH["output_path"], "--batch-id", "b-00042",
        "--device", "cuda", "--model", "ViT-L-14", "--pretrained", "laion2b_s32b_b82k",
    ]  # fmt: skip
    expected_request = {
        "jobName": "altlake-score-b-00042",
        "jobQueue": "altlake-gpu",
        "jobDefinition": "altlake-worker:7",
        "parameters": {},
        "tags": {"altlake:batch_id": "b-00042"},
        "containerOverrides": {
            "command": expected_command,
            "environment": [
                {"name": "ALTLAKE_LAKE_DIR", "value": "s3a://lake"},
                {"name": "ALTLAKE_USER_AGENT", "value": settings.user_agent},
            ],
            "resourceRequirements": [
                {"type": "VCPU", "value": "6"},
                {"type": "MEMORY", "value": "20480"},
                {"type": "GPU", "value": "2"},
            ],
        },
        "retryStrategy": {
            "attempts": 3,
            "evaluateOnExit": [
                {"onStatusReason": "Host EC2*", "action": "RETRY"},
                {"onReason": "*", "action": "EXIT"},
            ],
        },
        "timeout": {"attemptDurationSeconds": int(wb.WORKER_TIMEOUT.total_seconds())},
    }
    ti = RecordingTaskInstance()
    with Stubber(operator.hook.client) as stubber:
        stubber.add_response(
            "submit_job",
            {"jobArn": "arn:aws:batch:us-east-1:123456789012:job/j-1", "jobName": "altlake-score-b-00042", "jobId": "j-1"},
            expected_request,
        )
        operator.submit_job({"ti": ti})
        stubber.assert_no_pending_responses()
    assert operator.job_id == "j-1"
    assert ti.xcoms["batch_job_details"]["job_id"] == "j-1"


def test_aws_batch_job_names_stay_within_batch_limits():
    long_batch = {**BATCH, "batch_id": "CC-MAIN-2024-10/part 7:" + "x" * 200}
    operator = wb.AwsBatchScoreOperator(
        task_id="score", batch=long_batch, job_queue="q", job_definition="d", aws_conn_id=None
    )
    assert len(operator.job_name) <= 128
    assert operator.job_name.startswith("altlake-score-cc-main-2024-10-part-7-x")
    assert set(operator.job_name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


# --- Kubernetes: the rendered pod ---------------------------------------------------------------------


def test_kubernetes_operator_renders_a_gpu_pod_for_the_batch():
    settings = Settings.from_env(
        worker_backend="kubernetes",
        worker_image="registry.example/altlake-worker:1.2",
        k8s_namespace="scoring",
        worker_args="--webdataset",
        s3_endpoint="http://minio.storage:9000",
        lake_dir="s3a://lake",
    )
    operator_class, kwargs = wb.score_operator_kwargs(settings, pool="scoring")
    operator = operator_class(batch=BATCH, **kwargs)
    assert operator_class is wb.KubernetesScoreOperator
    assert (operator.get_logs, operator.on_finish_action.value, operator.deferrable) == (True, "delete_pod", True)

    pod = operator.build_pod_request_obj(dry_run=True).to_dict()
    assert pod["metadata"]["namespace"] == "scoring"
    assert pod["metadata"]["name"].startswith("altlake-score-b-00042-")
    assert pod["metadata"]["labels"]["altlake/batch-id"] == "b-00042"
    assert pod["spec"]["restart_policy"] == "Never"
    assert pod["spec"]["active_deadline_seconds"] == wb.WORKER_TIMEOUT.total_seconds()
    assert pod["spec"]["tolerations"][0] == {
        "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule", "toleration_seconds": None, "value": None,
    }  # fmt: skip
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example/altlake-worker:1.2"
    assert not container["command"]  # the image's ENTRYPOINT, the altlake CLI, stays
    assert container["args"] == [
        "score", "--input", BATCH["input_path"], "--output", BATCH["output_path"], "--batch-id", "b-00042",
        "--device", "cuda", "--webdataset",
    ]  # fmt: skip
    assert container["resources"]["requests"] == {"cpu": "8", "memory": "24Gi"}
    assert container["resources"]["limits"] == {"memory": "24Gi", "nvidia.com/gpu": "1"}
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {
        "ALTLAKE_LAKE_DIR": "s3a://lake",
        "ALTLAKE_S3_ENDPOINT": "http://minio.storage:9000",
        "ALTLAKE_USER_AGENT": settings.user_agent,
    }


def test_kubernetes_cpu_only_pods_request_no_gpu():
    settings = Settings.from_env(worker_backend="kubernetes", worker_image="img:1", worker_gpus=0)
    operator_class, kwargs = wb.score_operator_kwargs(settings, pool="scoring")
    pod = operator_class(batch=BATCH, **kwargs).build_pod_request_obj(dry_run=True).to_dict()
    (container,) = pod["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert not pod["spec"]["tolerations"]
    assert container["args"][-2:] == ["--device", "cpu"]
