"""The README's layout table names every top-level folder of the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_layout_table_covers_every_tracked_folder():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    folders = {path.split("/", 1)[0] for path in tracked if "/" in path}
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 1)]
    listed = {match.split("/", 1)[0] for match in re.findall(r"^\| `([^`]+/)", layout, re.M)}
    assert folders and folders <= listed, f"folders missing from the README's layout table: {sorted(folders - listed)}"
