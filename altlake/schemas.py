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
STATUS_OPTED_OUT = "opted_out"  # a signal said no (the error names it), or the image is on a takedown hash list
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
    STATUS_OPTED_OUT,
    "robots_disallowed",
    "blocked_address",
    "host_refused",  # the host kept answering 429/503: given up for the batch, never requested (retried later)
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
    "opted_out": "an opt-out signal (error names it: x_robots_tag, tdm_reservation, tdmrep_json, ai_crawler_robots) or an image hash on a takedown list",
    "robots_disallowed": "robots.txt disallows it for our user agent (RFC 9309: its own group, else *)",
    "blocked_address": "refused by the SSRF guard: not a public address, or not allow-listed (as the demo's internet URLs are)",
    "host_refused": "not requested: its host kept answering 429/503 and was given up for the batch (retried in a later run)",
    "invalid_url": "not an http(s) URL with a host",
    "invalid_input": "a batch cell of the wrong type (the row was never downloaded)",
    "error": "an unexpected failure, recorded with its reason (retried in a later run)",
}

# Opt-out signals honoured before any image is downloaded. An opted-out row records the signal:
# `candidates.opt_out` (found at extraction) or `scores.error` = "<signal>: <detail>" with status
# opted_out (found by the worker). The manifest lists them as "signals honoured".
OPT_OUT_SIGNALS = {
    "meta_robots": "the page's <meta name=robots> (or a named agent's) says noai / noimageai",
    "x_robots_tag": "the image's X-Robots-Tag header says noai, noimageai, noml, none or noindex for us",
    "tdm_reservation": "the image's tdm-reservation: 1 header (W3C TDMRep)",
    "tdmrep_json": "the host's /.well-known/tdmrep.json reserves text and data mining for the path",
    "ai_crawler_robots": "robots.txt disallows the path for an AI crawler token (CCBot, GPTBot, ...)",
}

# Failure classes worth another download attempt in a later scoring run (transient by nature).
RETRYABLE_STATUSES = ("dns", "connect", "timeout", "http_5xx", "http_429", "host_refused", "error")

# Batch lifecycle in the `batches` table.
BATCH_PLANNED, BATCH_DONE, BATCH_FAILED = "planned", "done", "failed"
BATCH_STATUSES = (BATCH_PLANNED, BATCH_DONE, BATCH_FAILED)

# The `language` of a pair whose language detection was unreliable (candidates, pairs), and the
# release subset that holds them.
NO_LANGUAGE = "nolang"

# Language groups of a release (LAION-5B's split).
SUBSETS = ("en", "multi", NO_LANGUAGE)

# Derived subsets a release publishes beside its language groups, each one parquet of the release's
# rows (all languages) that satisfy its filter (altlake.paths.derived_subset_file):
#   aesthetic        aesthetic >= a minimum (LAION-Aesthetics V2's cut-offs, AESTHETIC_PRESETS)
#   high_resolution  original width and height both >= a minimum side (LAION-High-Resolution)
#   research         every row (Re-LAION-5B's "research": the release after takedowns)
#   research-safe    punsafe known and at most a limit (Re-LAION-5B's "research-safe")
DERIVED_SUBSETS = ("aesthetic", "high_resolution", "research", "research-safe")

# LAION-Aesthetics V2's published subsets of LAION-5B's English pairs, by predicted rating ("N or
# higher"): 4.5+ (1.2B), 4.75+ (939M), 5+ (600M), 6+ (12M), 6.25+ (3M), 6.5+ (625K), per LAION's
# announcement https://laion.ai/blog/laion-aesthetics/ and its Hugging Face sets
# ChristophSchuhmann/improved_aesthetics_<N>plus, whose suffixes name the presets.
AESTHETIC_PRESETS = {"4.5plus": 4.5, "4.75plus": 4.75, "5plus": 5.0, "6plus": 6.0, "6.25plus": 6.25, "6.5plus": 6.5}
AESTHETIC_RANGE = (1.0, 10.0)  # LAION-Aesthetics' rating scale
# LAION-High-Resolution: "a >= 1024x1024 subset of laion5B" (rom1504/img2dataset,
# dataset_examples/laion-high-resolution.md; laion/laion-high-resolution on Hugging Face): both of
# the original image's sides at least 1024 pixels.
LAION_HIGH_RESOLUTION_MIN_SIDE = 1024


