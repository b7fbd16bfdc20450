"""`altlake build-release`: the release job with its KNN index built into the manifest.

spark_jobs.release is the job (also run by spark-submit, where explore may be absent); the CLI
adds the index as the build_release DAG does, so a release is published once, complete. On a
terminal the index build shows its tqdm bars (one per modality); in a pipe it stays quiet.
"""

from __future__ import annotations

import argparse
import sys

from explore.index import build_index, manifest_section
from spark_jobs import release

configure = release.configure


def index_with_progress(staging_dir: str, release_id: str) -> dict:
    """index_staged_release, with the index build's progress bars when stderr is a terminal."""
    return manifest_section(build_index(staging_dir, release_id=release_id, progress=sys.stderr.isatty()))


def run(args: argparse.Namespace) -> int:
    return release.run(args, index_release=index_with_progress)
