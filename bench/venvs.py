"""The peer tools' own venvs (cc2dataset, img2dataset, clip-retrieval), one helper for every benchmark
and test that runs a tool a user would pick instead of altlake.

Each venv lives under the cache dir (never inside the checkout) and is made once, with the uv that
setup pinned into our own venv: its binary is found through the `uv` package of this interpreter, so nothing depends
on a PATH that only the setup script had. Every uv call names the target interpreter, so nothing
lands in our own venv by accident. A stamp written last marks a complete install, so an
interrupted one is redone rather than used half-made.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from altlake.config import Settings

STAMP = ".altlake-complete"


def uv_command() -> list[str]:
    """uv as installed in this interpreter's environment (a pinned requirement of the project)."""
    from uv import find_uv_bin

    return [find_uv_bin()]


def peer_venv(
    name: str,
    requirements: Sequence[str],
    *,
    no_deps: Sequence[str] = (),
    constraints: Path | None = None,
    root: Path | None = None,
) -> Path:
    """The venv `name` under `<cache_dir>/bench-venvs` with `requirements` installed (then `no_deps`
    without their dependencies, for tools whose own pins no longer resolve); returns its folder."""
    venv = (root or Path(Settings.from_env().cache_dir) / "bench-venvs") / name
    if (venv / STAMP).exists():
        return venv
    print(f"==> installing {' '.join([*requirements, *no_deps])} into {venv}", file=sys.stderr)
    uv = uv_command()
    subprocess.run([*uv, "venv", "-q", "--clear", "--python", sys.executable, str(venv)], check=True)
    install = [*uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python")]
    extra = ["-c", str(constraints)] if constraints else []
    subprocess.run([*install, *extra, *requirements], check=True)
    if no_deps:
        subprocess.run([*install, "--no-deps", *no_deps], check=True)
    (venv / STAMP).touch()
    return venv
