"""scripts/setup.sh, which `make demo` and `make test` run first: a second run in a set-up checkout
returns at once, because its stamp is keyed on everything that shapes the setup."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_second_setup_does_nothing():
    stamp = REPO / ".venv" / ".altlake-setup"
    assert stamp.is_file(), "run the suite through `make test`, which sets up first"
    before = (stamp.stat().st_mtime_ns, stamp.read_text())
    run = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert (run.stdout, run.stderr) == ("", "")  # the full setup announces itself with "==> altlake setup"
    assert (stamp.stat().st_mtime_ns, stamp.read_text()) == before
