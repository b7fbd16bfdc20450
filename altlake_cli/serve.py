"""`altlake serve`: explore's search service, and the demo's image server for a demo release.

A release's pages show its images from their source URLs. The demo's images come from a server on
127.0.0.1 that ends with the demo, so its search page would show only placeholders; the demo
records that server (altlake.paths.LakePaths.demo_image_server) and this command starts it again,
on the same port and folder, when a served release links to it and nothing listens there yet.
explore serves any release and knows nothing of the demo: this command is where the two meet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

from altlake.config import Settings
from altlake.paths import LakePaths
from altlake_cli.image_server import ImageServer
from explore import service
from explore.release import open_release, resolve_release


def configure(parser: argparse.ArgumentParser) -> None:
    service.configure(parser)
    parser.add_argument("--no-demo-images", action="store_true", help="do not start the demo's image server for a demo release")


def run(args: argparse.Namespace) -> int:
    server = None if args.no_demo_images else demo_image_server(args.release, Settings.from_env())
    try:
        return service.run(args)
    finally:
        if server is not None:
            server.stop()


def demo_image_server(releases: list[str], settings: Settings) -> ImageServer | None:
    """The demo's image server, started again when one of `releases` links to it; None otherwise."""
    for release in releases:
        path = resolve_release(release, settings)
        # The lake of the settings, or the one the release sits in (<lake>/releases/<id>, the default).
        for lake in dict.fromkeys((Path(settings.lake_dir).absolute(), path.parent.parent)):
            record_path = Path(LakePaths(str(lake)).demo_image_server)
            if not record_path.is_file():
                continue
            record = json.loads(record_path.read_text())
            base = f"http://127.0.0.1:{record['port']}/"
            if not _links_to(path, base):
                continue
            try:
                server = ImageServer(port=record["port"], files_dir=record["files"]).start()
            except OSError as error:  # taken: most likely an image server already serves them
                print(f"altlake serve: port {record['port']} of the demo's images is busy ({error.strerror}); not starting them again", file=sys.stderr)
                return None
            print(f"altlake serve: the demo's images on {server.base_url} (from {record['files']})", file=sys.stderr)
            return server
    return None


def _links_to(release_path: Path, base: str) -> bool:
    """Whether the release's first image URL is under `base`."""
    release = open_release(release_path)
    if not release.shards:
        return False
    urls = pq.read_table(release.shards[0].metadata, columns=["url"]).column("url").slice(0, 1).to_pylist()
    return bool(urls) and str(urls[0]).startswith(base)
