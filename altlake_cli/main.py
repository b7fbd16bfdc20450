"""`altlake COMMAND ...`: one entry point for every job of the platform.

Each command lives in its own module with two functions, `configure(parser)` and
`run(args) -> int`; this file only lists them, and imports a module when its command runs, so
`altlake --help` stays instant and the worker image never needs Spark (nor Spark the worker).

No command prints a traceback to its user. Bad input (ValueError, OSError: a missing release, a
malformed hash list, a file where a folder belongs) is one line and exit status 2; anything else
is one line naming a log file that holds the traceback, and exit status 1. Bad ALTLAKE_* settings
are one line per bad value, all of them at once, and exit status 2. ALTLAKE_DEBUG=1 lets
exceptions through, for developers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from altlake.config import exit_status

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("spark_jobs.extract", "extract image/alt-text pairs from WAT files into Delta"),
    "sql": ("spark_jobs.sql", "run Spark SQL on the lake's Delta tables"),
    "sql-server": ("spark_jobs.sql_server", "serve the lake's tables over JDBC/ODBC (Spark Thrift server, HiveServer2 protocol)"),
    "score": ("gpu_workers.worker", "download, embed and tag one batch of candidates"),
    "demo": ("altlake_cli.demo", "run the whole pipeline on a generated crawl, end to end"),
    "airflow": ("altlake_cli.airflow_cmd", "start Airflow with altlake's DAGs: standalone, or a team's components on Postgres (--database)"),
    "index": ("explore.index", "build the KNN indices of a release (exact or tuned IVF+PQ)"),
    "serve": ("altlake_cli.serve", "serve a release: clip-retrieval compatible search API and web page"),
    "subset": ("explore.subset", "write an img2dataset-ready parquet of the pairs nearest to queries"),
    "plan-batches": ("spark_jobs.batches", "plan scoring batches of unscored / retryable candidates"),
    "merge-scores": ("spark_jobs.merge_scores", "merge finished worker outputs into the scores table"),
    "build-release": ("spark_jobs.release", "build, gate, index and publish a release (or --rebuild one and verify it)"),
    "deprecate-release": ("spark_jobs.removals", "mark a published release superseded (a notice beside its files, releases.deprecated)"),
    "takedown": ("spark_jobs.takedowns", "record takedown requests (url, domain, hash list) and apply them"),
    "maintain": ("spark_jobs.maintain", "compact, vacuum and checkpoint the lake's Delta tables (recorded in `maintenance`)"),
    "convert-nsfw": ("gpu_workers.keras_nsfw", "convert LAION's Keras NSFW detector (clip_autokeras_*.zip) to the worker's torch head"),
    "config": ("altlake_cli.config_cmd", "check, show or document the ALTLAKE_* settings (config check: every bad value, one line each)"),
    "image-server": ("altlake_cli.image_server", "serve real, generated and hostile images on 127.0.0.1 (tests, demo, benches)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        _print_usage(argv[0] if argv and not argv[0].startswith("-") else None)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"altlake {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(rest)  # a usage error is argparse's one line and exit status 2
    if os.environ.get("ALTLAKE_DEBUG"):
        return int(module.run(args) or 0)
    # Bad settings, bad input, bugs and Ctrl-C: one line each, never a traceback (altlake.config.exit_status).
    return int(exit_status(f"altlake {name}", lambda: module.run(args)) or 0)


def _print_usage(unknown: str | None) -> None:
    out = sys.stderr if unknown else sys.stdout
    if unknown:
        print(f"altlake: unknown command {unknown!r}\n", file=out)
    print("usage: altlake COMMAND [options]   (altlake COMMAND --help for its options)\n", file=out)
    width = max(map(len, COMMANDS))
    for name, (_, help_text) in COMMANDS.items():
        print(f"  {name:<{width}}  {help_text}", file=out)


if __name__ == "__main__":
    sys.exit(main())
