"""Table contracts shared by every runtime (Spark jobs, the scoring worker, Airflow tasks, tests).

Each table is declared once as a list of columns; Spark gets a DDL string and the worker gets a
pyarrow schema from the same declaration, so no schema is ever written twice. Types use Spark SQL
names; `to_arrow` maps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- enumerations every stage agrees on -------------------------------------------------------

# Status of one WAT file in `crawl_files`.
FILE_DONE = "done"
FILE_FAILED = "failed"
FILE_STATUSES = (FILE_DONE, FILE_FAILED)

# Reasons the LAION-5B rules drop a pair, counted per WAT in `crawl_files.rejected`.
REJECT_REASONS = (
    "not_http",
    "invalid_url",
    "text_too_short",
    "text_too_long",
    "url_too_long",
    "bad_extension",  # .svg, .gif, data:image, javascript:
    "host_too_long",
    "taken_down",
)

# Outcome of one row in the scoring worker's results / the `scores` table.
STATUS_OK = "ok"
DOWNLOAD_FAILURES = (
    "dns",
    "connect",
    "timeout",
    "http_4xx",
    "http_5xx",
    "http_429",
    "too_large",
    "too_many_redirects",
    "not_image",
    "decode_error",
    "too_small",
    "too_many_pixels",
    "unsupported_format",
    "opted_out",
    "robots_disallowed",
    "blocked_address",
    "invalid_url",
    "invalid_input",  # a batch cell of the wrong type (text or language not a string, ...): never downloaded
    "error",
)
SCORE_STATUSES = (STATUS_OK, *DOWNLOAD_FAILURES)
# What each outcome means, for the release report and anyone reading `scores`.
STATUS_MEANINGS = {
    STATUS_OK: "downloaded, decoded and embedded",
    "dns": "the host name did not resolve (retried in a later run)",
    "connect": "no connection to the host (retried in a later run)",
    "timeout": "no complete answer within the deadline (retried in a later run)",
    "http_4xx": "the server answered 4xx, e.g. 404 not found",
    "http_5xx": "the server answered 5xx (retried in a later run)",
    "http_429": "the server asked us to slow down (retried in a later run)",
    "too_large": "the body was over the byte limit",
    "too_many_redirects": "more redirects than allowed",
    "not_image": "the body is not an image (HTML, JSON, ...)",
    "decode_error": "a damaged image, or one whose data does not cover its declared size",
    "too_small": "under the minimum bytes or side length (icons, tracking pixels)",
    "too_many_pixels": "over the pixel, side-length or aspect-ratio limit",
    "unsupported_format": "an image format outside JPEG, PNG and WebP",
    "opted_out": "the site opts out of AI use (X-Robots-Tag noai, ...)",
    "robots_disallowed": "robots.txt disallows it for our user agent",
    "blocked_address": "refused by the SSRF guard: not a public address, or not allow-listed (as the demo's internet URLs are)",
    "invalid_url": "not an http(s) URL with a host",
    "invalid_input": "a batch cell of the wrong type (the row was never downloaded)",
    "error": "an unexpected failure, recorded with its reason (retried in a later run)",
}

# Failure classes worth another download attempt in a later scoring run (transient by nature).
RETRYABLE_STATUSES = ("dns", "connect", "timeout", "http_5xx", "http_429", "error")

# Batch lifecycle in the `batches` table.
BATCH_PLANNED, BATCH_DONE, BATCH_FAILED = "planned", "done", "failed"
BATCH_STATUSES = (BATCH_PLANNED, BATCH_DONE, BATCH_FAILED)

# Language groups of a release (LAION-5B's split).
SUBSETS = ("en", "multi", "nolang")

TAKEDOWN_KINDS = ("url", "domain", "sha256", "md5")


# --- column / table declarations ---------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # Spark SQL type name: string, bigint, int, double, float, boolean, timestamp, binary, map<string,bigint>
    nullable: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    doc: str = ""
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def spark_ddl(self) -> str:
        """Column list in Spark DDL, usable by `spark.createDataFrame(..., schema=ddl)` and CREATE TABLE."""
        return ", ".join(f"`{c.name}` {c.type}{'' if c.nullable else ' NOT NULL'}" for c in self.columns)

    def to_arrow(self):
        """The same schema for pyarrow / parquet writers (the worker has no Spark)."""
        import pyarrow as pa

        return pa.schema([pa.field(c.name, _arrow_type(c.type), c.nullable) for c in self.columns])


def _arrow_type(spark_type: str):
    import pyarrow as pa

    simple = {
        "string": pa.string(),
        "bigint": pa.int64(),
        "int": pa.int32(),
        "double": pa.float64(),
        "float": pa.float32(),
        "boolean": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "binary": pa.binary(),
        "date": pa.date32(),
    }
    if spark_type in simple:
        return simple[spark_type]
    if spark_type.startswith("map<") and spark_type.endswith(">"):
        key, value = (part.strip() for part in spark_type[4:-1].split(",", 1))
        return pa.map_(_arrow_type(key), _arrow_type(value))
    if spark_type.startswith("array<") and spark_type.endswith(">"):
        return pa.list_(_arrow_type(spark_type[6:-1].strip()))
    raise ValueError(f"no arrow mapping for Spark type {spark_type!r}")


C = Column

CRAWL_FILES = Table(
    name="crawl_files",
    doc="One row per WAT file and crawl: what the extraction did with it.",
    key=("crawl", "path"),
    columns=(
        C("crawl", "string", False, "crawl id, e.g. CC-MAIN-2024-10"),
        C("path", "string", False, "the WAT's location as given (local path, s3a:// URL)"),
        C("status", "string", False, "done | failed"),
        C("error", "string", doc="why the file failed, or the first record-level problem"),
        C("records", "bigint", doc="WARC records read"),
        C("bad_records", "bigint", doc="records skipped as unparseable (reason in error)"),
        C("pages", "bigint", doc="HTML page metadata records"),
        C("raw_links", "bigint", doc="IMG@/src links with a non-empty alt (before any rule)"),
        C("raw_pairs", "bigint", doc="distinct (absolute url, alt) pairs among raw_links"),
        C("kept_pairs", "bigint", doc="distinct pairs that passed the LAION-5B rules"),
        C("rejected", "map<string,bigint>", doc="distinct pairs dropped, by reason"),
        C("attempts", "int", doc="how many times this file was processed"),
        C("started_at", "timestamp"),
        C("finished_at", "timestamp"),
        C("duration_s", "double"),
    ),
)

CANDIDATES = Table(
    name="candidates",
    doc="Distinct image URL + alt-text pairs that passed the LAION-5B rules, across all crawls.",
    key=("uid",),
    partition_by=("first_seen_crawl",),
    columns=(
        C("uid", "string", False, "hex hash of (url, text): stable across runs and crawls"),
        C("url", "string", False),
        C("text", "string", False, "alt text after ftfy and non-printable stripping"),
        C("page_url", "string", doc="the page the image was linked from"),
        C("wat_path", "string", doc="the WAT the pair was first extracted from"),
        C("language", "string", False, "ISO code, or nolang when detection is unreliable"),
        C("language_score", "float"),
        C("license", "string", doc="creativecommons.org license URL found on the page, if any"),
        C("first_seen_crawl", "string", False, "the crawl that first contained the pair"),
        C("last_seen_crawl", "string", False, "the newest crawl that contained the pair"),
        C("ingested_at", "timestamp", False),
    ),
)

BATCHES = Table(
    name="batches",
    doc="Units of scoring work: a list of candidate uids written to one input parquet.",
    key=("batch_id",),
    columns=(
        C("batch_id", "string", False),
        C("crawl", "string", doc="crawl filter the batch was planned for (null: all crawls)"),
        C("n_rows", "bigint", False),
        C("input_path", "string", False),
        C("output_path", "string", False),
        C("status", "string", False, "planned | done | failed"),
        C("attempts", "int", False),
        C("error", "string"),
        C("created_at", "timestamp", False),
        C("updated_at", "timestamp", False),
    ),
)

# One row per input uid of a scoring batch: written by the worker (results.parquet) and merged
# into the `scores` Delta table. Embeddings travel separately in the clip-retrieval layout and are
# joined in by uid during the merge.
SCORES = Table(
    name="scores",
    doc="Download and model outcome per candidate uid.",
    key=("uid",),
    columns=(
        C("uid", "string", False),
        C("url", "string", False),
        C("status", "string", False, "ok or a failure class (see SCORE_STATUSES)"),
        C("error", "string"),
        C("http_status", "int"),
        C("original_width", "int"),
        C("original_height", "int"),
        C("width", "int"),
        C("height", "int"),
        C("sha256", "string"),
        C("md5", "string"),
        C("similarity", "float", doc="cosine similarity of CLIP image and text embeddings"),
        C("punsafe", "float"),
        C("pwatermark", "float"),
        C("clip_model", "string"),
        C("text_model", "string"),
        C("nsfw_model", "string"),
        C("watermark_model", "string"),
        C("batch_id", "string", False),
        C("attempts", "int", False, "download attempts across scoring runs"),
        C("download_s", "double"),
        C("scored_at", "timestamp", False),
        C("img_emb", "binary", doc="L2-normalised float16 little-endian image embedding"),
        C("text_emb", "binary", doc="L2-normalised float16 little-endian text embedding"),
    ),
)

# The worker's results.parquet is SCORES without the merge-side columns.
WORKER_RESULTS = Table(
    name="worker_results",
    doc="One row per input uid of a batch, as the scoring worker writes it.",
    key=("uid",),
    columns=tuple(c for c in SCORES.columns if c.name not in ("attempts", "img_emb", "text_emb")),
)

PAIRS = Table(
    name="pairs",
    doc="The filtered dataset a release is cut from.",
    key=("uid",),
    partition_by=("subset",),
    columns=(
        C("uid", "string", False),
        C("url", "string", False),
        C("text", "string", False),
        C("subset", "string", False, "en | multi | nolang"),
        C("language", "string", False),
        C("width", "int"),
        C("height", "int"),
        C("original_width", "int"),
        C("original_height", "int"),
        C("similarity", "float", False),
        C("punsafe", "float"),
        C("pwatermark", "float"),
        C("sha256", "string", False),
        C("md5", "string"),
        C("license", "string"),
        C("first_seen_crawl", "string", False),
        C("near_duplicate_of", "string", doc="uid of a kept image whose embedding is within the threshold"),
        C("img_emb", "binary", False),
        C("text_emb", "binary", False),
    ),
)

RELEASES = Table(
    name="releases",
    doc="Every published release and where it lives.",
    key=("release_id",),
    columns=(
        C("release_id", "string", False),
        C("created_at", "timestamp", False),
        C("location", "string", False),
        C("n_pairs", "bigint", False),
        C("manifest_sha256", "string", False),
        C("manifest", "string", False, "the manifest.json text"),
    ),
)

TAKEDOWNS = Table(
    name="takedowns",
    doc="Opt-out and takedown requests: by url, domain or image hash.",
    key=("kind", "value"),
    columns=(
        C("kind", "string", False, "url | domain | sha256 | md5"),
        C("value", "string", False),
        C("reason", "string", False),
        C("requested_at", "timestamp", False),
    ),
)

TABLES: dict[str, Table] = {
    t.name: t for t in (CRAWL_FILES, CANDIDATES, BATCHES, SCORES, PAIRS, RELEASES, TAKEDOWNS)
}
