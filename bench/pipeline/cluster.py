"""A Spark standalone cluster on 127.0.0.1: a master and one worker, started from pyspark's own jars.

It runs the pipeline's stages the way a team's cluster runs them: the driver in the stage's own
process, the executors in JVMs of their own that the worker starts per application. The stage's
commands find it through ALTLAKE_SPARK_MASTER and read the executors' settings from the
`spark-defaults.conf` of SPARK_CONF_DIR, as spark-submit does on any cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyspark

from bench.processes import free_port, stop

SPARK_HOME = Path(pyspark.__file__).parent
DAEMON_HEAP = "512m"  # the master's and the worker's own JVMs: bookkeeping only


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its master URL, the worker's pid (the executors are its children), what each
    application's executor gets, the environment a driver needs to reach it, and where the daemons log."""

    url: str
    worker_pid: int
    cores: int
    executor_memory: str
    env: dict[str, str]
    logs: Path


def wait_for_port(port: int, process: subprocess.Popen, log: Path, deadline_s: float = 180) -> None:
    """Until something listens on the port; a daemon that exits first fails with its log's tail."""
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        if process.poll() is not None:
            raise RuntimeError(f"the Spark daemon exited ({process.returncode}) before listening on {port}: {log.read_text(errors='replace')[-1500:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {deadline_s:.0f} s; see {log}")


@contextmanager
def standalone_cluster(folder: Path, cores: int, executor_memory: str) -> Iterator[Cluster]:
    """Start a master and one worker lending `cores` and `executor_memory`: every application gets one
    executor of that size, with every core. Both daemons are stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    logs, conf = folder / "logs", folder / "conf"
    logs.mkdir(exist_ok=True)
    conf.mkdir(exist_ok=True)
    (conf / "spark-defaults.conf").write_text(f"spark.executor.memory {executor_memory}\nspark.executor.cores {cores}\n")
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_CONF_DIR": str(conf), "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": DAEMON_HEAP}  # fmt: skip
    # spark-class, as Spark's own start scripts use it: its environment (load-spark-env.sh) is what the
    # worker needs to build each executor's command line
    spark_class = [str(SPARK_HOME / "bin" / "spark-class")]
    port = free_port()
    started: list[subprocess.Popen] = []
    try:
        master_log = logs / "master.log"
        started.append(subprocess.Popen(
            [*spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port())],
            env=env, stdout=open(master_log, "ab"), stderr=subprocess.STDOUT,
        ))  # fmt: skip
        wait_for_port(port, started[0], master_log)
        worker_port, worker_log = free_port(), logs / "worker.log"
        started.append(subprocess.Popen(
            [*spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host", "127.0.0.1", "--port", str(worker_port),
             "--cores", str(cores), "--memory", executor_memory, "--webui-port", str(free_port()), "--work-dir", str(folder / "work")],
            env=env, stdout=open(worker_log, "ab"), stderr=subprocess.STDOUT,
        ))  # fmt: skip
        wait_for_port(worker_port, started[1], worker_log)
        yield Cluster(url=f"spark://127.0.0.1:{port}", worker_pid=started[1].pid, cores=cores, executor_memory=executor_memory, env=env, logs=logs)
    finally:
        for process in reversed(started):
            stop(process, grace_s=60)
