"""Several writers on an s3a lake (issue #16): Delta commits arbitrated by DynamoDB, on moto's S3 and DynamoDB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from altlake.config import Settings
from spark_jobs.session import LOG_STORE_CLASS, spark_conf

WRITER = Path(__file__).with_name("log_store_writer.py")


def test_the_log_store_is_configured_only_for_an_s3a_lake_with_a_log_table(tmp_path):
    on = Settings(lake_dir="s3a://b/lake", dynamodb_log_table="commits", dynamodb_endpoint="http://127.0.0.1:5000")
    conf = spark_conf(on, "t")
    assert conf["spark.delta.logStore.s3a.impl"] == LOG_STORE_CLASS
    assert conf["spark.hadoop.altlake.dynamodb.table"] == "commits"
    assert conf["spark.hadoop.altlake.dynamodb.endpoint"] == "http://127.0.0.1:5000"
    assert "altlake-logstore" in conf["spark.driver.extraClassPath"]
    assert "spark.delta.logStore.s3a.impl" not in spark_conf(on.with_(dynamodb_log_table=""), "t")
    assert "spark.delta.logStore.s3a.impl" not in spark_conf(on.with_(lake_dir=str(tmp_path / "lake")), "t")


def test_a_log_table_without_the_log_store_jar_is_refused_in_one_line(tmp_path):
    jars = tmp_path / "cache" / "jars"
    jars.mkdir(parents=True)
    (jars / "delta-spark_2.13-4.0.0.jar").touch()
    settings = Settings(lake_dir="s3a://b/lake", dynamodb_log_table="commits", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="log store jar is missing.*make setup"):
        spark_conf(settings, "t")


def _log_store(spark, endpoint: str, log_table: str):
    """The log store as Delta makes it: one instance per table, from the session's Hadoop configuration."""
    conf = spark._jvm.org.apache.hadoop.conf.Configuration(spark.sparkContext._jsc.hadoopConfiguration())
    conf.set("altlake.dynamodb.table", log_table)
    conf.set("altlake.dynamodb.endpoint", endpoint)
    return spark._jvm.dev.altlake.delta.DynamoDBLogStore(conf), conf


def _lines(spark, *lines: str):
    array = spark._jvm.java.util.ArrayList()
    for line in lines:
        array.add(line)
    return array.iterator()


def test_a_commit_another_writer_claimed_is_refused_and_not_written(moto_server, s3a_spark):
    """The claim in DynamoDB, not S3, decides: while another writer holds commit 1 (claimed, not yet
    copied to S3) a second writer of commit 1 fails as Delta expects, so Delta retries it as commit 2."""
    from py4j.protocol import Py4JJavaError

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="claims")
    store, conf = _log_store(s3a_spark, moto_server, "altlake_claims")
    assert dynamodb.describe_time_to_live(TableName="altlake_claims")["TimeToLiveDescription"]["AttributeName"] == "expireTime"
    log = "s3a://claims/t/_delta_log"
    path = s3a_spark._jvm.org.apache.hadoop.fs.Path
    store.write(path(f"{log}/{0:020d}.json"), _lines(s3a_spark, '{"commitInfo":{}}'), False, conf)
    dynamodb.put_item(TableName="altlake_claims", Item={
        "tablePath": {"S": "s3a://claims/t"}, "fileName": {"S": f"{1:020d}.json"},
        "tempPath": {"S": ".tmp/other-writer"}, "complete": {"S": "false"},
    })
    with pytest.raises(Py4JJavaError, match="java.nio.file.FileAlreadyExistsException"):
        store.write(path(f"{log}/{1:020d}.json"), _lines(s3a_spark, '{"mine":1}'), False, conf)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="claims", Prefix="t/_delta_log/")["Contents"]}
    assert f"t/_delta_log/{0:020d}.json" in keys and f"t/_delta_log/{1:020d}.json" not in keys
    zero = dynamodb.get_item(TableName="altlake_claims", Key={"tablePath": {"S": "s3a://claims/t"}, "fileName": {"S": f"{0:020d}.json"}})
    assert zero["Item"]["complete"]["S"] == "true"


