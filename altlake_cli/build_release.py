"""`altlake build-release`: the release job with its KNN index built into the manifest.

spark_jobs.release is the job (also run by spark-submit, where explore may be absent); the CLI
adds the index as the build_release DAG does, so a release is published once, complete.
"""

from __future__ import annotations

import argparse

from explore.index import index_staged_release
from spark_jobs import release

configure = release.configure


def run(args: argparse.Namespace) -> int:
    return release.run(args, index_release=index_staged_release)
