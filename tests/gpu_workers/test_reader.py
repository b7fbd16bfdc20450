"""The reader turns a batch parquet into unique, uid-sorted rows, or refuses it with a reason."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from altlake.paths import LakePaths
from gpu_workers.reader import BatchInputError, default_batch_id, read_batch


def _uid(url: str, text: str) -> str:
    return hashlib.sha256(f"{url}\n{text}".encode()).hexdigest()[:32]


def _write(path, records: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return str(path)


def test_collapses_duplicates_sorts_by_uid_and_ignores_extra_columns(tmp_path):
    pairs = [(f"http://img.example/{i}.jpg", f"picture number {i}") for i in range(6)]
    records = [
        {"uid": _uid(u, t), "url": u, "text": t, "language": "en", "page_url": "http://page.example/", "extra": i}
        for i, (u, t) in enumerate(pairs)
    ]
    duplicate = dict(records[2], text="a later copy with the same uid")
    path = _write(tmp_path / "b.parquet", [*reversed(records), duplicate])

    batch = read_batch(path)

    assert batch.input_rows == 7 and batch.duplicate_rows == 1
    assert [row.uid for row in batch.rows] == sorted(r["uid"] for r in records)
    kept = {row.uid: row for row in batch.rows}[records[2]["uid"]]
    assert kept.text == records[2]["text"]  # the first occurrence wins
    assert batch.batch_id == "b"


def test_rows_missing_url_or_language_are_kept_for_a_recorded_failure(tmp_path):
    path = _write(
        tmp_path / "b.parquet",
        [
            {"uid": "a1", "url": None, "text": "no url here", "language": None},
            {"uid": "b2", "url": "http://x.example/y.png", "text": None, "language": "de"},
        ],
    )
    rows = read_batch(path).rows
    assert [(r.uid, r.url, r.text, r.language) for r in rows] == [
        ("a1", "", "no url here", "nolang"),
        ("b2", "http://x.example/y.png", "", "de"),
    ]


def test_missing_columns_are_named(tmp_path):
    path = _write(tmp_path / "b.parquet", [{"uid": "a", "url": "http://x.example/a.jpg"}])
    with pytest.raises(BatchInputError, match=r"\['text', 'language'\]"):
        read_batch(path)


def test_rows_without_uid_are_refused_not_dropped(tmp_path):
    path = _write(
        tmp_path / "b.parquet",
        [
            {"uid": "a", "url": "http://x.example/a.jpg", "text": "t", "language": "en"},
            {"uid": None, "url": "http://x.example/b.jpg", "text": "t", "language": "en"},
        ],
    )
    with pytest.raises(BatchInputError, match=r"1 row\(s\) have no uid.*\[1\]"):
        read_batch(path)


def test_not_a_parquet_and_missing_file_get_clear_errors(tmp_path):
    bogus = tmp_path / "b.parquet"
    bogus.write_text("uid,url\n")
    with pytest.raises(BatchInputError, match="not a parquet file"):
        read_batch(str(bogus))
    with pytest.raises(BatchInputError, match="not found"):
        read_batch(str(tmp_path / "absent.parquet"))


def test_batch_id_follows_the_lake_layout():
    assert default_batch_id(LakePaths("s3://bucket/lake").batch_input("b-0007")) == "b-0007"
    assert default_batch_id("/data/part-3.parquet") == "part-3"


def test_a_damaged_withdrawn_list_stops_the_batch_with_its_path(tmp_path):
    """withdrawn.parquet (spark_jobs.batches.withdraw_opted_out writes it; the extraction test reads
    it back through this reader) must be readable: guessing would download opted-out images."""
    path = _write(tmp_path / "batches/b1/input.parquet", [{"uid": "u1", "url": "http://x.example/a.jpg", "text": "t", "language": "en"}])
    assert read_batch(path).rows[0].withdrawn is None  # no list: nothing withdrawn
    (tmp_path / "batches/b1/withdrawn.parquet").write_bytes(b"half a parquet")
    with pytest.raises(BatchInputError, match="withdrawn.parquet is not a list of withdrawn uids"):
        read_batch(path)
