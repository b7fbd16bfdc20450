"""The lake's layout: where each table, batch and release lives, derived from the lake root.

Works for local directories and for s3a:// / s3:// URLs alike (plain string joins).
"""

from __future__ import annotations

from dataclasses import dataclass

DATABASE = "altlake"


def join(root: str, *parts: str) -> str:
    root = root.rstrip("/")
    return "/".join([root, *(p.strip("/") for p in parts)])


@dataclass(frozen=True)
class LakePaths:
    root: str

    def table(self, name: str) -> str:
        """Location of a Delta table (external, so DuckDB / delta-rs can read it by path)."""
        return join(self.root, "tables", name)

    @property
    def warehouse(self) -> str:
        return join(self.root, "warehouse")

    @property
    def metastore(self) -> str:
        return join(self.root, "metastore")

    @property
    def checkpoints(self) -> str:
        return join(self.root, "checkpoints")

    def batch_input(self, batch_id: str) -> str:
        return join(self.root, "batches", batch_id, "input.parquet")

    def batch_output(self, batch_id: str) -> str:
        return join(self.root, "batches", batch_id, "output")

    def gx_docs(self, run_id: str) -> str:
        return join(self.root, "gx", run_id)

    @property
    def demo_input(self) -> str:
        """`altlake demo`'s generated crawl and the images its pages link to."""
        return join(self.root, "demo-input")

    @property
    def demo_image_server(self) -> str:
        """The demo's record of its image server (port, image folder): `altlake serve` starts it again
        for a release whose images it served, as nothing else serves them after the demo."""
        return join(self.demo_input, "image-server.json")


def release_path(store: str, release_id: str) -> str:
    return join(store, release_id)


# A published release's removals addenda: one file per amendment, never rewritten (the release's
# own files are immutable; holders of a copy fetch the addenda and delete the rows they list).
REMOVALS_DIR = "removals"


def removals_file(takedowns_version: int) -> str:
    """The addendum for one takedowns table version, relative to the release's root."""
    return f"{REMOVALS_DIR}/removals-{takedowns_version:08d}.parquet"


# A release's derived subsets (altlake.schemas.DERIVED_SUBSETS): one LAION-style parquet each.
DERIVED_SUBSETS_DIR = "subsets"


def derived_subset_file(name: str) -> str:
    """A derived subset's parquet, relative to the release's root."""
    return f"{DERIVED_SUBSETS_DIR}/{name}.parquet"