def aesthetic_minimum(value: str | float) -> float:
    """An AESTHETIC_PRESETS name or a number on the 1-10 scale -> the minimum rating; ValueError otherwise."""
    if isinstance(value, str) and value.strip() in AESTHETIC_PRESETS:
        return AESTHETIC_PRESETS[value.strip()]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    low, high = AESTHETIC_RANGE
    if not low <= number <= high:  # NaN fails too
        raise ValueError(
            f"ALTLAKE_AESTHETIC_MIN must be a LAION-Aesthetics V2 preset ({', '.join(AESTHETIC_PRESETS)}) "
            f"or a number from {low:g} to {high:g}, not {value!r}"
        )
    return number


@dataclass(frozen=True)
class DerivedSubset:
    """One derived subset: its Spark SQL filter over `pairs` columns, numbers written in (the manifest
    records it and a rebuild applies it as recorded), and the parameters it was made from."""

    name: str
    filter: str
    parameters: dict[str, object]


def derived_subsets(aesthetic_min: float, min_side: int, max_punsafe: float) -> tuple[DerivedSubset, ...]:
    """The DERIVED_SUBSETS with these limits (a comparison with an unknown value is false: a row
    without a rating, size or punsafe is in none of the filtered subsets)."""
    preset = next((name for name, value in AESTHETIC_PRESETS.items() if value == aesthetic_min), None)
    return (
        DerivedSubset("aesthetic", f"aesthetic >= {float(aesthetic_min)!r}", {"aesthetic_min": float(aesthetic_min), "preset": preset}),
        DerivedSubset(
            "high_resolution",
            f"original_width >= {int(min_side)} AND original_height >= {int(min_side)}",
            {"min_side": int(min_side)},
        ),
        DerivedSubset("research", "TRUE", {"max_punsafe": None}),
        DerivedSubset("research-safe", f"punsafe IS NOT NULL AND punsafe <= {float(max_punsafe)!r}", {"max_punsafe": float(max_punsafe)}),
    )

TAKEDOWN_KINDS = ("url", "domain", "sha256", "md5", "pdq")


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
    # Named CHECK constraints (name -> SQL condition) Delta enforces on every write: an invariant a job
    # can then rely on without reading the columns it holds over.
    checks: dict[str, str] = field(default_factory=dict)

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
        C("opted_out", "bigint", doc="of kept_pairs, those whose page opted out (candidates.opt_out); null: read before it was counted"),
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
        C("url_canonical", "string", doc="the URL's canonical form (altlake.urls): what url and domain takedowns match"),
        C("text", "string", False, "alt text after ftfy and non-printable stripping"),
        C("page_url", "string", doc="the page the image was linked from"),
        C("wat_path", "string", doc="the WAT the pair was first extracted from"),
        C("language", "string", False, "ISO code, or nolang when detection is unreliable"),
        C("language_score", "float"),
        C("license", "string", doc="creativecommons.org license URL found on the page, if any"),
        C("opt_out", "string", doc="the OPT_OUT_SIGNALS key that opted the pair out before any download, null when none"),
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
        # The worker's own throughput record (its _SUCCESS), copied in when the batch is merged: SQL
        # answers "how fast did last night's scoring run" without opening a file.
        C("host", "string", doc="the machine that scored the batch"),
        C("started_at", "timestamp", doc="when the worker started the batch"),
        C("finished_at", "timestamp", doc="when the worker finished writing its outputs"),
        C("wall_s", "double", doc="the worker's seconds for the batch, model loading included"),
        C("images_per_s", "double", doc="ok images per second of scoring (downloads to embeddings, model loading excluded)"),
        C("rows_per_s", "double", doc="rows per second of scoring, failures included"),
        C("bytes_downloaded", "bigint", doc="image bytes the worker received"),
        C("rows_ok", "bigint", doc="rows scored ok"),
    ),
)

