"""Platform settings: one dataclass, filled from `ALTLAKE_*` environment variables over defaults.

Every runtime (CLI, Spark driver, worker container, Airflow task) reads the same names, so a
deployment configures altlake in one place. The README's configuration reference lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from altlake.schemas import LAION_HIGH_RESOLUTION_MIN_SIDE, DerivedSubset, aesthetic_minimum, derived_subsets


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "altlake")


@dataclass(frozen=True)
class Settings:
    # Where the Delta tables, the catalog and the warehouse live (local dir or s3a:// URL).
    lake_dir: str = "lake"
    # Downloaded jars and other heavy caches, outside any checkout.
    cache_dir: str = field(default_factory=_default_cache_dir)
    # Spark: local[*], spark://host:7077, or yarn / k8s:// when submitted by a cluster manager.
    spark_master: str = "local[*]"
    spark_driver_memory: str = "2g"
    spark_shuffle_partitions: int = 8
    # The cluster supplies the Delta jars and the Hive catalog (EMR Serverless: its Delta and the
    # Glue Data Catalog): sessions then add neither the cached jars nor an embedded Derby metastore.
    spark_provided: bool = False
    # Where releases are published: a local directory or s3://bucket/prefix.
    release_store: str = ""
    # S3-compatible endpoint (moto server in tests, MinIO, or empty for AWS itself).
    s3_endpoint: str = ""
    # Model profiles (altlake.profiles): the deployment's TOML file of [profiles.<name>] tables (empty:
    # only the built-in `demo`), and the profile a scoring run uses unless told another.
    model_profiles: str = ""
    model_profile: str = "demo"
    # Release filters. The similarity thresholds override, for every row, those of the profile that
    # scored it (None: the profile's; rows that record no profile get LAION-5B's 0.28 / 0.26).
    threshold_en: float | None = None
    threshold_other: float | None = None
    # A release whose rows were scored by different CLIP weights mixes incomparable similarities
    # and embeddings: refused unless this is set (`altlake build-release --allow-mixed-models`).
    allow_mixed_models: bool = False
    near_duplicate_cosine: float = 0.96
    # Derived subsets published beside en/multi/nolang (altlake.schemas.DERIVED_SUBSETS). aesthetic:
    # rows rated at least this, a LAION-Aesthetics V2 preset (4.5plus ... 6.5plus) or a number 1-10;
    # 5plus is the subset Stable Diffusion v1 was trained on.
    aesthetic_min: str = "5plus"
    # high_resolution: both original sides at least this (LAION-High-Resolution's 1024x1024).
    high_resolution_min_side: int = LAION_HIGH_RESOLUTION_MIN_SIDE
    # research-safe: punsafe known and at most this; 0.5 is the search's safe mode cut (LAION's
    # img2dataset examples keep punsafe < 0.5 too).
    research_safe_max_punsafe: float = 0.5
    # Release gate: pairs / ok scores must fall within these bounds (LAION-5B kept about 10-20%).
    kept_fraction_min: float = 0.01
    kept_fraction_max: float = 0.95
    # Batch planning: max download attempts per retryable failure class ("class=n,..."; others: 3).
    retry_limits: str = "dns=2,connect=3,timeout=3,http_5xx=3,http_429=5,host_refused=5,error=2"
    # Scoring worker.
    user_agent: str = "altlake/0.1 (+https://github.com/altlake/altlake; image-text dataset research)"
    # AI-crawler robots.txt tokens (comma-separated): a path their OWN robots.txt group disallows (or
    # an X-Robots-Tag scoped to them) is opted out of AI use, `ai_crawler_robots`. img2dataset builds
    # LAION-style datasets, so a site blocking it has opted out of ours.
    ai_crawler_tokens: str = "CCBot,GPTBot,Google-Extended,anthropic-ai,ClaudeBot,img2dataset"
    # Politeness to every host (`altlake score` flags and score_candidates form fields override them;
    # each batch's _SUCCESS records what it ran with). Open requests per host at any time:
    per_host_concurrency: int = 8
    # Request starts per second per host (robots.txt and redirects included); 0 = no rate limit.
    per_host_rate: float = 0.0
    # A 429/503 with Retry-After pauses every request to its host until then, capped at this many seconds.
    max_retry_after_s: float = 30.0
    # Consecutive 429/503 answers after which a host is given up for the batch: its remaining URLs
    # end `host_refused` without a request (retried in a later run); 0 = never give up.
    host_refusal_limit: int = 5
    batch_size: int = 10_000
    # Where Airflow runs `altlake score` per batch: local (subprocess) | aws_batch | kubernetes.
    worker_backend: str = "local"
    worker_image: str = ""  # the worker container (kubernetes; AWS Batch takes it from the job definition)
    worker_args: str = ""  # extra `altlake score` flags, e.g. "--model ViT-L-14 --pretrained laion2b_s32b_b82k"
    worker_gpus: int = 1  # GPUs requested per batch container
    worker_cpus: int = 8  # CPUs requested per batch container (downloads and decoding)
    worker_decode: str = "auto"  # where the worker decodes JPEGs: cpu | gpu (nvJPEG) | auto (gpu when on CUDA)
    worker_memory_gb: int = 24  # memory requested per batch container
    worker_retries: int = 3  # Airflow retries per batch, with exponential backoff
    aws_batch_job_queue: str = ""
    aws_batch_job_definition: str = ""
    aws_batch_conn_id: str = "aws_default"
    k8s_namespace: str = "altlake"
    # Airflow.
    airflow_home: str = "airflow_home"
    # Time-based DAG schedules (the monthly ingest of the newest crawl, daily takedowns). `altlake
    # airflow` turns them off on a laptop, where the crawl list cannot be fetched; asset-triggered
    # runs (score_candidates, build_release) follow either way.
    schedules: bool = True
    # Where Airflow tasks run Spark jobs: local (in the task's process) | submit (spark-submit to
    # spark_master) | emr_serverless (EMR Serverless through the amazon provider).
    spark_backend: str = "local"
    # Common Crawl's crawl list, read to pick the newest crawl for the monthly schedule.
    crawl_list_url: str = "https://index.commoncrawl.org/collinfo.json"
    # EMR Serverless (spark_backend=emr_serverless); see infra/aws/README.md.
    emr_application_id: str = ""
    emr_execution_role_arn: str = ""
    emr_code_uri: str = ""  # s3:// prefix holding spark_jobs/*.py and altlake.zip (our packages)
    emr_log_uri: str = ""  # s3:// prefix for driver/executor logs
    emr_aws_conn_id: str = "aws_default"
    # Takedowns: hours a takedown's deleted rows stay in the tables' Delta history (a wrong takedown
    # can be undone, releases in flight finish) before `altlake takedown purge` deletes them for good.
    takedown_grace_hours: int = 168
    # Hours of Delta history every table keeps (its delta.deletedFileRetentionDuration and
    # delta.logRetentionDuration): how far back time travel and `build-release --rebuild` reach,
    # except across a purged takedown. At least takedown_grace_hours.
    history_retention_hours: int = 720
    # A domain blocklist in UT1's layout (a `domains` file, a category folder, the list's root folder or
    # its .tar.gz), loaded as domain takedowns before each extraction (once per file content), so its
    # domains never become candidates. Empty: none. Categories (comma-separated) pick a root's or
    # archive's folders, e.g. "adult,phishing".
    domain_blocklist: str = ""
    domain_blocklist_categories: str = ""

    def __post_init__(self) -> None:
        aesthetic_minimum(self.aesthetic_min)  # raises, naming the presets
        if self.high_resolution_min_side < 1:
            raise ValueError(f"ALTLAKE_HIGH_RESOLUTION_MIN_SIDE must be a side length of at least 1 pixel, not {self.high_resolution_min_side}")
        if not 0.0 <= self.research_safe_max_punsafe <= 1.0:
            raise ValueError(f"ALTLAKE_RESEARCH_SAFE_MAX_PUNSAFE must be a probability from 0 to 1, not {self.research_safe_max_punsafe}")
        if self.takedown_grace_hours < 0:
            raise ValueError(f"ALTLAKE_TAKEDOWN_GRACE_HOURS must be >= 0, not {self.takedown_grace_hours}")
        if self.history_retention_hours < self.takedown_grace_hours:
            raise ValueError(
                f"ALTLAKE_HISTORY_RETENTION_HOURS ({self.history_retention_hours}) must be at least "
                f"ALTLAKE_TAKEDOWN_GRACE_HOURS ({self.takedown_grace_hours}): history must outlive the grace period"
            )

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
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> "Settings":
        """Defaults, then `ALTLAKE_<FIELD>` variables, then explicit keyword overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"ALTLAKE_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(raw, _KINDS.get(str(f.type).removesuffix(" | None"), str))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# Field annotations (strings, with postponed evaluation) -> the type an environment value becomes.
_KINDS = {"bool": bool, "int": int, "float": float}


def _coerce(raw: str, kind: type):
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind in (int, float):
        return kind(raw)
    return raw
