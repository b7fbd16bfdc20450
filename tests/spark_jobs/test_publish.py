"""Release store: immutable publishing to a local directory and to S3 (moto server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest

from altlake.config import Settings
from altlake.paths import derived_subset_file
from altlake.schemas import PAIRS
from altlake.storage import S3Options
from spark_jobs.publish import (
    MANIFEST,
    ReleaseExistsError,
    ReleaseStore,
    arrow_embeddings,
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


def test_arrow_embeddings_reads_the_value_buffer_as_the_bytes_would_read(tmp_path):
    import pyarrow as pa

    vectors = np.random.default_rng(4).standard_normal((7, 5)).astype("<f2")
    blobs = [row.tobytes() for row in vectors]
    for kind in (pa.binary(), pa.large_binary()):
        column = pa.chunked_array([pa.array(blobs[:3], kind), pa.array(blobs[3:], kind)])
        assert np.array_equal(arrow_embeddings(column), embeddings_array(blobs))
        assert np.array_equal(arrow_embeddings(pa.array(blobs, kind).slice(2, 4)), vectors[2:6])  # a slice starts past its buffer's start
    with pytest.raises(ValueError, match="1 of 3 embeddings are null"):
        arrow_embeddings(pa.array([blobs[0], None, blobs[1]], pa.binary()))
    with pytest.raises(ValueError, match="one even length"):
        arrow_embeddings(pa.array([blobs[0], blobs[1][:-2]], pa.binary()))
    with pytest.raises(TypeError, match="binary column"):
        arrow_embeddings(pa.array(["text"]))


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
    store = ReleaseStore("s3://releases/laion-like", S3Options(endpoint=moto_server))
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


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_files_added_beside_a_release_are_never_rewritten(tmp_path, kind, request):
    """Removals addenda and deprecation notices: written once, listed and read back, on either store."""
    if kind == "s3":
        endpoint = request.getfixturevalue("moto_server")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="addenda")
        store = ReleaseStore("s3a://addenda/releases", S3Options(endpoint=endpoint))
    else:
        store = ReleaseStore(str(tmp_path / "releases"))
    location = store.add_file("r1", "removals/removals-00001.parquet", b"first")
    assert location == store.file_url("r1", "removals/removals-00001.parquet")
    with pytest.raises(ReleaseExistsError, match="removals-00001.parquet already exists; release files are never rewritten"):
        store.add_file("r1", "removals/removals-00001.parquet", b"second")
    store.add_file("r1", "DEPRECATED.json", b"{}")
    assert store.list_files("r1", "removals/") == ["removals/removals-00001.parquet"]
    assert store.read_file("r1", "removals/removals-00001.parquet") == b"first"
    assert not store.exists("r1")  # files without a manifest are no release


def test_a_shard_collected_in_uid_pieces_writes_the_same_bytes(tmp_path, monkeypatch):
    """The driver collects a big shard in uid sub-ranges (its JVM never holds all of it); the files must be
    byte for byte those of a single collect, or rebuilds of earlier releases would stop matching."""
    from spark_jobs import publish
    from spark_jobs.session import get_spark

    settings = Settings.from_env(lake_dir=str(tmp_path / "lake"), spark_master="local[2]", spark_shuffle_partitions=2)
    spark = get_spark(settings, app_name="altlake-tests")
    rng = np.random.default_rng(9)
    rows = []
    for i in range(300):
        uid = hashlib.sha256(f"pair-{i}".encode()).hexdigest()[:32]
        vector = rng.standard_normal(8).astype("<f2").tobytes()
        rows.append((uid, f"https://a.org/{i}.jpg", f"https://a.org/{i}.jpg", f"caption {i}", ("en", "multi")[i % 2], ("en", "de")[i % 2],
                     256, 192, 640, 480, 0.3, 0.1, 0.2, 5.5, uid * 2, uid, uid * 2, None, "CC-MAIN-2024-10", None, vector, vector))  # fmt: skip
    pairs = spark.createDataFrame(rows, PAIRS.spark_ddl()).repartition(3)

    whole = publish.write_release_files(pairs, str(tmp_path / "whole"))
    assert publish.write_derived_subsets(pairs, str(tmp_path / "whole"), {"research": "true"}) == {"research": 300}
    monkeypatch.setattr(publish, "COLLECT_ROWS", 40)  # 150 rows a subset: 4 pieces each
    pieced = publish.write_release_files(pairs, str(tmp_path / "pieced"))
    publish.write_derived_subsets(pairs, str(tmp_path / "pieced"), {"research": "true"})
    assert pieced == whole == {"en": 150, "multi": 150, "nolang": 0}
    assert file_checksums(str(tmp_path / "pieced")) == file_checksums(str(tmp_path / "whole"))
    # every derived subset from one pass: the bytes of each written alone, whatever their shard counts
    filters = {"research": "true", "en": "language = 'en'", "wide": "width >= 256", "none": "width > 10000", "third": "punsafe < 0.2 AND uid < '5'"}
    together = publish.write_derived_subsets(pairs, str(tmp_path / "together"), filters, rows_per_file=70)
    assert {k: v for k, v in together.items() if k != "third"} == {"research": 300, "en": 150, "wide": 300, "none": 0} and 50 < together["third"] < 150
    for name, condition in filters.items():
        alone = tmp_path / f"alone-{name}"
        assert publish.write_derived_subsets(pairs, str(alone), {name: condition}, rows_per_file=70) == {name: together[name]}
        assert file_checksums(str(alone)) == {k: v for k, v in file_checksums(str(tmp_path / "together")).items() if name in k}
    research = pq.ParquetFile(tmp_path / "together" / derived_subset_file("research"))
    assert research.metadata.num_row_groups >= 5 and research.read().column("uid").to_pylist() == sorted(r[0] for r in rows)
    table = publish.collect_by_uid(pairs, 300)
    assert table.column("uid").to_pylist() == sorted(r[0] for r in rows) == publish.collect_by_uid(pairs, 300, 0, publish.UID_SPACE).column("uid").to_pylist()
