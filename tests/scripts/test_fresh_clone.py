"""A new user's machine: a fresh clone set up and tested with the system's default PATH, on which no
`uv` is reachable. Whatever setup installs must be found through `.venv` (or an absolute path),
never through a PATH that only the setup script had (issue #12).

The clone is of the committed HEAD, as CI's is. Setup there reuses the machine-wide caches (uv's
packages, the Maven jars), so it costs a venv's worth of links and one compile of the C readers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def default_path_without_uv() -> str:
    """The system's default PATH, minus any folder that happens to hold a `uv` (so none is found)."""
    folders = [p for p in SYSTEM_PATH.split(":") if not (Path(p) / "uv").exists()]
    path = ":".join(folders)
    assert shutil.which("uv", path=path) is None
    return path


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A clone of HEAD with `scripts/setup.sh` run in it under the stripped PATH."""
    clone = tmp_path_factory.mktemp("fresh") / "altlake"
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
        # The machine's environment (registry certificates, caches) with the PATH a new login gets; nothing
        # of this run's venv or test session leaks in.
        leaks = ("VIRTUAL_ENV", "PYTHONPATH", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "AIRFLOW_HOME", "PYSPARK_PYTHON")
        env = {k: v for k, v in os.environ.items() if k not in leaks and not k.startswith("AIRFLOW__")}
        env["PATH"] = default_path_without_uv()
        setup = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
        assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
        assert "==> setup done" in setup.stdout
        yield clone, env
    finally:
        # Its venv is links into uv's cache where the cache shares the disk, but a full copy (7 GB) where
        # it does not: it goes when the module is done (or setup failed), not with the run's temporary folders.
        shutil.rmtree(clone, ignore_errors=True)


def test_setup_installs_uv_into_the_venv_and_nothing_needs_it_on_path(fresh_clone):
    clone, env = fresh_clone
    assert (clone / ".venv" / "bin" / "uv").is_file()
    assert shutil.which("uv", path=env["PATH"]) is None  # still none: setup did not rely on one either
    pinned = next(line for line in (clone / "requirements.txt").read_text().splitlines() if line.startswith("uv=="))
    version = subprocess.run([".venv/bin/uv", "--version"], cwd=clone, capture_output=True, text=True, check=True).stdout
    assert pinned == "uv==" + version.split()[1]


def test_a_test_that_needs_uv_passes_in_the_fresh_clone(fresh_clone):
    """tests/bench/test_venvs.py makes a peer tool's venv with uv, as the benchmarks and the
    img2dataset subset test do; it runs in the clone under the stripped PATH."""
    clone, env = fresh_clone
    run = subprocess.run(
        [".venv/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/bench/test_venvs.py"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


def test_setup_leaves_no_dangling_builds_in_uv_cache(fresh_clone):
    """pyspark is an sdist, and each install into a new venv leaves a new build of it (about 1 GB) in
    uv's cache; setup prunes the ones no environment uses, so repeated setups (every CI clone) cannot
    fill the disk, as they once did."""
    clone, env = fresh_clone
    prune = subprocess.run([".venv/bin/uv", "cache", "prune"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert prune.returncode == 0, prune.stderr
    output = prune.stdout + prune.stderr
    assert "Pruning cache at" in output
    # "Removed 112724 files (65.5GiB)" before the fix; small leftovers of other tests' venvs are fine.
    removed = re.search(r"Removed \d+ files? \(([\d.]+)(B|KiB|MiB|GiB)\)", output)
    if removed:
        size = float(removed[1]) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[removed[2]]
        assert size < 100 * 2**20, output
    else:
        assert "No unused entries found" in output, output
