"""The command line against mistakes a user makes: every case ends in one clear line on stderr and a
non-zero exit, never a traceback, and a command that reads a lake never creates one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from altlake_cli.main import main


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "garbage.txt").write_text("zzz\nnot a digest either\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00garbage")
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "flat.png")  # no picture to recognise
    pq.write_table(pa.table({"uid": ["a"], "url": ["http://x.example/a.jpg"], "text": ["t"], "language": ["en"]}), tmp_path / "batch.parquet")
    return tmp_path


CASES = {  # name -> (argv with {tmp} for the test's folder, words of the one-line message)
    "serve an unknown release": (["serve", "--release", "nosuch"], "no release 'nosuch'"),
    "index an unknown release": (["index", "--release", "nosuch"], "no release 'nosuch'"),
    "subset of an unknown release": (["subset", "--release", "nosuch", "--query", "x", "--out", "{tmp}/o"], "no release 'nosuch'"),
    "a missing hash list": (["takedown", "add", "--kind", "sha256", "--hash-list", "{tmp}/none.txt", "--reason", "r", "--lake", "{tmp}/lake"], "No such file"),
    "a hash list of garbage": (["takedown", "add", "--kind", "sha256", "--hash-list", "{tmp}/garbage.txt", "--reason", "r", "--lake", "{tmp}/lake"], "invalid entries"),
    "a binary hash list": (["takedown", "add", "--kind", "md5", "--hash-list", "{tmp}/binary.txt", "--reason", "r", "--lake", "{tmp}/lake"], "can't decode"),
    "a takedown image that is no image": (["takedown", "add", "--kind", "pdq", "--image", "{tmp}/garbage.txt", "--reason", "r", "--lake", "{tmp}/lake"], "not an image"),
    "a flat takedown image for pdq": (["takedown", "add", "--kind", "pdq", "--image", "{tmp}/flat.png", "--reason", "r", "--lake", "{tmp}/lake"], "take it down by --kind sha256"),
    "a pdq distance out of range": (["takedown", "add", "--kind", "pdq", "--value", "a" * 64, "--max-distance", "300", "--reason", "r", "--lake", "{tmp}/lake"], "not between 0 and 128"),
    "a distance on a sha256 request": (["takedown", "add", "--kind", "sha256", "--value", "a" * 64, "--max-distance", "3", "--reason", "r", "--lake", "{tmp}/lake"], "only applies to pdq"),
    "rebuild an unknown release": (["build-release", "--rebuild", "nosuch", "--out", "{tmp}/o", "--lake", "{tmp}/lake"], "no lake at"),
    "score a folder": (["score", "--input", "{tmp}", "--output", "{tmp}/out"], "not a readable file"),
    "score into a file": (["score", "--input", "{tmp}/batch.parquet", "--output", "{tmp}/a-file/out"], "Not a directory"),
    "zero downloads in flight": (["score", "--input", "{tmp}/batch.parquet", "--output", "{tmp}/o", "--max-in-flight", "0"], "must be at least 1"),
    "zero decode workers": (["score", "--input", "{tmp}/batch.parquet", "--output", "{tmp}/o", "--decode-workers", "0"], "must be at least 1"),
    "zero batch size": (["score", "--input", "{tmp}/batch.parquet", "--output", "{tmp}/o", "--batch-size", "0"], "must be at least 1"),
    "sql on a mistyped lake": (["sql", "SELECT 1", "--lake", "{tmp}/typo"], "no lake at"),
    "takedowns applied to a mistyped lake": (["takedown", "apply", "--lake", "{tmp}/typo"], "no lake at"),
    "extract a malformed crawl id": (["extract", "--crawl", "CC-MAIN-2024-1", "--wat", "{tmp}/none.wat.gz", "--lake", "{tmp}/typo"], "is not a Common Crawl id"),
    "plan batches of a malformed crawl id": (["plan-batches", "--crawl", "2024-10", "--lake", "{tmp}/typo"], "is not a Common Crawl id"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_mistakes_get_one_clear_line(name, files, capsys, monkeypatch):
    monkeypatch.delenv("ALTLAKE_DEBUG", raising=False)
    argv, words = CASES[name]
    argv = [part.replace("{tmp}", str(files)) for part in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert "Traceback" not in err
    assert words in err, err
    lines = [line for line in err.splitlines() if line.startswith("altlake")]
    assert len(lines) == 1 and words in lines[-1], err
    assert not (files / "typo").exists(), "a command that reads a lake created one"


def test_an_unexpected_failure_is_one_line_and_a_saved_traceback(files, capsys, monkeypatch):
    import gpu_workers.worker as worker

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(worker, "score_batch", broken)
    monkeypatch.setenv("ALTLAKE_CACHE_DIR", str(files / "cache"))
    monkeypatch.delenv("ALTLAKE_DEBUG", raising=False)
    code = main(["score", "--input", str(files / "batch.parquet"), "--output", str(files / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "Traceback" not in err and err.startswith("altlake score: failed: KeyError")
    saved = Path(err.rsplit("traceback: ", 1)[1].rstrip(")"))
    assert saved.is_file() and "Traceback" in saved.read_text() and "a bug" in saved.read_text()