EMBEDDED_OK_ROWS = "ok_rows_have_embeddings"  # the scores table's CHECK constraint: every ok row has both embeddings
# A table property naming a declared check the table's rows broke, its value the version they were checked at.
DECLINED_CHECK_PROPERTY = "altlake.declinedCheck."

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
        C("pdq", "string", doc="PDQ perceptual hash of the picture, 64 hex digits (altlake.perceptual; null: scored before PDQ)"),
        C("pdq_quality", "int", doc="PDQ's quality, 0-100: under 50 is a flat image whose hash matches too easily"),
        C("similarity", "float", doc="cosine similarity of CLIP image and text embeddings"),
        C("punsafe", "float"),
        C("pwatermark", "float"),
        C("aesthetic", "float", doc="LAION-Aesthetics' predicted rating, 1-10 scale (from the image embedding; null: no aesthetic head)"),
        C("profile", "string", doc="the model profile that scored the row (null: models chosen by flags, or scored before profiles)"),
        C("clip_model", "string"),
        C("text_model", "string"),
        C("nsfw_model", "string"),
        C("watermark_model", "string"),
        C("aesthetic_model", "string"),
        C("batch_id", "string", False),
        C("attempts", "int", False, "download attempts across scoring runs"),
        C("download_s", "double"),
        C("scored_at", "timestamp", False),
        C("img_emb", "binary", doc="L2-normalised float16 little-endian image embedding"),
        C("text_emb", "binary", doc="L2-normalised float16 little-endian text embedding"),
    ),
    # merge-scores refuses a worker output whose ok rows lack embeddings; the table holds to it too, so a
    # release filters ok rows without reading 2 KB of embeddings a row to find nulls.
    checks={EMBEDDED_OK_ROWS: f"status <> '{STATUS_OK}' OR (img_emb IS NOT NULL AND text_emb IS NOT NULL)"},
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
        C("url_canonical", "string", doc="as in candidates: what url and domain takedowns match"),
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
        C("aesthetic", "float", doc="as in scores: LAION-Aesthetics' predicted rating, 1-10 scale"),
        C("sha256", "string", False),
        C("md5", "string"),
        C("pdq", "string", doc="as in scores: what pdq takedowns match"),
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
        C("amended_at", "timestamp", doc="when a removals addendum was last added beside the release"),
        C("removed", "bigint", doc="rows its removals addenda list (taken down since publication)"),
        C("deprecated", "boolean", doc="superseded: holders should move to a newer release"),
    ),
)

REMOVALS = Table(
    name="removals",
    doc="A release's removals addendum (removals/removals-<takedowns version>.parquet beside its immutable "
    "files): rows taken down since publication, which holders of a copy should delete (as Re-LAION-5B did).",
    key=("uid",),
    columns=(
        C("uid", "string", False),
        C("url", "string"),
        C("sha256", "string"),
        C("md5", "string"),
        C("pdq", "string"),
        C("kind", "string", False, "the matching request's kind: url | domain | sha256 | md5 | pdq"),
        C("value", "string", False, "the matching request's value (canonical)"),
        C("takedowns_version", "bigint", False, "the takedowns table version the addendum honours"),
        C("removed_at", "timestamp", False),
    ),
)

