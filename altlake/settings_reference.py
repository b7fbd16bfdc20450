"""The README's configuration reference, generated from `altlake.config.Settings`.

The comment lines directly above a field are its documentation, so a setting is described where it
is defined and the README cannot drift from the code: `altlake config reference --write README.md`
rewrites the table between the markers below, and a test fails when the two differ.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import MISSING, Field, fields
from pathlib import Path

from altlake.config import Settings, env_name

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
WRITE_COMMAND = "altlake config reference --write README.md"


def field_docs() -> dict[str, str]:
    """Field name -> its comment lines (those directly above it in the class), joined; "" when none."""
    source = inspect.getsource(Settings)
    lines = source.splitlines()
    (klass,) = ast.parse(source).body
    docs = {}
    for node in klass.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, row = [], node.lineno - 2  # ast counts lines from 1
            while row >= 0 and lines[row].lstrip().startswith("#"):
                above.insert(0, lines[row].lstrip().removeprefix("#").strip())
                row -= 1
            docs[node.target.id] = " ".join(above)
    return docs


def default_text(f: Field) -> str:
    """A field's default as the README shows it; a computed default is described by its factory's docstring."""
    if f.default_factory is not MISSING:
        return inspect.getdoc(f.default_factory).splitlines()[0]
    if f.default is None or f.default == "":
        return "(empty)"
    if isinstance(f.default, bool):
        return f"`{str(f.default).lower()}`"
    return f"`{f.default}`"


def reference_markdown() -> str:
    """The markdown table of every setting: variable, default, meaning."""
    docs = field_docs()
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        cells = (f"`{env_name(f.name)}`", default_text(f), docs.get(f.name, ""))
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def with_reference(text: str) -> str:
    """`text` (a README) with the table between its markers replaced by the generated one."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN} ... {END} markers to write the configuration reference between")
    return f"{text[: start + len(BEGIN)]}\n{reference_markdown()}{text[end:]}"


def write_reference(path: Path) -> bool:
    """Rewrite the reference in the file at `path`; whether it changed."""
    text = path.read_text(encoding="utf-8")
    updated = with_reference(text)
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text
