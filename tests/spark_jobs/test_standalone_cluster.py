"""Scale-out: the same extraction submitted to a real Spark standalone cluster on 127.0.0.1.

A master and one worker are started from pyspark's own jars, `spark-submit spark_jobs/extract.py`
runs against them, and the tables it writes must equal a local-mode run's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pyspark
import pytest

from spark_jobs.extract import run_extract
from spark_jobs.session import spark_jars
from spark_jobs.watgen import generate_wat

REPO = Path(__file__).resolve().parents[2]
SPARK_HOME = Path(pyspark.__file__).parent
TIMING = ("started_at", "finished_at", "duration_s", "ingested_at")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, deadline_s: float = 180) -> None:
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def cluster(tmp_path):
    """A standalone master + worker; yields the master URL and stops both processes afterwards."""
    port = _free_port()
    java = ["java", "-Xmx512m", "-cp", f"{SPARK_HOME / 'jars'}/*"]
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    logs = tmp_path / "cluster-logs"
    logs.mkdir()
    master = subprocess.Popen(
        [*java, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(_free_port())],
        env=env, stdout=open(logs / "master.log", "wb"), stderr=subprocess.STDOUT,
    )
    worker = None
    try:
        _wait_for_port(port)
        worker = subprocess.Popen(
            [*java, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host", "127.0.0.1",
             "--cores", "2", "--memory", "2g", "--webui-port", str(_free_port()), "--work-dir", str(tmp_path / "work")],
            env=env, stdout=open(logs / "worker.log", "wb"), stderr=subprocess.STDOUT,
        )
        yield f"spark://127.0.0.1:{port}", env
    finally:
        for process in (worker, master):
            if process is not None:
                process.terminate()
                process.wait(timeout=60)


def _rows(spark, lake: str, table: str) -> list[dict]:
    rows = spark.read.format("delta").load(f"{lake}/tables/{table}").collect()
    return sorted((({k: v for k, v in r.asDict().items() if k not in TIMING}) for r in rows), key=orjson.dumps)


def test_spark_submit_to_a_standalone_cluster_equals_local_mode(cluster, spark, settings, sample_wat, tmp_path):
    master, env = cluster
    wats = [str(sample_wat)] + [
        str(generate_wat(tmp_path / f"c{i}.warc.wat.gz", 25, gzip=True, seed=60 + i).path) for i in range(2)
    ]
    cluster_lake = str(tmp_path / "cluster-lake")
    submit = [
        str(SPARK_HOME / "bin" / "spark-submit"), "--master", master, "--jars", ",".join(spark_jars(settings)),
        "--conf", "spark.executor.memory=1g", str(REPO / "spark_jobs" / "extract.py"),
        "--crawl", "CC-MAIN-2031-01", "--lake", cluster_lake, "--wat", *wats,
    ]
    done = subprocess.run(submit, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = orjson.loads(done.stdout)
    assert summary["totals"]["done"] == 3 and summary["totals"]["new_candidates"] > 0

    local = run_extract(settings, "CC-MAIN-2031-01", wats, spark=spark)
    assert local["totals"]["new_candidates"] == summary["totals"]["new_candidates"]
    for table in ("candidates", "crawl_files"):
        assert _rows(spark, cluster_lake, table) == _rows(spark, settings.lake_dir, table)
