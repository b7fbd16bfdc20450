"""The release tasks' S3 store options come from the Airflow connection: its keys and its endpoint_url."""

from __future__ import annotations

import json
import uuid

import boto3

from altlake.config import Settings
from plugins.release import store_options
from spark_jobs.publish import ReleaseStore


def test_store_options_come_from_the_airflow_connection(moto_server, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_ALTLAKE_RELEASES",
        json.dumps({"conn_type": "aws", "login": "conn-key", "password": "conn-secret",
                    "extra": {"endpoint_url": moto_server, "region_name": "eu-west-1"}}),
    )  # fmt: skip
    bucket = f"releases-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    settings = Settings(release_store=f"s3://{bucket}/laion", s3_endpoint="http://127.0.0.1:1")  # the connection's endpoint wins

    options = store_options(settings, "altlake_releases")
    assert (options.endpoint, options.region) == (moto_server, "eu-west-1")
    assert (options.credentials.access_key, options.credentials.secret_key) == ("conn-key", "conn-secret")
    store = ReleaseStore(settings.release_dir, options)
    store.add_file("r1", "DEPRECATED.json", b"{}")  # reaches the moto server through those options
    body = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").get_object(Bucket=bucket, Key="laion/r1/DEPRECATED.json")["Body"]
    assert body.read() == b"{}"

    assert store_options(Settings(release_store="/data/releases"), "altlake_releases") is None  # a local store needs none