TAKEDOWNS = Table(
    name="takedowns",
    doc="Opt-out and takedown requests: by url, domain, image digest or perceptual hash.",
    key=("kind", "value"),
    columns=(
        C("kind", "string", False, "url | domain | sha256 | md5 | pdq"),
        C("value", "string", False),
        C("reason", "string", False),
        C("requested_at", "timestamp", False),
        C("matched", "map<string,bigint>", doc="rows the request matched per table when it was added"),
        C("max_distance", "int", doc="pdq requests: the largest Hamming distance (of 256 bits) that matches"),
    ),
)

PURGES = Table(
    name="purges",
    doc="One row per table a takedown apply deleted rows from, and when those rows left the table's history for good.",
    key=("apply_id", "table_name"),
    columns=(
        C("apply_id", "string", False, "one apply_takedowns run"),
        C("table_name", "string", False, "candidates | scores | pairs"),
        C("table_version", "bigint", False, "the Delta version of the delete; older versions hold the rows until purged"),
        C("takedowns_version", "bigint", False, "the takedowns table version the apply honoured"),
        C("rows_deleted", "bigint", False),
        C("files_rewritten", "bigint", doc="data files the delete removed from the table (those holding the rows)"),
        C("applied_at", "timestamp", False, "when the rows left the table's current version"),
        C("grace_hours", "int", False, "the grace period (ALTLAKE_TAKEDOWN_GRACE_HOURS) the purge waits for"),
        C("purge_after", "timestamp", False, "applied_at + grace_hours: from then on `takedown purge` removes the rows"),
        C("purged_at", "timestamp", doc="when VACUUM deleted the files; null until then"),
        C("retention_hours", "int", doc="the tables' history retention (ALTLAKE_HISTORY_RETENTION_HOURS) at the purge"),
        C("vacuum_retain_hours", "bigint", doc="the VACUUM ... RETAIN n HOURS the purge ran"),
        C("files_removed", "bigint", doc="of files_rewritten, those gone from storage after the purge"),
        C("vacuum_version", "bigint", doc="the table's Delta version after the purge's VACUUM"),
    ),
)

MAINTENANCE = Table(
    name="maintenance",
    doc="One row per table and `altlake maintain` run: what compaction, statistics, VACUUM and the log checkpoint did, and how long each took.",
    key=("run_id", "table_name"),
    columns=(
        C("run_id", "string", False, "one maintenance run (all its tables share it)"),
        C("table_name", "string", False, "the lake table maintained"),
        C("started_at", "timestamp", False),
        C("finished_at", "timestamp"),
        C("version_before", "bigint", doc="the table's Delta version before the run"),
        C("version_after", "bigint", doc="its Delta version after the run (OPTIMIZE and VACUUM commit; a checkpoint does not)"),
        C("files_before", "bigint", doc="data files in the current snapshot before (DESCRIBE DETAIL numFiles)"),
        C("files_after", "bigint", doc="data files in the current snapshot after"),
        C("bytes_before", "bigint", doc="bytes of those files before (DESCRIBE DETAIL sizeInBytes)"),
        C("bytes_after", "bigint"),
        C("files_compacted", "bigint", doc="small files OPTIMIZE replaced by larger ones (they stay on storage until VACUUM)"),
        C("files_without_stats", "bigint", doc="data files that had no Delta statistics for data skipping (recomputed)"),
        C("vacuumed_files", "bigint", doc="files VACUUM deleted from storage: unreferenced for longer than retention_hours"),
        C("retention_hours", "int", doc="the VACUUM retention (ALTLAKE_HISTORY_RETENTION_HOURS)"),
        C("checkpointed", "boolean", doc="a Delta log checkpoint was written at the end"),
        C("optimize_s", "double"),
        C("stats_s", "double"),
        C("vacuum_s", "double"),
        C("checkpoint_s", "double"),
        C("error", "string", doc="why maintaining this table failed (the other tables were still maintained)"),
    ),
)

TABLES: dict[str, Table] = {
    t.name: t for t in (CRAWL_FILES, CANDIDATES, BATCHES, SCORES, PAIRS, RELEASES, TAKEDOWNS, PURGES, MAINTENANCE)
}
