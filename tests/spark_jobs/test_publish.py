"""Release store: immutable publishing to a local directory and to S3 (moto server on 127.0.0.1)."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest

from spark_jobs.publish import (
    MANIFEST,
    ReleaseExistsError,
    ReleaseStore,
    data_files,
    embeddings_array,
    file_checksums,
    manifest_bytes,
    release_id_for,
)


def _stage(root) -> str:
    (root / "parquet" / "en").mkdir(parents=True)
    (root / "parquet" / "en" / "part-00000.parquet").write_bytes(b"rows")
    (root / "embeddings" / "en" / "img_emb").mkdir(parents=True)
    (root / "embeddings" / "en" / "img_emb" / "img_emb_0.npy").write_bytes(b"vectors")
    (root / "report.html").write_text("<html></html>")
    return str(root)


def test_release_id_is_dated_and_changes_with_the_inputs():
    inputs = {"sources": {"candidates": 3, "scores": 5, "takedowns": 0}, "thresholds": {"en": 0.28}}
    rid = release_id_for("20240501", inputs)
    assert rid.startswith("20240501-") and len(rid) == len("20240501-") + 10
    assert release_id_for("20240501", dict(reversed(list(inputs.items())))) == rid
    assert release_id_for("20240501", {**inputs, "sources": {**inputs["sources"], "scores": 6}}) != rid


def test_checksums_and_embeddings_array(tmp_path):
    staged = _stage(tmp_path / "s")
    inventory = file_checksums(staged)
    assert inventory["parquet/en/part-00000.parquet"]["bytes"] == 4
    assert set(data_files(inventory)) == {"parquet/en/part-00000.parquet", "embeddings/en/img_emb/img_emb_0.npy"}
    vectors = np.arange(6, dtype=np.float16).reshape(2, 3)
    assert np.array_equal(embeddings_array([row.astype("<f2").tobytes() for row in vectors]), vectors)


def test_local_store_publishes_atomically_and_refuses_overwrite(tmp_path):
    store = ReleaseStore(str(tmp_path / "releases"))
    (tmp_path / "releases").mkdir()
    staged = _stage(tmp_path / "releases" / ".staging-r1")
    location = store.publish(staged, "r1", manifest_bytes({"release_id": "r1"}))
    assert location == str(tmp_path / "releases" / "r1")
    assert store.exists("r1") and store.read_manifest("r1") == {"release_id": "r1"}
    assert (tmp_path / "releases" / "r1" / "parquet" / "en" / "part-00000.parquet").read_bytes() == b"rows"
    with pytest.raises(ReleaseExistsError, match="immutable"):
        store.publish(_stage(tmp_path / "again"), "r1", manifest_bytes({"release_id": "other"}))
    assert store.read_manifest("r1") == {"release_id": "r1"}


def test_s3_store_uploads_every_file_and_refuses_overwrite(tmp_path, moto_server):
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket="releases")
    store = ReleaseStore("s3://releases/laion-like", client=client)
    assert not store.exists("r1")
    # Files of a publish that crashed before its manifest do not make a release.
    client.put_object(Bucket="releases", Key="laion-like/r1/parquet/en/part-00000.parquet", Body=b"torn")
    assert not store.exists("r1")

    staged = _stage(tmp_path / "s")
    expected = file_checksums(staged)
    store.publish(staged, "r1", manifest_bytes({"release_id": "r1", "files": expected}))
    listed = client.list_objects_v2(Bucket="releases", Prefix="laion-like/r1/")["Contents"]
    keys = {o["Key"].removeprefix("laion-like/r1/") for o in listed}
    assert keys == set(expected) | {MANIFEST}
    body = client.get_object(Bucket="releases", Key="laion-like/r1/parquet/en/part-00000.parquet")["Body"].read()
    assert body == b"rows"
    assert store.read_manifest("r1")["files"] == json.loads(json.dumps(expected))
    with pytest.raises(ReleaseExistsError):
        store.publish(_stage(tmp_path / "s2"), "r1", manifest_bytes({"release_id": "r1"}))
