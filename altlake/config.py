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
    # Where releases are published: a local directory or s3://bucket/prefix.
    release_store: str = ""
    # S3-compatible endpoint (moto server in tests, MinIO, or empty for AWS itself).
    s3_endpoint: str = ""
    # Release filters (LAION-5B defaults).
    threshold_en: float = 0.28
    threshold_other: float = 0.26
    near_duplicate_cosine: float = 0.96
    # Scoring worker.
    user_agent: str = "altlake/0.1 (+https://github.com/altlake/altlake; image-text dataset research)"
    batch_size: int = 10_000
    # Airflow.
    airflow_home: str = "airflow_home"

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
