"""Scale-out: the same extraction submitted to a real Spark standalone cluster on 127.0.0.1.

A master and one worker are started from pyspark's own jars, `spark-submit spark_jobs/extract.py`
runs against them, and the tables it writes must equal a local-mode run's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest

from bench.pipeline.cluster import SPARK_HOME, standalone_cluster
from spark_jobs.extract import run_extract
from spark_jobs.session import spark_jars
from spark_jobs.watgen import generate_wat

REPO = Path(__file__).resolve().parents[2]
TIMING = ("started_at", "finished_at", "duration_s", "ingested_at")


@pytest.fixture
def cluster(tmp_path):
    """A standalone master + worker (bench/pipeline/cluster.py); yields the master URL and the
    environment that reaches it, and stops both daemons afterwards."""
    with standalone_cluster(tmp_path / "cluster", cores=2, executor_memory="1g") as running:
        yield running.url, running.env


def _rows(spark, lake: str, table: str) -> list[dict]:
    rows = spark.read.format("delta").load(f"{lake}/tables/{table}").collect()
    return sorted((({k: v for k, v in r.asDict().items() if k not in TIMING}) for r in rows), key=_sort_key)


def _sort_key(row: dict) -> bytes:
    return orjson.dumps(row, default=lambda v: bytes(v).hex() if isinstance(v, (bytes, bytearray)) else str(v))


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


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_extraction_to_an_s3a_lake_through_the_cluster_equals_a_local_disk_run(moto_server, cluster, s3a_spark, settings, sample_wat, tmp_path):
    """The lake on object storage (moto's S3), written by the cluster's executors, its commits claimed
    in DynamoDB (moto's too): the candidates equal those of a local-mode run on local disk."""
    import boto3

    master, env = cluster
    bucket, log_table = "cluster-lake", "altlake_cluster_delta_log"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    lake = f"s3a://{bucket}/lake"
    credentials = {name: os.environ[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    submit_env = {
        **env, **credentials,
        "ALTLAKE_S3_ENDPOINT": moto_server, "ALTLAKE_DYNAMODB_LOG_TABLE": log_table, "ALTLAKE_DYNAMODB_ENDPOINT": moto_server,
        "ALTLAKE_METASTORE_URL": f"jdbc:derby:;databaseName={tmp_path / 'metastore_db'};create=true",
    }
    executor_env = [arg for name, value in credentials.items() for arg in ("--conf", f"spark.executorEnv.{name}={value}")]
    submit = [
        str(SPARK_HOME / "bin" / "spark-submit"), "--master", master, "--jars", ",".join(spark_jars(settings)),
        "--conf", "spark.executor.memory=1g", *executor_env, str(REPO / "spark_jobs" / "extract.py"),
        "--crawl", "CC-MAIN-2031-01", "--lake", lake, "--wat", str(sample_wat),
    ]
    done = subprocess.run(submit, env=submit_env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = orjson.loads(done.stdout)
    assert summary["totals"]["done"] == 1 and summary["totals"]["new_candidates"] > 0

    local = run_extract(settings, "CC-MAIN-2031-01", [str(sample_wat)], spark=s3a_spark)
    assert local["totals"]["new_candidates"] == summary["totals"]["new_candidates"]
    on_s3 = _rows(s3a_spark, lake, "candidates")
    assert len(on_s3) == summary["totals"]["new_candidates"]
    assert on_s3 == _rows(s3a_spark, settings.lake_dir, "candidates")

    claims = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1").query(
        TableName=log_table, KeyConditionExpression="tablePath = :t", ExpressionAttributeValues={":t": {"S": f"{lake}/tables/candidates"}}
    )["Items"]
    assert claims and all(item["complete"]["S"] == "true" for item in claims)


@pytest.mark.integration
def test_a_release_built_through_the_cluster_from_an_s3a_lake_equals_a_local_disk_release(moto_server, cluster, s3a_spark, settings, tmp_path):
    """The same scored pairs in a lake on S3 (moto) and on local disk: `spark-submit spark_jobs/release.py`
    on the cluster, publishing to an s3:// store, cuts the release a local run cuts: same id, same
    pairs, same stages and counts, the same files, the data byte for byte (manifest checksums)."""
    import boto3
    import numpy as np

    from altlake.storage import S3Options, read_bytes
    from spark_jobs.release import build_release
    from spark_jobs.session import ensure_tables
    from tests.spark_jobs.lakegen import add_candidates, add_scores, candidate, random_unit, result, score_row

    master, env = cluster
    bucket = "cluster-release"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    s3_settings = settings.with_(lake_dir=f"s3a://{bucket}/lake", s3_endpoint=moto_server, release_store=f"s3://{bucket}/releases")
    rng = np.random.default_rng(11)
    rows = [candidate(f"https://img{i % 7}.example.org/{i}.jpg", f"a photo of thing number {i}", "en" if i % 3 else "de") for i in range(60)]
    scored = [
        score_row(result(r["uid"], r["url"], "ok" if i % 9 else "timeout", similarity=0.2 + (i % 10) * 0.02, seed=i), random_unit(rng), random_unit(rng))
        for i, r in enumerate(rows)
    ]
    scored = [{**s, "img_emb": None, "text_emb": None} if s["status"] != "ok" else s for s in scored]
    for lake_settings in (settings, s3_settings):  # the same rows in both lakes
        ensure_tables(s3a_spark, lake_settings)
        add_candidates(s3a_spark, lake_settings, rows)
        add_scores(s3a_spark, lake_settings, scored)

    credentials = {name: os.environ[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    submit_env = {
        **env, **credentials, "ALTLAKE_S3_ENDPOINT": moto_server, "ALTLAKE_SPARK_SHUFFLE_PARTITIONS": "2",
        "ALTLAKE_METASTORE_URL": f"jdbc:derby:;databaseName={tmp_path / 'metastore_db'};create=true",
    }
    executor_env = [arg for name, value in credentials.items() for arg in ("--conf", f"spark.executorEnv.{name}={value}")]
    submit = [
        str(SPARK_HOME / "bin" / "spark-submit"), "--master", master, "--jars", ",".join(spark_jars(settings)),
        "--conf", "spark.executor.memory=1g", *executor_env, str(REPO / "spark_jobs" / "release.py"),
        "--lake", s3_settings.lake_dir, "--store", s3_settings.release_store, "--date", "20310101", "--no-index",
    ]  # fmt: skip
    done = subprocess.run(submit, env=submit_env, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + "\n".join(line for line in done.stderr.splitlines() if " INFO " not in line)[-3000:]
    on_cluster = orjson.loads(done.stdout[done.stdout.index("{"):])

    local = build_release(s3a_spark, settings, date="20310101", index=False)
    assert on_cluster["release_id"] == local["release_id"]
    assert _rows(s3a_spark, s3_settings.lake_dir, "pairs") == _rows(s3a_spark, settings.lake_dir, "pairs")
    assert 0 < len(_rows(s3a_spark, settings.lake_dir, "pairs")) < len(rows)
    remote = orjson.loads(read_bytes(f"{s3_settings.release_store}/{local['release_id']}/manifest.json", S3Options.of(s3_settings)))
    mine = orjson.loads((Path(settings.release_dir) / local["release_id"] / "manifest.json").read_bytes())
    for key in ("counts", "stages", "thresholds"):
        assert remote[key] == mine[key], key
    # The same files, the data byte for byte (the report and the GX pages, named by time, carry the times they were made).
    assert {n for n in remote["files"] if not n.startswith("gx/")} == {n for n in mine["files"] if not n.startswith("gx/")}
    data = {name for name in mine["files"] if name.endswith((".parquet", ".npy"))}
    assert data and all(remote["files"][name] == mine["files"][name] for name in data)
