"""Platform settings: one dataclass, filled from `ALTLAKE_*` environment variables over defaults.

Every runtime (CLI, Spark driver, worker container, Airflow task) reads the same names, so a
deployment configures altlake in one place. The README's configuration reference lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


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
    # Release filters (LAION-5B defaults).
    threshold_en: float = 0.28
    threshold_other: float = 0.26
    near_duplicate_cosine: float = 0.96
    # Release gate: pairs / ok scores must fall within these bounds (LAION-5B kept about 10-20%).
    kept_fraction_min: float = 0.01
    kept_fraction_max: float = 0.95
    # Batch planning: max download attempts per retryable failure class ("class=n,..."; others: 3).
    retry_limits: str = "dns=2,connect=3,timeout=3,http_5xx=3,http_429=5,error=2"
    # Scoring worker.
    user_agent: str = "altlake/0.1 (+https://github.com/altlake/altlake; image-text dataset research)"
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
            values[f.name] = _coerce(raw, type(getattr(cls(), f.name)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _coerce(raw: str, kind: type):
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind in (int, float):
        return kind(raw)
    return raw