def test_a_commit_whose_writer_died_after_claiming_it_is_finished_by_the_next_reader(moto_server, s3a_spark):
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="recover")
    store, conf = _log_store(s3a_spark, moto_server, "altlake_recover")
    s3.put_object(Bucket="recover", Key="t/_delta_log/.tmp/staged", Body=b'{"commitInfo":{"dead":true}}\n')
    dynamodb.put_item(TableName="altlake_recover", Item={
        "tablePath": {"S": "s3a://recover/t"}, "fileName": {"S": f"{0:020d}.json"},
        "tempPath": {"S": ".tmp/staged"}, "complete": {"S": "false"},
    })
    listed = store.listFrom(s3a_spark._jvm.org.apache.hadoop.fs.Path(f"s3a://recover/t/_delta_log/{0:020d}.json"), conf)
    names = []
    while listed.hasNext():
        names.append(listed.next().getPath().getName())
    assert names == [f"{0:020d}.json"]
    assert s3.get_object(Bucket="recover", Key=f"t/_delta_log/{0:020d}.json")["Body"].read() == b'{"commitInfo":{"dead":true}}\n'
    claim = dynamodb.get_item(TableName="altlake_recover", Key={"tablePath": {"S": "s3a://recover/t"}, "fileName": {"S": f"{0:020d}.json"}})
    assert claim["Item"]["complete"]["S"] == "true" and int(claim["Item"]["expireTime"]["N"]) > 0


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_two_jobs_committing_to_one_table_at_once_keep_every_commit(moto_server, s3a_spark, tmp_path):
    """Two Spark processes append to the same Delta table on moto S3 at the same moment, each commit
    claimed in DynamoDB: no commit is lost, the history has no gap and DynamoDB holds every claim."""
    writers, commits, rows = 2, 6, 3
    bucket, log_table = "concurrent-lake", "altlake_delta_log"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    table = f"s3a://{bucket}/lake/tables/concurrent"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    base = {k: v for k, v in os.environ.items() if k != "PYSPARK_GATEWAY_PORT"}
    base.update(
        ALTLAKE_LAKE_DIR=f"s3a://{bucket}/lake", ALTLAKE_S3_ENDPOINT=moto_server,
        ALTLAKE_DYNAMODB_LOG_TABLE=log_table, ALTLAKE_DYNAMODB_ENDPOINT=moto_server,
    )
    processes = []
    for writer in range(writers):
        env = {**base, "ALTLAKE_METASTORE_URL": f"jdbc:derby:;databaseName={tmp_path / f'metastore-{writer}'};create=true"}
        args = [sys.executable, str(WRITER), table, str(writer), str(writers), str(commits), str(rows), str(barrier)]
        processes.append(subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=1200) for process in processes]
    for writer, (process, (out, err)) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"writer {writer}: {err[-3000:]}"
        assert f"WRITER {writer} DONE {commits}" in out

    spark = s3a_spark
    from delta.tables import DeltaTable

    got = sorted(tuple(r) for r in spark.read.format("delta").load(table).collect())
    assert got == sorted((w, c, r) for w in range(writers) for c in range(commits) for r in range(rows))
    history = sorted((h["version"], h["userMetadata"]) for h in DeltaTable.forPath(spark, table).history().collect())
    assert [v for v, _ in history] == list(range(writers * commits + 1))  # no version missing
    order = [meta for _, meta in history[1:]]
    assert sum(a != b for a, b in zip(order, order[1:])) >= 2, f"the writers did not overlap: {order}"

    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1")
    items = dynamodb.query(
        TableName=log_table, KeyConditionExpression="tablePath = :t", ExpressionAttributeValues={":t": {"S": table}}, ConsistentRead=True
    )["Items"]
    claimed = {i["fileName"]["S"] for i in items if i["complete"]["S"] == "true" and "expireTime" in i}
    assert {f"{v:020d}.json" for v in range(writers * commits + 1)} <= claimed

