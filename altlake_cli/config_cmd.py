"""`altlake config check | show | reference`: the ALTLAKE_* settings as this environment sets them.

`check` is the start-up check on its own, for a deployment to run before it starts anything: every
bad value, one line each, and exit status 2. `reference` prints the README's configuration table
(or rewrites it, `--write README.md`), generated from the comments in altlake/config.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from pathlib import Path

from altlake.config import Settings, SettingsError, env_name, non_defaults
from altlake.settings_reference import reference_markdown, write_reference

# Values printed by check and show go to terminals and CI logs: credentials are masked.
_SECRET_NAME = re.compile(r"password|secret", re.I)
_SECRET_IN_URL = re.compile(r"(password=)[^&;]*", re.I)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("check", help="validate every ALTLAKE_* setting; print the values that differ from the defaults")
    sub.add_parser("show", help="print every setting's effective value")
    reference = sub.add_parser("reference", help="print the configuration reference (markdown), generated from altlake/config.py")
    reference.add_argument("--write", metavar="README", type=Path, help="replace the table between the settings markers of this file")


def run(args: argparse.Namespace) -> int:
    if args.action == "reference":
        return _reference(args.write)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(exc.report("altlake config"), file=sys.stderr)
        return 2
    if args.action == "check":
        print("settings OK")
        values = non_defaults(settings)
    else:
        values = {env_name(f.name): getattr(settings, f.name) for f in fields(settings)}
    for name, value in values.items():
        print(f"{name}={_shown(name, value)}")
    return 0


def _shown(name: str, value: object) -> str:
    text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if _SECRET_NAME.search(name) and text:
        return "***"
    return _SECRET_IN_URL.sub(r"\1***", text)


def _reference(path: Path | None) -> int:
    if path is None:
        sys.stdout.write(reference_markdown())
        return 0
    changed = write_reference(path)
    print(f"{path}: configuration reference {'rewritten' if changed else 'already up to date'}")
    return 0
