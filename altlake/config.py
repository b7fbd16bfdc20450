"""Platform settings: one dataclass, filled from `ALTLAKE_*` environment variables over defaults.

Every runtime (CLI, Spark driver, worker container, Airflow task) reads the same names, so a
deployment configures altlake in one place. Every value is checked when Settings is made, and all
bad values are reported together (SettingsError, one line each). The comment lines above each field
are its documentation: the README's configuration reference is generated from them
(altlake.settings_reference, `altlake config reference --write README.md`).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from altlake import logs
from altlake.profiles import PROFILE_NAME
from altlake.schemas import (
    AESTHETIC_PRESETS,
    AESTHETIC_RANGE,
    LAION_HIGH_RESOLUTION_MIN_SIDE,
    RETRYABLE_STATUSES,
    DerivedSubset,
    aesthetic_minimum,
    derived_subsets,
)

log = logging.getLogger(__name__)

ENV_PREFIX = "ALTLAKE_"
# ALTLAKE_* variables the code reads that are no setting (not reported as unknown): tracebacks for
# developers (altlake_cli.main), the search service's worker processes, and the tests' screenshots
# folder and Postgres binaries.
OTHER_VARIABLES = ("ALTLAKE_DEBUG", "ALTLAKE_SERVE_ARGS", "ALTLAKE_SCREENSHOTS", "ALTLAKE_PG_BIN", "ALTLAKE_LOG_FORMAT", "ALTLAKE_RUN_ID")
# The values of the enumerated settings, also what the code that dispatches on them accepts.
WORKER_BACKENDS = ("local", "aws_batch", "kubernetes")
SPARK_BACKENDS = ("local", "submit", "emr_serverless")
WORKER_DECODES = ("auto", "cpu", "gpu")
# Boolean words of the environment; any other word is an error, not a silent false.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
# Download attempts of a retryable failure class that retry_limits does not name.
DEFAULT_RETRY_LIMIT = 3


class SettingsError(ValueError):
    """Every bad setting at once, one line each: a deployment fixes them in one go, not one per restart."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def report(self, prog: str) -> str:
        """What a command prints: one line per bad value, each naming the command."""
        return "\n".join(f"{prog}: {line}" for line in self.problems)


# Its docstring is the default the configuration reference shows (the value depends on the machine).
def _default_cache_dir() -> str:
    """`~/.cache/altlake` (`$XDG_CACHE_HOME/altlake` when that is set)"""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "altlake")


