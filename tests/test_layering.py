"""Layering is enforced (issue #17): dags -> plugins -> (spark_jobs | gpu_workers | explore) -> altlake.

The rules live in pyproject.toml ([tool.importlinter]); import-linter checks them over the static
import graph, lazy imports inside functions included, direct and indirect (through our own modules).
The search service's "no torch until a text/image query needs CLIP" is a runtime property, so it is
checked by importing the service in a fresh interpreter.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("dags", "plugins", "spark_jobs", "gpu_workers", "explore", "altlake", "altlake_cli", "bench")

LAYERS = "Layers: dags -> plugins -> spark_jobs : gpu_workers : explore -> altlake"
DAGS_VIA_PLUGINS = "DAG files go through plugins, never straight to the runtimes"
NO_AIRFLOW = "Spark jobs and the GPU worker run without Airflow"
NO_SPARK = "The GPU worker runs without Spark"
CONTRACTS_PURE = "The altlake contracts import nothing of ours"
SPARK_BACKENDS = "Spark backends: plugins.spark -> plugins.emr -> plugins.jobs"
ALL_CONTRACTS = {LAYERS, DAGS_VIA_PLUGINS, NO_AIRFLOW, NO_SPARK, CONTRACTS_PURE, SPARK_BACKENDS}


def lint_imports(root: Path) -> tuple[int, str, dict[str, str]]:
    """Run import-linter on the tree at `root` (its pyproject.toml); (exit code, output, {contract: KEPT|BROKEN})."""
    # From `root`: import-linter puts the working directory first on sys.path, so the packages (and
    # the namespace package dags/, which has no __init__.py) resolve to the tree under test.
    proc = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "pyproject.toml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    verdicts = {m.group(1): m.group(2) for m in re.finditer(r"^(.+?) (KEPT|BROKEN)$", output, re.MULTILINE)}
    return proc.returncode, output, verdicts


def test_every_layering_contract_is_kept() -> None:
    rc, output, verdicts = lint_imports(REPO)
    broken = sorted(name for name, verdict in verdicts.items() if verdict == "BROKEN")
    assert rc == 0 and not broken, f"broken import contracts: {broken}\n\n{output}"
    # Every contract ran (a renamed or dropped contract must be noticed here, not silently skipped).
    assert set(verdicts) == ALL_CONTRACTS, output


def _copy_tree(dest: Path) -> None:
    """The repo's Python packages and pyproject.toml, without data, caches or build outputs."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or ((Path(directory) / n).is_file() and not n.endswith(".py"))}

    for package in PACKAGES:
        shutil.copytree(REPO / package, dest / package, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")


def _append(path: Path, code: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("\n" + code + "\n")


# (files to append to, contracts that must break, a line of the report that names the offending import)
VIOLATIONS = {
    "gpu_workers imports pyspark": ({"gpu_workers/reader.py": "import pyspark.sql"}, {NO_SPARK}, "gpu_workers.reader -> pyspark"),
    "gpu_workers imports delta, lazily": (
        {"gpu_workers/writer.py": "def _lazy():\n    import delta\n"},
        {NO_SPARK},
        "gpu_workers.writer -> delta",
    ),
    "gpu_workers imports airflow": ({"gpu_workers/writer.py": "from airflow.sdk import dag"}, {NO_AIRFLOW}, "gpu_workers.writer -> airflow"),
    "spark_jobs reaches airflow through one of our modules": (
        {"altlake/_leak.py": "import airflow.sdk", "spark_jobs/sql.py": "import altlake._leak"},
        {NO_AIRFLOW},
        "spark_jobs.sql -> altlake._leak",
    ),
    "altlake imports explore": ({"altlake/schemas.py": "import explore.errors"}, {CONTRACTS_PURE, LAYERS}, "altlake.schemas -> explore.errors"),
    "altlake imports bench": ({"altlake/paths.py": "import bench"}, {CONTRACTS_PURE}, "altlake.paths -> bench"),
    "explore imports plugins": ({"explore/errors.py": "import plugins.assets"}, {LAYERS}, "explore.errors -> plugins.assets"),
    "spark_jobs imports dags": ({"spark_jobs/sql.py": "import dags.cc_ingest"}, {LAYERS}, "spark_jobs.sql -> dags.cc_ingest"),
    "plugins imports dags": ({"plugins/assets.py": "import dags.cc_ingest"}, {LAYERS}, "plugins.assets -> dags.cc_ingest"),
    "the EMR request imports the runner": ({"plugins/emr.py": "import plugins.spark"}, {SPARK_BACKENDS}, "plugins.emr -> plugins.spark"),
    "a DAG skips plugins": ({"dags/cc_ingest.py": "import spark_jobs.sql"}, {DAGS_VIA_PLUGINS}, "dags.cc_ingest -> spark_jobs.sql"),
}


@pytest.mark.parametrize("case", VIOLATIONS)
def test_the_contracts_catch_a_violation(case: str, tmp_path: Path) -> None:
    """Each contract bites: the same config over a copy of the tree with one bad import added fails."""
    edits, must_break, offending = VIOLATIONS[case]
    _copy_tree(tmp_path)
    for relative, code in edits.items():
        _append(tmp_path / relative, code)
    rc, output, verdicts = lint_imports(tmp_path)
    broken = {name for name, verdict in verdicts.items() if verdict == "BROKEN"}
    assert rc != 0, output
    assert must_break <= broken, f"expected {sorted(must_break)} to break, broken: {sorted(broken)}\n\n{output}"
    assert offending in output, output


def test_search_service_imports_without_torch() -> None:
    """Serving nearest-neighbour queries needs no torch: CLIP (torch, open_clip) loads only for text/image queries."""
    heavy = ("torch", "open_clip", "torchvision", "timm")
    code = (
        "import sys, explore.service\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})\n"
        "assert not loaded, f'importing explore.service loaded {loaded}'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
