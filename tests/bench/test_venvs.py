"""bench/venvs.py: the peer tools' venvs are made with the uv pinned in our own venv, found through
this interpreter (never PATH), and an interrupted install is redone rather than used."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.venvs import STAMP, peer_venv

REPO = Path(__file__).resolve().parents[2]
# A small pure-Python package at the version our lock pins, so uv's cache usually has it.
SIX = next(line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("six=="))


def test_a_peer_venv_has_its_tool_and_not_ours(tmp_path):
    venv = peer_venv("six", [SIX], root=tmp_path)
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-c", "import six, importlib.util as u; print(six.__version__, u.find_spec('pyspark') is None)"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.split() == [SIX.split("==")[1], "True"]
    assert (venv / STAMP).is_file()


def test_an_interrupted_install_is_redone(tmp_path):
    venv = peer_venv("six", [SIX], root=tmp_path)
    (venv / STAMP).unlink()
    (venv / "half-made").touch()
    again = peer_venv("six", [SIX], root=tmp_path)
    assert again == venv and (venv / STAMP).is_file()
    assert not (venv / "half-made").exists()  # the venv was made anew (--clear), not reused half-made