@dataclass(frozen=True)
class Settings:
    # Where the Delta tables, the catalog and the warehouse live: a local directory or an
    # `s3a://bucket/prefix` URL.
    lake_dir: str = "lake"
    # Downloaded jars, model caches and benchmark venvs: outside any checkout.
    cache_dir: str = field(default_factory=_default_cache_dir)
    # JDBC URL of a Hive metastore that concurrent users and jobs share (Postgres, credentials in the
    # URL: `jdbc:postgresql://host:5432/metastore?user=...&password=...`). Empty: an embedded Derby
    # catalog under the lake, which admits one JVM at a time.
    metastore_url: str = ""
    # Spark master: `local[*]`, `spark://host:7077`, or `yarn` / `k8s://...` when a cluster manager
    # submits the job.
    spark_master: str = "local[*]"
    # Driver memory of locally started sessions, a JVM size such as `512m` or `2g`.
    spark_driver_memory: str = "2g"
    # `spark.sql.shuffle.partitions` of every session: the partitions of the shuffles that adaptive execution
    # does not plan, and the tasks of the lake's bookkeeping (VACUUM's file listing, Delta snapshots).
    spark_shuffle_partitions: int = 8
    # The partitions a query's shuffle is first cut into (`spark.sql.adaptive.coalescePartitions.initialPartitionNum`);
    # adaptive execution then merges neighbours up to `spark_partition_size`, so this is the most a shuffle
    # gets. 256 keeps partitions near that size up to 16 GB of shuffled data (10M candidates' scores are about
    # 14 GB); raise it for more. A fixed 8 partitions failed the release at 4.14M candidates (Java heap space).
    spark_max_shuffle_partitions: int = 256
    # The size adaptive execution merges a shuffle's partitions up to (`spark.sql.adaptive.advisoryPartitionSizeInBytes`),
    # a size such as `64m`; on few cores, smaller when that leaves a core idle.
    spark_partition_size: str = "64m"
    # `true` where the cluster supplies the Delta jars and the Hive catalog (EMR Serverless sets it: its
    # Delta and the Glue Data Catalog): sessions then add neither the cached jars nor an embedded Derby
    # metastore.
    spark_provided: bool = False
    # Where releases are published: a local directory or `s3://bucket/prefix`; empty: `<lake>/releases`.
    release_store: str = ""
    # S3-compatible endpoint, `http(s)://host[:port]` (MinIO, the moto server in tests); empty for AWS
    # itself.
    s3_endpoint: str = ""
    # DynamoDB table that arbitrates Delta commits on an `s3a://` lake, so several jobs can commit to one
    # table at once (S3 alone can lose a concurrent commit); created on first use. Empty: off (one writer).
    dynamodb_log_table: str = ""
    # AWS region of that DynamoDB table.
    dynamodb_region: str = "us-east-1"
    # DynamoDB endpoint, `http(s)://host[:port]` (the moto server in tests, a local DynamoDB); empty for
    # AWS itself.
    dynamodb_endpoint: str = ""
    # The deployment's model profiles file, TOML of `[profiles.<name>]` tables (see
    # [Models and model profiles](#models-and-model-profiles)); empty: only the built-in `demo`.
    model_profiles: str = ""
    # The profile `altlake score` and the score_candidates form use unless told another.
    model_profile: str = "demo"

    # Release filters.

    # CLIP similarity an English pair needs to enter a release, overriding, for every row, the threshold
    # of the profile that scored it; empty: the profile's (LAION-5B's 0.28 for rows that record none).
    threshold_en: float | None = None
    # The same for captions in other languages or none; empty: the profile's (LAION-5B's 0.26 for rows
    # that record none).
    threshold_other: float | None = None
    # A release whose rows were scored by different CLIP weights mixes incomparable similarities and
    # embeddings: `true` allows it (`altlake build-release --allow-mixed-models`); otherwise it is refused.
    allow_mixed_models: bool = False
    # Image-embedding cosine above which a pair is marked a near duplicate.
    near_duplicate_cosine: float = 0.96
    # The `aesthetic` derived subset (published beside en/multi/nolang, altlake.schemas.DERIVED_SUBSETS):
    # rows rated at least this, a LAION-Aesthetics V2 preset (`4.5plus`, `4.75plus`, `5plus`, `6plus`,
    # `6.25plus`, `6.5plus`) or a number from 1 to 10; `5plus` is the subset Stable Diffusion v1 was
    # trained on.
    aesthetic_min: str = "5plus"
    # The `high_resolution` derived subset: both original sides at least this many pixels
    # (LAION-High-Resolution's 1024x1024).
    high_resolution_min_side: int = LAION_HIGH_RESOLUTION_MIN_SIDE
    # The `research-safe` derived subset: punsafe known and at most this (0 to 1); 0.5 is the search's
    # safe mode cut (LAION's img2dataset examples keep punsafe < 0.5 too).
    research_safe_max_punsafe: float = 0.5
    # Release gate: at least this share of the ok scores must end up in `pairs` (LAION-5B kept about
    # 10-20%).
    kept_fraction_min: float = 0.01
    # Release gate: at most this share of the ok scores may end up in `pairs`.
    kept_fraction_max: float = 0.95
    # Batch planning: download attempts per retryable failure class (`class=n,...`; classes not named:
    # 3) before a row stays failed.
    retry_limits: str = "dns=2,connect=3,timeout=3,http_5xx=3,http_429=5,host_refused=5,error=2"

    # Scoring worker. Its politeness settings are overridden by `altlake score` flags and the
    # score_candidates form; each batch's `_SUCCESS` records what it ran with, under `politeness`.

    # The downloader's honest User-Agent, also matched against robots.txt.
    user_agent: str = "altlake/0.1 (+https://github.com/altlake/altlake; image-text dataset research)"
    # AI-crawler robots.txt tokens (comma-separated): a path their OWN robots.txt group disallows, or an
    # X-Robots-Tag scoped to one of them, is opted out of AI use (`ai_crawler_robots`, `x_robots_tag`).
    # img2dataset builds LAION-style datasets, so a site blocking it has opted out of ours.
    ai_crawler_tokens: str = "CCBot,GPTBot,Google-Extended,anthropic-ai,ClaudeBot,img2dataset"
    # Open requests per host at any time (`--per-host-concurrency`).
    per_host_concurrency: int = 8
    # Request starts per second per host, robots.txt and redirects included; 0 = no rate limit
    # (`--per-host-rate`).
    per_host_rate: float = 0.0
    # A 429/503 with Retry-After (seconds or an HTTP date) pauses every request to its host until then,
    # capped at this many seconds (`--max-retry-after`).
    max_retry_after_s: float = 30.0
    # Consecutive 429/503 answers after which a host is given up for the batch: its remaining URLs end
    # `host_refused` without a request (retried in a later run); 0 = never give up (`--host-refusal-limit`).
    host_refusal_limit: int = 5
    # Candidates per scoring batch.
    batch_size: int = 10_000
    # Finished batches are merged into `scores` together, up to this many result rows per MERGE: each
    # MERGE has a fixed cost (jobs, a commit, a scan of the uids in `scores`). A group is staged in the
    # lake's scratch folder (its rows once: about 1.4 KB a row with 512-d embeddings); the driver
    # holds one batch.
    merge_rows: int = 1_000_000
    # Where Airflow runs `altlake score` per batch: `local` (a subprocess), `aws_batch` or `kubernetes`
    # (GPU containers built from infra/docker/worker.Dockerfile).
    worker_backend: str = "local"
    # The worker container image (Kubernetes; AWS Batch takes it from the job definition).
    worker_image: str = ""
    # Extra `altlake score` flags, e.g. `--device cuda --decode gpu` or `--model-threads 8` (not model flags:
    # models come from the run's profile). `--model-threads` (default: one per CPU the worker may use) is
    # torch's CPU thread count for the models, recorded as `model_threads` in each batch's `_SUCCESS`: on
    # the CPU a row's scores change in their last bits with it, so a bit-exact re-run uses the same count.
    worker_args: str = ""
    # GPUs requested per batch container.
    worker_gpus: int = 1
    # CPUs requested per batch container (downloads and decoding).
    worker_cpus: int = 8
    # Where `altlake score` decodes and resizes JPEGs: `cpu` (libjpeg-turbo at a reduced DCT scale), `gpu`
    # (batched nvJPEG + resize on the device), `auto` = `gpu` when the models run on CUDA.
    worker_decode: str = "auto"
    # Memory (GB) requested per batch container.
    worker_memory_gb: int = 24
    # Airflow retries per batch, with exponential backoff.
    worker_retries: int = 3
    # AWS Batch backend: the job queue batches are submitted to.
    aws_batch_job_queue: str = ""
    # AWS Batch backend: the job definition (it names the worker image).
    aws_batch_job_definition: str = ""
    # AWS Batch backend: the Airflow connection to AWS; empty: boto3's default credentials.
    aws_batch_conn_id: str = "aws_default"
    # Kubernetes backend: the namespace of the worker pods.
    k8s_namespace: str = "altlake"

    # Airflow.

    # `AIRFLOW_HOME` of `altlake airflow` (`make airflow`).
    airflow_home: str = "airflow_home"
    # Time-based DAG schedules (the monthly ingest of the newest crawl, daily takedowns). `altlake
    # airflow` turns them off on a laptop, where the crawl list cannot be fetched; asset-triggered
    # runs (score_candidates, build_release) follow either way.
    schedules: bool = True
    # Where Airflow tasks run Spark jobs: `local` (in the task's process), `submit` (spark-submit to
    # spark_master) or `emr_serverless` (EMR Serverless through the amazon provider).
    spark_backend: str = "local"
    # Common Crawl's crawl list, read to pick the newest crawl for the monthly schedule.
    crawl_list_url: str = "https://index.commoncrawl.org/collinfo.json"
    # EMR Serverless (spark_backend=emr_serverless, see infra/aws/README.md): the application jobs run in.
    emr_application_id: str = ""
    # EMR Serverless: the ARN of the IAM role jobs run as.
    emr_execution_role_arn: str = ""
    # EMR Serverless: the s3:// prefix holding spark_jobs/*.py and altlake.zip (our packages).
    emr_code_uri: str = ""
    # EMR Serverless: the s3:// prefix for driver and executor logs.
    emr_log_uri: str = ""
    # EMR Serverless: the Airflow connection to AWS.
    emr_aws_conn_id: str = "aws_default"

    # Takedowns.

    # Hours a takedown's deleted rows stay in the tables' Delta history (a wrong takedown can be undone,
    # releases in flight finish) before `altlake takedown purge` deletes them for good.
    takedown_grace_hours: int = 168
    # Hours of Delta history every table keeps (its delta.deletedFileRetentionDuration and
    # delta.logRetentionDuration, set by the purge): how far back time travel and `build-release
    # --rebuild` reach, except across a purged takedown. At least takedown_grace_hours.
    history_retention_hours: int = 720
    # A domain blocklist in UT1's layout (a `domains` file, a category folder, the list's root folder or
    # its .tar.gz), loaded as domain takedowns before each extraction (once per file content), so its
    # domains never become candidates (`altlake takedown add --kind domain --blocklist PATH` loads one by
    # hand). Empty: none.
    domain_blocklist: str = ""
    # The UT1 categories to load from a blocklist's root folder or archive, comma-separated, e.g.
    # `adult,phishing`.
    domain_blocklist_categories: str = ""

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise SettingsError(problems)

    @property
    def derived_subsets(self) -> tuple[DerivedSubset, ...]:
        """The derived subsets a release built with these settings publishes."""
        return derived_subsets(aesthetic_minimum(self.aesthetic_min), self.high_resolution_min_side, self.research_safe_max_punsafe)

    @property
    def release_dir(self) -> str:
        return self.release_store or os.path.join(self.lake_dir, "releases")

    @property
    def jar_dir(self) -> Path:
        return Path(self.cache_dir) / "jars"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Defaults, then `ALTLAKE_<FIELD>` variables, then explicit keyword overrides.

        A value that is not of its field's type stays the raw string, so that validation reports it
        beside every other bad value; unknown ALTLAKE_* variables are logged once per process."""
        env = os.environ if environ is None else environ
        for line in unknown_variables(env):
            if line not in _WARNED:
                _WARNED.add(line)
                log.warning(line)
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(raw, str(f.type))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def exit_status(prog: str, entry: Callable[[], int]) -> int:
    """`entry()`'s exit status, for the CLI and every script's main(): no user ever sees a traceback.
    Bad settings are their lines and status 2; bad input (ValueError, OSError: a missing file, a
    malformed list) one line and status 2, argparse's status for bad input; anything else (a bug) one
    line naming a file under the cache that holds the traceback, and status 1. ALTLAKE_DEBUG=1 lets
    exceptions through, for developers."""
    structured = logs.configure(prog)
    started = time.monotonic()
    try:
        status = entry()
    except SettingsError as exc:
        print(exc.report(prog), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        if os.environ.get("ALTLAKE_DEBUG"):
            raise
        print(f"{prog}: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the user, the traceback in a file
        if os.environ.get("ALTLAKE_DEBUG"):
            raise
        print(f"{prog}: failed: {type(exc).__name__}: {one_line(exc)} (traceback: {_save_traceback(prog)})", file=sys.stderr)
        return 1
    # With ALTLAKE_LOG_FORMAT set, one line per job says how it ended and how long it took. Unset, nothing:
    # a process whose root logger prints INFO (the demo's in-process Airflow) would show it to a person.
    if structured:
        logging.getLogger("altlake").info("finished", extra={"exit_status": int(status or 0), "seconds": round(time.monotonic() - started, 3)})
    return status


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (Java errors carry whole stack traces)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:1000]


def _save_traceback(prog: str) -> str:
    """The current exception's traceback in <cache>/logs/, for the bug report; returns the path."""
    import traceback

    folder = os.path.join(os.environ.get(env_name("cache_dir")) or _default_cache_dir(), "logs")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{prog.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    with open(path, "w") as out:
        out.write(traceback.format_exc())
    return path


def env_name(name: str) -> str:
    """The environment variable of a Settings field."""
    return f"{ENV_PREFIX}{name.upper()}"


def non_defaults(settings: Settings) -> dict[str, object]:
    """The fields whose value differs from the default, by variable name (what a deployment chose)."""
    return {env_name(f.name): getattr(settings, f.name) for f in fields(settings) if getattr(settings, f.name) != _default(f)}


def _default(f: Field) -> object:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Warning lines for ALTLAKE_* variables that are no setting: a typo would otherwise be ignored
    without a word and the default used."""
    known = [env_name(f.name) for f in fields(Settings)] + list(OTHER_VARIABLES)
    suffixes = [name.removeprefix(ENV_PREFIX) for name in known]  # compared without the prefix every name shares
    lines = []
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known):
        close = [ENV_PREFIX + m for m in difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, n=3, cutoff=0.75)]
        hint = f"did you mean {' or '.join(close)}?" if close else "see `altlake config reference`"
        lines.append(f"{name} is not an altlake setting and is ignored: {hint}")
    return lines


_WARNED: set[str] = set()


def parse_retry_limits(spec: str) -> dict[str, int]:
    """"dns=2,timeout=3" -> max attempts per retryable class; unnamed classes get DEFAULT_RETRY_LIMIT."""
    limits = dict.fromkeys(RETRYABLE_STATUSES, DEFAULT_RETRY_LIMIT)
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in RETRYABLE_STATUSES or not value.strip().isdigit():
            raise ValueError(f"bad retry limit {item!r}: expected CLASS=N with CLASS one of {', '.join(RETRYABLE_STATUSES)}")
        limits[name] = int(value)
    return limits


# --- validation: one check per field, beyond its type; each returns what is allowed, or None -------------

Check = Callable[[Any], str | None]


def _one_of(*allowed: str) -> Check:
    return lambda value: None if value in allowed else f"must be one of {', '.join(allowed)}"


def _at_least(low: float, what: str) -> Check:
    return lambda value: None if value >= low else f"must be {what} of at least {low}"


def _between(low: float, high: float, what: str) -> Check:
    return lambda value: None if low <= value <= high else f"must be {what} from {low} to {high}"


def _matches(pattern: str, what: str) -> Check:
    regex = re.compile(pattern)
    return lambda value: None if regex.fullmatch(value) else f"must be {what}"


def _url(schemes: tuple[str, ...], what: str, empty_ok: bool = True) -> Check:
    """A URL of one of `schemes` with a host (and a valid port, when it names one)."""

    def check(value: str) -> str | None:
        if empty_ok and value == "":
            return None
        try:
            parts = urlsplit(value)
            valid = parts.scheme in schemes and bool(parts.hostname) and (parts.port is None or parts.port > 0)
        except ValueError:  # a port out of range or not a number
            valid = False
        return None if valid else f"must be {what}"

    return check


def _location(what: str) -> Check:
    """A local path, or an s3:// / s3a:// URL: the only schemes the lake and the release store read."""
    s3 = _url(("s3", "s3a"), "")
    return lambda value: None if value and ("://" not in value or not s3(value)) else f"must be {what}"


def _raises(parse: Callable[[str], object]) -> Check:
    """A check by a parser that raises ValueError with what is allowed."""

    def check(value: str) -> str | None:
        try:
            parse(value)
        except ValueError as exc:
            return str(exc)
        return None

    return check


def _shell_words(value: str) -> str | None:
    try:
        shlex.split(value)
    except ValueError as exc:
        return f"must be shell words, as on a command line ({exc})"
    return None


def _aesthetic(value: str) -> str | None:
    try:
        aesthetic_minimum(value)
    except ValueError:
        low, high = AESTHETIC_RANGE
        return f"must be a LAION-Aesthetics V2 preset ({', '.join(AESTHETIC_PRESETS)}) or a number from {low:g} to {high:g}"
    return None


def _names(what: str) -> Check:
    """A comma-separated list of names, read as the code reads it: blanks around and between are skipped."""
    name = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
    return lambda value: None if all(name.fullmatch(item.strip()) for item in value.split(",") if item.strip()) else f"must be {what}"


_CONN_ID = _matches(r"[\w.:/#!()-]*", "an Airflow connection id, or empty for boto3's default credentials")
_COSINE = _between(-1.0, 1.0, "a cosine similarity")
_FRACTION = _between(0.0, 1.0, "a fraction")
_SPARK_MASTER = (
    r"local(\[(\d+|\*)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|spark://[^\s/:,]+:\d+(,[^\s/:,]+:\d+)*|yarn|k8s://\S+"
)

_CHECKS: dict[str, Check] = {
    "lake_dir": _location("a local directory or an s3a://bucket/prefix URL"),
    "cache_dir": _matches(r".+", "a directory"),
    "metastore_url": _matches(r"(jdbc:\w+:.+)?", "empty (embedded Derby) or a JDBC URL such as jdbc:postgresql://host:5432/metastore"),
    "spark_master": _matches(_SPARK_MASTER, "local, local[N], local[*], spark://host:port, yarn or k8s://https://host:port"),
    "spark_driver_memory": _matches(r"(?i)\d+[kmgt]?b?", "a JVM memory size such as 512m, 2g or 1t"),
    "spark_shuffle_partitions": _at_least(1, "a partition count"),
    "spark_max_shuffle_partitions": _at_least(1, "a partition count"),
    "spark_partition_size": _matches(r"(?i)[1-9]\d*[kmgt]?b?", "a size such as 512k, 64m or 1g"),
    "release_store": lambda value: None if value == "" else _location("empty, a local directory or an s3://bucket/prefix URL")(value),
    "s3_endpoint": _url(("http", "https"), "empty (AWS) or an http(s)://host[:port] URL"),
    "dynamodb_log_table": _matches(r"([A-Za-z0-9_.-]{3,255})?", "empty (off) or a DynamoDB table name (3-255 of letters, digits, _ . -)"),
    "dynamodb_region": _matches(r"[a-z]{2}(-[a-z]+)+-\d", "an AWS region such as us-east-1"),
    "dynamodb_endpoint": _url(("http", "https"), "empty (AWS) or an http(s)://host[:port] URL"),
    "model_profile": _matches(PROFILE_NAME.pattern, "a profile name (letters, digits, . _ -)"),
    "threshold_en": _COSINE,
    "threshold_other": _COSINE,
    "near_duplicate_cosine": _COSINE,
    "aesthetic_min": _aesthetic,
    "high_resolution_min_side": _at_least(1, "a side length in pixels"),
    "research_safe_max_punsafe": _between(0.0, 1.0, "a probability"),
    "kept_fraction_min": _FRACTION,
    "kept_fraction_max": _FRACTION,
    "retry_limits": _raises(parse_retry_limits),
    "user_agent": _matches(r"[\x20-\x7e]+", "a non-empty User-Agent of printable ASCII on one line"),
    "ai_crawler_tokens": _names("comma-separated robots.txt product tokens (letters, digits, . _ -)"),
    "per_host_concurrency": _at_least(1, "a request count"),
    "per_host_rate": _at_least(0, "a rate"),
    "max_retry_after_s": _at_least(0, "a number of seconds"),
    "host_refusal_limit": _at_least(0, "an answer count"),
    "batch_size": _at_least(1, "a candidate count"),
    "merge_rows": _at_least(1, "a row count"),
    "worker_backend": _one_of(*WORKER_BACKENDS),
    "worker_image": _matches(r"\S*", "a container image reference without spaces"),
    "worker_args": _shell_words,
    "worker_gpus": _at_least(0, "a GPU count"),
    "worker_cpus": _at_least(1, "a CPU count"),
    "worker_decode": _one_of(*WORKER_DECODES),
    "worker_memory_gb": _at_least(1, "a size in GB"),
    "worker_retries": _at_least(0, "a retry count"),
    "aws_batch_job_queue": _matches(r"[\w:/.-]*", "an AWS Batch job queue name or ARN"),
    "aws_batch_job_definition": _matches(r"[\w:/.-]*", "an AWS Batch job definition name or ARN"),
    "aws_batch_conn_id": _CONN_ID,
    "k8s_namespace": _matches(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", "a Kubernetes namespace (lower-case letters, digits, -)"),
    "airflow_home": _matches(r".+", "a directory"),
    "spark_backend": _one_of(*SPARK_BACKENDS),
    "crawl_list_url": _url(("http", "https"), "an http(s):// URL", empty_ok=False),
    "emr_application_id": _matches(r"[a-z0-9]*", "an EMR Serverless application id (lower-case letters and digits)"),
    "emr_execution_role_arn": _matches(r"(arn:aws[\w-]*:iam::\d{12}:role/\S+)?", "an IAM role ARN, arn:aws:iam::<account>:role/<name>"),
    "emr_code_uri": _url(("s3",), "an s3://bucket/prefix URL"),
    "emr_log_uri": _url(("s3",), "an s3://bucket/prefix URL"),
    "emr_aws_conn_id": _CONN_ID,
    "takedown_grace_hours": _at_least(0, "a number of hours"),
    "history_retention_hours": _at_least(0, "a number of hours"),
    "domain_blocklist_categories": _names("comma-separated UT1 category names"),
}


def _cross_problems(settings: Settings, bad: set[str]) -> list[str]:
    """Checks between fields, skipped when one of them is already reported."""
    problems = []
    if not bad & {"kept_fraction_min", "kept_fraction_max"} and settings.kept_fraction_min > settings.kept_fraction_max:
        problems.append(
            f"ALTLAKE_KEPT_FRACTION_MIN ({settings.kept_fraction_min}) must be at most ALTLAKE_KEPT_FRACTION_MAX ({settings.kept_fraction_max})"
        )
    if not bad & {"takedown_grace_hours", "history_retention_hours"} and settings.history_retention_hours < settings.takedown_grace_hours:
        problems.append(
            f"ALTLAKE_HISTORY_RETENTION_HOURS ({settings.history_retention_hours}) must be at least "
            f"ALTLAKE_TAKEDOWN_GRACE_HOURS ({settings.takedown_grace_hours}): history must outlive the grace period"
        )
    return problems


def _problems(settings: Settings) -> list[str]:
    """One line per bad value: the variable, the value and what is allowed."""
    problems, bad = [], set()
    for f in fields(settings):
        value = getattr(settings, f.name)
        problem = _type_problem(str(f.type), value)
        if problem is None and value is not None and f.name in _CHECKS:
            problem = _CHECKS[f.name](value)
        if problem:
            bad.add(f.name)
            problems.append(f"{env_name(f.name)}={value!r}: {problem}")
    return problems + _cross_problems(settings, bad)


def _type_problem(annotation: str, value: object) -> str | None:
    """Whether `value` is of the field's type (annotations are strings: postponed evaluation)."""
    kind, optional = annotation.removesuffix(" | None"), annotation.endswith(" | None")
    if value is None:
        return None if optional else "must be set"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool" and not isinstance(value, bool):
        return f"must be a boolean: {', '.join(f'{yes}/{no}' for yes, no in zip(TRUE_WORDS, FALSE_WORDS))}"
    if kind == "int" and not (number and isinstance(value, int)):
        return "must be a whole number" + (" (empty: unset)" if optional else "")
    if kind == "float" and not (number and math.isfinite(value)):
        return "must be a number" + (" (empty: unset)" if optional else "")
    if kind == "str" and not isinstance(value, str):
        return "must be a string"
    return None


def _coerce(raw: str, annotation: str) -> object:
    """An environment string -> the field's type; unparseable stays the string, for validation to report."""
    kind = annotation.removesuffix(" | None")
    if kind == "bool":
        word = raw.strip().lower()
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else raw
    try:
        return int(raw) if kind == "int" else float(raw) if kind == "float" else raw
    except ValueError:
        return raw
