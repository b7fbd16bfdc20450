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
        return join(self.root, "batches", batch_id, BATCH_INPUT_FILE)

    def batch_output(self, batch_id: str) -> str:
        return join(self.root, "batches", batch_id, "output")

    def batch_withdrawn(self, batch_id: str) -> str:
        return join(self.root, "batches", batch_id, WITHDRAWN_FILE)

    @property
    def merge_scratch_dir(self) -> str:
        """Every merge group's staging folder lives here (what `altlake maintain` sweeps after a killed merge)."""
        return join(self.root, "scratch", "merge")

    def merge_scratch(self, run_id: str) -> str:
        """Where merge-scores stages a group's rows for Spark to read, removed after the group."""
        return join(self.merge_scratch_dir, run_id)

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


# Written once beside a release that is superseded (reason, time, successor): holders of a copy see it,
# `releases.deprecated` records it, and the search service names it in every index description.
DEPRECATION = "DEPRECATED.json"


def removals_file(takedowns_version: int) -> str:
    """The addendum for one takedowns table version, relative to the release's root."""
    return f"{REMOVALS_DIR}/removals-{takedowns_version:08d}.parquet"


# A release's derived subsets (altlake.schemas.DERIVED_SUBSETS): one LAION-style parquet each.
DERIVED_SUBSETS_DIR = "subsets"


def derived_subset_file(name: str) -> str:
    """A derived subset's parquet, relative to the release's root."""
    return f"{DERIVED_SUBSETS_DIR}/{name}.parquet"


# --- a scoring batch's input (spark_jobs.batches writes it, gpu_workers.reader reads it) and output
# folder (gpu_workers.writer writes it, spark_jobs.merge_scores reads it).
BATCH_INPUT_FILE = "input.parquet"
RESULTS_FILE = "results.parquet"  # one row per input uid, every status
SUCCESS_FILE = "_SUCCESS"  # written last, holding the batch's summary: the output is complete
# Beside a batch's input: uids whose page opted out after the batch was planned (uid, opt_out), which
# the worker records as opted_out without a download. The planner and the extraction write it.
WITHDRAWN_FILE = "withdrawn.parquet"

# --- clip-retrieval's embedding layout: a batch's output folder, and each subset of a release under
# embeddings/<subset>/. Row i of metadata_N describes row i of img_emb_N and text_emb_N.
EMBEDDING_KINDS = ("img_emb", "text_emb", "metadata")


def embedding_shard(kind: str, number: int) -> str:
    """`img_emb/img_emb_N.npy`, `text_emb/text_emb_N.npy` or `metadata/metadata_N.parquet`."""
    if kind not in EMBEDDING_KINDS:
        raise ValueError(f"no embedding file kind {kind!r}: one of {EMBEDDING_KINDS}")
    return f"{kind}/{kind}_{number}.{'parquet' if kind == 'metadata' else 'npy'}"


def embedding_shard_number(kind: str, file_name: str) -> int | None:
    """N of a file named as embedding_shard(kind, N) names it (`img_emb_3.npy` -> 3); None otherwise."""
    stem, _, rest = file_name.rpartition("_")
    number = rest.partition(".")[0]
    if stem != kind or not number.isdigit() or embedding_shard(kind, int(number)) != f"{kind}/{file_name}":
        return None
    return int(number)


# --- a release's folder: spark_jobs.publish writes it, explore indexes and serves it.
MANIFEST = "manifest.json"  # written last: versions, counts, thresholds, checksums of every other file
REPORT = "report.html"
RELEASE_PARQUET_DIR = "parquet"  # parquet/<subset>/part-NNNNN.parquet, LAION's columns
RELEASE_EMBEDDINGS_DIR = "embeddings"  # embeddings/<subset>/, the layout above
RELEASE_GX_DIR = "gx"  # the Data Docs of the release's GX gates
INDEX_DIR = "index"  # the KNN indices and what serving them needs, built by `altlake index`
INDEX_INFO = "index_info.json"  # under INDEX_DIR: how each index was built, its recall, its inputs
INDEX_METADATA = "metadata.arrow"  # under INDEX_DIR: every row's metadata in the indices' order
INDEX_RATINGS = "aesthetic_ratings.npy"  # under INDEX_DIR: the rating embeddings of clip back's aesthetic_score


def release_parquet_file(subset: str, shard: int) -> str:
    """One shard of a release subset's LAION parquet, relative to the release's root."""
    return f"{RELEASE_PARQUET_DIR}/{subset}/part-{shard:05d}.parquet"
