"""Release build: candidates + scores -> gated `pairs` table -> an immutable, reproducible release.

Filters, in stage order (each stage counted in the manifest's `stages`, altlake.stats):
  candidates -> scored -> ok -> similarity >= the threshold of the row's model profile for its
  language group (en / other; Settings.threshold_en / _other, when given, override every profile's)
  -> exact dedup (same url+text, then same image sha256; the winner is the highest similarity,
  then the smallest uid) -> takedowns (url, domain, sha256, md5, pdq).
Rows scored by different CLIP weights are refused together unless Settings.allow_mixed_models.
Near-duplicate images are marked, not dropped: a row whose image cosine to a better row reaches
Settings.near_duplicate_cosine names it in `near_duplicate_of`. The search runs inside Spark: rows
are grouped by k-means cells of about a thousand rows, and each is compared with its own cell and the
few nearest that can hold such a row (`route`), so its cost grows linearly; one cell (small
releases) is exact.

Everything reads the source tables at pinned Delta versions, and every choice is deterministic,
so `rebuild_release` reproduces a published release byte for byte from its manifest (and, when
takedowns in force now reach it, the release minus exactly those rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):  # run as a script by spark-submit: make our packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from altlake import storage
from altlake.config import Settings, exit_status
from altlake.paths import EMBEDDING_KINDS, INDEX_DIR, MANIFEST, RELEASE_EMBEDDINGS_DIR, RELEASE_GX_DIR, RELEASE_PARQUET_DIR, REPORT, derived_subset_file
from altlake.profiles import LAION_THRESHOLD_EN, LAION_THRESHOLD_OTHER, ProfileError, load_profiles
from altlake.schemas import (
    AESTHETIC_RANGE,
    EMBEDDED_OK_ROWS,
    FILE_DONE,
    FILE_FAILED,
    NO_LANGUAGE,
    OPT_OUT_SIGNALS,
    PAIRS,
    RELEASES,
    SCORES,
    STATUS_OK,
    STATUS_OPTED_OUT,
    DerivedSubset,
)
from altlake.stats import StageStats, by_name, chain
from altlake.urls import canonical_url
from spark_jobs import publish
from spark_jobs.lake import check_holds, lake_paths, read_table, table_path, table_version
from spark_jobs.quality import SUITES, QualityGateError, preload_gx, validate
from spark_jobs.report import manifest_stages, write_report
from spark_jobs.takedowns import HASH_COLUMNS, drop_taken_down, match_takedowns

SOURCE_TABLES = ("candidates", "scores", "takedowns")
# Near duplicates: the exact cosine of the pairs two levels of k-means cells bring together (`route`).
# Before: random-hyperplane LSH (recall 0.98, bucket rows of bands x rows made it the costliest
# step), then every cell within the radius (exact, but a row met nearly its whole topic on CLIP-like
# rows: n^2 in all).
NEAR_DUPLICATE_METHOD = "cosine within k-means cells, two levels: each row meets its own cell and the nearest cells within the radius"
NEAR_SEED = 20_240_501
NEAR_SINGLE_CELL_ROWS = 20_000  # up to here, one cell (exact): 20k x 20k cosines are a few seconds of BLAS
NEAR_CELL_ROWS = 1_000  # rows a cell beyond: a row's comparisons stay the same at any size
NEAR_PROBES = 6  # cells a row visits beyond its own, at most (recall 0.9997 at 1M CLIP-like rows: bench/near_duplicates)
NEAR_COARSE_PROBES = 2  # coarse cells whose fine cells a row is routed against, its own included
NEAR_SAMPLE_PER_CELL = 32  # k-means sample rows per cell
NEAR_SAMPLE_MAX = 200_000  # sample rows at most (about 400 MB of float32 in the driver at 512-d)
NEAR_KMEANS_ITERATIONS = 8
NEAR_BALANCE_ROUNDS = 10  # rounds of cell weights that even out the cells' rows
NEAR_BALANCE_STEP = 0.25  # a full cell's weight rises by this share of the typical nearest-to-next gap a round
NEAR_RADIUS_SLACK = 1e-4  # float32 rounding of the routing distances: never lose a pair to it
NEAR_BLOCK_CELLS = 1 << 23  # cosines held at once in a cell (32 MB of float32)
NEAR_FILTER_SHARE = 4  # the filter's basis has dim / this many axes: 128 at 512-d (64 let 5% of the pairs through, 128 0.1%)
NEAR_FILTER_SLACK = 1e-3  # float32 rounding of the filter's distances: it may keep a pair too many, never lose one
HISTOGRAM_BINS = 20
# LAION-Aesthetics' 1-10 rating scale (altlake.schemas.AESTHETIC_RANGE) in half points.
AESTHETIC_BINS = 18
# The scored-similarity histogram is finer: thresholds sit at 0.26 / 0.28, where 0.05 bins blur the cut.
SCORED_BINS = 100
TOP_LANGUAGES = 20
TOP_LICENSES = 20
SAMPLES = 4  # pairs per kind shown in the report: kept, rejected by the threshold, nearest the threshold
SAMPLES_HIDDEN_MAX = 10_000  # taken-down uids the samples leave out on the driver; more are joined away
SIZE_EDGES = (0, 128, 256, 512, 1024, 2048, 4096)  # original side lengths (px) the report buckets by


def subset_of(language_column):
    """LAION-5B's language groups: en, nolang (detection unreliable), multi (everything else)."""
    from pyspark.sql import functions as F

    return F.when(language_column == "en", "en").when(language_column == NO_LANGUAGE, NO_LANGUAGE).otherwise("multi")


def threshold_group(subset_column):
    """The two groups thresholds are set for: en (threshold_en) and other (threshold_other: multi, nolang)."""
    from pyspark.sql import functions as F

    return F.when(subset_column == "en", "en").otherwise("other")


def current_versions(spark, settings: Settings) -> dict[str, int]:
    """The source tables' latest versions: pinned once, so one build reads one consistent state."""
    return {name: table_version(spark, settings, name) for name in SOURCE_TABLES}


# --- thresholds per model profile --------------------------------------------------------------------

# The profile key of ok rows that record none (scored before profiles, or with models chosen by flags).
UNRECORDED_PROFILE = "(none)"
# The scores columns naming the weights that produced a row's values (clip_model, text_model, ...).
MODEL_COLUMNS = tuple(c.name for c in SCORES.columns if c.name.endswith("_model"))


class MixedModelsError(ValueError):
    """The rows to release were scored by different CLIP weights, and the build was not told to mix them."""


@dataclass(frozen=True)
class Thresholds:
    """The similarity thresholds a release applies: (en, other) per model profile that scored its
    rows, or under the key None one pair for every row (whenever the profiles agree, so that a
    single-profile release records its thresholds as releases did before profiles)."""

    by_profile: dict[str | None, tuple[float, float]]
    near_duplicate_cosine: float

    @classmethod
    def of(cls, by_profile: dict[str, tuple[float, float]], near_duplicate_cosine: float) -> Thresholds:
        values = set(by_profile.values())
        if len(values) == 1:
            return cls({None: values.pop()}, near_duplicate_cosine)
        return cls(dict(sorted(by_profile.items())), near_duplicate_cosine)

    def section(self) -> dict[str, float]:
        """The manifest's `thresholds` (hashed into the release id): en / multi / nolang, each prefixed
        with "<profile>:" when profiles differ, and near_duplicate_cosine."""
        out: dict[str, float] = {}
        for profile, (en, other) in self.by_profile.items():
            prefix = "" if profile is None else f"{profile}:"
            out.update({f"{prefix}en": en, f"{prefix}multi": other, f"{prefix}{NO_LANGUAGE}": other})
        return {**out, "near_duplicate_cosine": self.near_duplicate_cosine}

    @classmethod
    def from_section(cls, section: dict[str, float]) -> Thresholds:
        """Back from a manifest (a rebuild applies exactly what the release applied)."""
        by_profile: dict[str | None, tuple[float, float]] = {}
        for key, value in section.items():
            profile, _, group = key.rpartition(":")
            if group == "en":
                by_profile[profile or None] = (value, section[f"{profile}:multi" if profile else "multi"])
        return cls(by_profile, section["near_duplicate_cosine"])

    def of_profile(self, profile: str) -> tuple[float, float]:
        return self.by_profile[None] if None in self.by_profile else self.by_profile[profile]

    def groups(self) -> dict[str, float]:
        """Threshold group -> its threshold: en / other, or "<profile>: en" / "<profile>: other"."""
        return {
            name: threshold
            for profile, pair in self.by_profile.items()
            for name, threshold in zip(self._names(profile), pair)
        }

    def group_column(self):
        """Each row's threshold group (rows with `subset` and `profile` columns)."""
        from pyspark.sql import functions as F

        group = threshold_group(F.col("subset"))
        return group if None in self.by_profile else F.concat(_profile_key(), F.lit(": "), group)

    def column(self):
        """Each row's similarity threshold: its profile's, for its language group."""
        from pyspark.sql import functions as F

        en_row = F.col("subset") == "en"
        expression = None
        for profile, (en, other) in self.by_profile.items():
            value = F.when(en_row, F.lit(en)).otherwise(F.lit(other))
            if profile is None:
                return value
            match = _profile_key() == profile
            expression = F.when(match, value) if expression is None else expression.when(match, value)
        return expression

    def lowest(self) -> float:
        return min(min(pair) for pair in self.by_profile.values())

    @staticmethod
    def _names(profile: str | None) -> tuple[str, str]:
        return ("en", "other") if profile is None else (f"{profile}: en", f"{profile}: other")


def _profile_key():
    from pyspark.sql import functions as F

    return F.coalesce(F.col("profile"), F.lit(UNRECORDED_PROFILE))


def _with_profile(scores):
    """`scores` at a version written before the profile column was declared: every row unrecorded."""
    from pyspark.sql import functions as F

    return scores if "profile" in scores.columns else scores.withColumn("profile", F.lit(None).cast("string"))


def model_use(spark, settings: Settings, scores_version: int) -> list[dict]:
    """The ok rows of `scores` per profile and model ids ({profile, clip_model, ..., rows}): which
    profiles and weights a release's rows come from."""
    from pyspark.sql import functions as F

    scores = _with_profile(read_table(spark, settings, "scores", scores_version))
    columns = [c for c in MODEL_COLUMNS if c in scores.columns]
    grouped = scores.where(F.col("status") == STATUS_OK).groupBy(_profile_key().alias("profile"), *columns).count()
    return [{**{c: r[c] for c in ("profile", *columns)}, "rows": int(r["count"])} for r in grouped.collect()]


def check_models(used: list[dict], allow_mixed: bool) -> None:
    """Refuse rows of different CLIP weights in one release (their similarities and embeddings are not
    comparable) unless allowed; the error names each model and its rows."""
    clips = Counter()
    for use in used:
        if use.get("clip_model"):
            clips[use["clip_model"]] += use["rows"]
    if len(clips) > 1 and not allow_mixed:
        listed = ", ".join(f"{model} ({n} rows)" for model, n in sorted(clips.items(), key=lambda kv: (-kv[1], kv[0])))
        raise MixedModelsError(
            f"the scored rows mix {len(clips)} CLIP models: {listed}; their similarities and embeddings are not comparable. "
            "Rescore the other rows with one profile (the score_candidates form's \"Rescore other profiles' rows\", or "
            "`altlake plan-batches --rescore-for PROFILE`), or release them together with --allow-mixed-models (ALTLAKE_ALLOW_MIXED_MODELS=true)"
        )


def resolve_thresholds(settings: Settings, used: list[dict]) -> Thresholds:
    """The thresholds of each profile that scored rows (the deployment's profiles file; LAION-5B's for
    rows that record none), each replaced by Settings.threshold_en / _other where those are given."""
    profiles = load_profiles(settings.model_profiles)
    names = sorted({use["profile"] for use in used}) or [UNRECORDED_PROFILE]
    unknown = [name for name in names if name != UNRECORDED_PROFILE and name not in profiles]
    if unknown and None in (settings.threshold_en, settings.threshold_other):
        raise ProfileError(settings.model_profiles or "built-in profiles", [
            f"rows were scored with model profile {name!r}, which the deployment's profiles do not define (known: "
            f"{', '.join(sorted(profiles))}): add it to ALTLAKE_MODEL_PROFILES, or give both thresholds explicitly"
            for name in unknown
        ])  # fmt: skip
    by_profile = {}
    for name in names:
        profile = profiles.get(name)
        en, other = (profile.threshold_en, profile.threshold_other) if profile else (LAION_THRESHOLD_EN, LAION_THRESHOLD_OTHER)
        by_profile[name] = (
            en if settings.threshold_en is None else settings.threshold_en,
            other if settings.threshold_other is None else settings.threshold_other,
        )
    return Thresholds.of(by_profile, settings.near_duplicate_cosine)


def release_models(spark, settings: Settings, versions: dict[str, int]) -> tuple[list[dict], Thresholds]:
    """The profiles and weights a release cut from `versions` holds (model_use), refused when they mix
    CLIP models unless allowed, and the thresholds it applies."""
    used = model_use(spark, settings, versions["scores"])
    check_models(used, settings.allow_mixed_models)
    return used, resolve_thresholds(settings, used)


def _profiles_section(settings: Settings, used: list[dict], thresholds: Thresholds) -> dict:
    """The manifest's `profiles`: per profile, its ok rows, the weight ids (with their digests) it
    scored with, the thresholds applied and its definition (None: not in the deployment's file)."""
    profiles = load_profiles(settings.model_profiles)
    section: dict[str, dict] = {}
    for use in sorted(used, key=lambda u: u["profile"]):
        name = use["profile"]
        entry = section.setdefault(name, {
            "ok_rows": 0,
            "models": {c: [] for c in MODEL_COLUMNS if c in use},
            "thresholds": dict(zip(("en", "other"), thresholds.of_profile(name))),
            "definition": asdict(profiles[name]) if name in profiles else None,
        })  # fmt: skip
        entry["ok_rows"] += use["rows"]
        for column, ids in entry["models"].items():
            if use[column] is not None and use[column] not in ids:
                ids.append(use[column])
                ids.sort()
    return section


# --- pairs -----------------------------------------------------------------------------------------


class Stopwatch:
    """Seconds per step of a build, in order: where a release's time goes (Spark runs lazily, so a step
    is timed up to the action that runs it)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(self.seconds.get(step, 0.0) + now - self._last, 2)
        self._last = now


def compute_pairs(spark, settings: Settings, versions: dict[str, int], thresholds: Thresholds):
    """(pairs DataFrame in the PAIRS schema, cached; facts: stages (altlake.stats), statuses, models, the
    near-duplicate blocking, and for the report the similarity of every scored row and sample pairs) at
    `versions`, each row cut at its profile's threshold."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    watch = Stopwatch()
    candidates = read_table(spark, settings, "candidates", versions["candidates"])
    if "url_canonical" not in candidates.columns:  # a version written before the column was declared
        candidates = candidates.withColumn("url_canonical", F.udf(canonical_url, "string")(F.col("url")))
    scores = _with_profile(read_table(spark, settings, "scores", versions["scores"]))
    if "aesthetic" not in scores.columns:  # a version written before the aesthetic columns were declared
        scores = scores.withColumn("aesthetic", F.lit(None).cast("float")).withColumn("aesthetic_model", F.lit(None).cast("string"))
    # Requests are few, and the pairs and the samples each match them five ways (url, domain and three
    # hashes), each a scan: held in memory, the ten scans are not ten Delta file listings (a job each).
    takedowns = read_table(spark, settings, "takedowns", versions["takedowns"]).cache()

    # A pair scored before a later crawl showed its page opting out never enters a release.
    opted_in = candidates.where(F.col("opt_out").isNull()) if "opt_out" in candidates.columns else candidates
    # The filters and dedup run without the embeddings (two thirds of a row at 512-d): they join back
    # for the kept rows only, so what is cached and shuffled stays small at millions of rows.
    embeddings = ("img_emb", "text_emb")
    # Where `scores` enforces its check that ok rows have both embeddings, finding their nulls would read
    # every embedding's bytes for nothing (1.1 GB at 831k candidates); an older version, or a lake whose
    # rows break the check, is read for them.
    if check_holds(spark, settings, "scores", EMBEDDED_OK_ROWS, versions["scores"]):
        has_embeddings = F.lit(True)
    else:
        has_embeddings = F.col("img_emb").isNotNull() & F.col("text_emb").isNotNull()
    # Only the columns the release reads on are joined and cached: the pairs' own, and those the filters
    # and facts need. Page URLs, WAT paths, errors and timings made the cache 335 MB at 831k candidates.
    read_on = {*PAIRS.column_names, "status", "profile", *MODEL_COLUMNS} - set(embeddings)
    from_scores = [c for c in scores.columns if c in read_on - {"uid", "url"}]  # the url is the candidate's
    narrow = scores.withColumn("_has_embeddings", has_embeddings).select("uid", "_has_embeddings", *from_scores)
    scored = opted_in.select(*[c for c in opted_in.columns if c in read_on]).join(narrow, "uid").cache()
    ok = scored.where(
        (F.col("status") == STATUS_OK) & F.col("sha256").isNotNull() & F.col("_has_embeddings") & F.col("similarity").isNotNull()
    ).withColumn("subset", subset_of(F.col("language"))).withColumn("threshold", thresholds.column())  # fmt: skip
    above = ok.where(F.col("similarity") >= F.col("threshold"))
    best_first = [F.col("similarity").desc(), F.col("uid").asc()]
    by_pair = above.withColumn("_rank", F.row_number().over(Window.partitionBy("url", "text").orderBy(*best_first)))
    by_pair = by_pair.where("_rank = 1").drop("_rank")
    deduped = by_pair.withColumn("_rank", F.row_number().over(Window.partitionBy("sha256").orderBy(*best_first)))
    deduped = deduped.where("_rank = 1").drop("_rank").cache()
    kept = drop_taken_down(deduped, takedowns, HASH_COLUMNS)
    # kept: blocking, both sides of every candidate pair and the result read it (four joins with
    # scores' embeddings otherwise); dropped once the pairs are kept. The frames that carry the
    # embeddings (2.3 KB a row: 700 MB at 301k pairs, 1.7 GB at 753k) are kept on local disk, not in
    # memory: held in a 2 GB driver's memory they left write_pairs' sort too little, which spilled
    # (14-28 s against 11-14 s) and, in one of five builds at 831k candidates, failed with
    # UNABLE_TO_ACQUIRE_MEMORY; at 2.07M candidates caching the pairs in memory ran out of heap.
    # The gate's GX jobs read the pairs from disk (+5-8 s at 301k pairs when GX ran twice the jobs it runs now).
    # Only rows that can be kept bring their embeddings to the join's shuffle (305k of 498k ok rows at
    # 831k candidates): no kept row is below the lowest threshold of any profile.
    keepable = scores.where((F.col("status") == STATUS_OK) & (F.col("similarity") >= thresholds.lowest()))
    with_embeddings = kept.join(keepable.select("uid", *embeddings), "uid").persist(StorageLevel.DISK_ONLY)
    n_kept = kept.count()
    watch.lap("filter_and_dedup")
    marks, blocking = mark_near_duplicates(with_embeddings, thresholds.near_duplicate_cosine, n_kept)
    marks = marks.cache()
    n_near = marks.count()  # the near-duplicate search runs here; once cached, the join sees how small marks are
    marked = with_embeddings.join(marks, "uid", "left")
    pairs = marked.select(*[F.col(c.name).cast(c.type) for c in PAIRS.columns]).persist(StorageLevel.DISK_ONLY)
    pairs.count()  # written to local disk now: it reads with_embeddings and marks, dropped next
    with_embeddings.unpersist()
    marks.unpersist()
    watch.lap("near_duplicates")

    statuses = {r["status"]: r["count"] for r in scored.groupBy("status").count().orderBy(F.desc("count"), "status").collect()}
    model_columns = ("clip_model", "text_model", "nsfw_model", "watermark_model", "aesthetic_model")
    # one pass over the ok rows: their count, those above the threshold and every model that scored them
    of_ok = ok.agg(F.count("*").alias("ok"), F.count(F.when(F.col("similarity") >= F.col("threshold"), 1)).alias("above"),
                   *[F.collect_set(c).alias(c) for c in model_columns]).first()  # fmt: skip
    n = {"candidates": candidates.count(), "opted_in": opted_in.count(), "scored": sum(statuses.values()), "ok": of_ok["ok"],
         "above": of_ok["above"], "deduped": deduped.count(), "pairs": n_kept}  # fmt: skip
    not_ok = {status: count for status, count in statuses.items() if status != STATUS_OK}
    not_ok["ok_without_embeddings"] = statuses.get(STATUS_OK, 0) - n["ok"]
    stages = chain([
        StageStats("scored", n["candidates"], {"page_opted_out": n["candidates"] - n["opted_in"], "not_scored": n["opted_in"] - n["scored"]}),
        StageStats("downloaded", n["scored"], not_ok),
        StageStats("threshold", n["ok"], {"below_threshold": n["ok"] - n["above"]}),
        StageStats("exact_dedup", n["above"], {"duplicate": n["above"] - n["deduped"]}),
        StageStats("takedowns", n["deduped"], {"taken_down": n["deduped"] - n["pairs"]}),
        StageStats("near_dedup", n["pairs"], marked={"near_duplicate": n_near}),
    ])  # fmt: skip
    models = {column: sorted(of_ok[column]) for column in model_columns}
    scored_similarity = _scored_similarity(ok, thresholds)
    samples = _samples(deduped, ok, match_takedowns(ok, takedowns, HASH_COLUMNS).select("uid").distinct())
    scored.unpersist()
    deduped.unpersist()
    takedowns.unpersist()
    watch.lap("counts_and_samples")
    facts = {"stages": stages, "statuses": statuses, "models": models, "scored_similarity": scored_similarity, "samples": samples,
             "near_duplicates": blocking.section(),
             "seconds": watch.seconds}  # fmt: skip
    return pairs, facts


def _scored_similarity(ok, thresholds: Thresholds, bins: int = SCORED_BINS) -> dict:
    """Similarity of every ok row, kept and rejected, per threshold group and split at its threshold:
    the kept-pairs histogram alone cannot show what the threshold cuts away."""
    from pyspark.sql import functions as F

    split = ok.groupBy(
        thresholds.group_column().alias("group"),
        _bin_index("similarity", bins).alias("i"),
        (F.col("similarity") >= F.col("threshold")).alias("above"),
    ).count()
    groups = {
        name: {"threshold": threshold, "below": [0] * bins, "above": [0] * bins}
        for name, threshold in thresholds.groups().items()
    }
    for r in split.collect():
        groups[r["group"]]["above" if r["above"] else "below"][r["i"]] = int(r["count"])
    return {"edges": [round(i / bins, 6) for i in range(bins + 1)], "groups": groups}


def _samples(deduped, ok, taken_down, n: int = SAMPLES, hidden_max: int = SAMPLES_HIDDEN_MAX) -> dict[str, list[dict]]:
    """A few pairs to look at: kept, rejected by the threshold, and the ok rows closest to their threshold
    on either side; taken-down rows (uids in `taken_down`) are never shown. uid order (a hash) makes an
    arbitrary, reproducible pick. (Rows with their `threshold` column: `deduped` holds the pairs' rows
    before takedowns, and before they are cut to PAIRS.)

    Up to `hidden_max` taken-down uids are read once and each pick takes that many rows more, then
    drops them: joining every ok row with the requests for each pick was 26 of the 40 s of counts and
    samples at 4.14M candidates. With more than that, the rows are joined with them instead."""
    from pyspark.sql import functions as F

    hidden = {r["uid"] for r in taken_down.limit(hidden_max + 1).collect()}
    if len(hidden) > hidden_max:
        deduped, ok, hidden = deduped.join(taken_down, "uid", "left_anti"), ok.join(taken_down, "uid", "left_anti"), set()

    def pick(df, *order) -> list[dict]:
        # the order is total (uid breaks ties), so the first n rows not hidden are those of the rows without them
        rows = [r for r in df.orderBy(*order).limit(n + len(hidden)).collect() if r["uid"] not in hidden][:n]
        return [
            {"uid": r["uid"], "url": r["url"], "text": r["text"], "language": r["language"],
             "similarity": float(r["similarity"]), "threshold": r["threshold"]}
            for r in rows
        ]  # fmt: skip

    distance = F.abs(F.col("similarity") - F.col("threshold"))
    return {
        "kept": pick(deduped, "uid"),
        "rejected": pick(ok.where(F.col("similarity") < F.col("threshold")), "uid"),
        "near_threshold": pick(ok, distance, "uid"),
    }


@dataclass(frozen=True)
class Cells:
    """How one release's near-duplicate search was blocked (recorded in its manifest). Up to
    NEAR_SINGLE_CELL_ROWS rows it is one cell and exact; beyond, a row meets its own cell and at most
    `probes` others (the nearest by the bisector bound), so a pair can be missed only where that bound
    could not rule out more cells (bench/near_duplicates measures the recall)."""

    cells: int
    coarse: int
    sample: int
    probes: int
    coarse_probes: int

    def section(self) -> dict:
        return {"cells": self.cells, "coarse_cells": self.coarse, "sample": self.sample, "probes": self.probes,
                "coarse_probes": self.coarse_probes, "exact": self.cells == 1}  # fmt: skip


def near_duplicate_policy() -> dict:
    """What a release id hashes for its near duplicates: the method and every parameter its result
    follows from (beyond the rows)."""
    return {"method": NEAR_DUPLICATE_METHOD, "rows_per_cell": NEAR_CELL_ROWS, "probes": NEAR_PROBES,
            "coarse_probes": NEAR_COARSE_PROBES, "seed": NEAR_SEED}  # fmt: skip


def cell_count(n_rows: int) -> int:
    """One cell up to NEAR_SINGLE_CELL_ROWS rows, then about NEAR_CELL_ROWS rows a cell: a row's
    comparisons stay the same whatever the size of the release."""
    if n_rows <= NEAR_SINGLE_CELL_ROWS:
        return 1
    return max(2, round(n_rows / NEAR_CELL_ROWS))


def _unit_rows(blobs) -> np.ndarray:
    vectors = publish.embeddings_array(blobs).astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _distances(vectors: np.ndarray, centroids: np.ndarray, weights: np.ndarray | float = 0.0) -> np.ndarray:
    """|x - c|^2 - |x|^2 + weight for every row and centroid (rows x cells): the order of a row's cells."""
    return (centroids * centroids).sum(axis=1)[None, :] + weights - 2 * vectors @ centroids.T


def train_cells(sample: np.ndarray, cells: int, seed: int = NEAR_SEED, iterations: int = NEAR_KMEANS_ITERATIONS) -> np.ndarray:
    """k-means centroids (cells x dim) of unit rows: plain Lloyd rounds from seeded rows. Their quality
    moves only the cost of the search, so a few rounds do."""
    if cells <= 1 or len(sample) <= cells:
        return np.zeros((1, sample.shape[1]), np.float32)
    centroids = sample[np.random.default_rng(seed).choice(len(sample), cells, replace=False)].copy()
    for _ in range(iterations):
        nearest = _distances(sample, centroids).argmin(axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, sample)
        counts = np.bincount(nearest, minlength=cells)
        filled = counts > 0  # an empty cell keeps its centroid: it is routed to, and holds nothing
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids.astype(np.float32)


@dataclass(frozen=True)
class Partition:
    """Cells of one level: centroids, and a weight each that evens out their rows. A row belongs to
    the cell of least |x - c|^2 + weight (a power diagram: k-means on CLIP-like rows leaves some
    cells several times fuller than others, and a cell's comparisons grow with its rows squared).
    Cells still meet along planes, so the bisector bound of `planes` holds."""

    centroids: np.ndarray  # (cells, dim)
    weights: np.ndarray  # (cells,)
    gaps: np.ndarray  # (cells, cells): |c - d|, computed once per release, not per batch

    @classmethod
    def train(cls, sample: np.ndarray, cells: int, rounds: int = NEAR_BALANCE_ROUNDS) -> Partition:
        centroids = train_cells(sample, cells)
        weights = np.zeros(len(centroids), np.float32)
        if len(centroids) > 1:  # nudge full cells' weights up and empty ones' down, on the sample
            distance = _distances(sample, centroids)
            two = np.partition(distance, 1, axis=1)
            scale = float(np.median(two[:, 1] - two[:, 0]))
            target = len(sample) / len(centroids)
            trial, least = weights.copy(), np.inf
            for _ in range(rounds + 1):  # keep the weights of least cost on the sample (none, if no round helps)
                counts = np.bincount((distance + trial).argmin(axis=1), minlength=len(centroids))
                if (cost := float(np.square(counts, dtype=np.float64).sum())) < least:
                    weights, least = trial.copy(), cost
                trial += (NEAR_BALANCE_STEP * scale * (counts - target) / target).astype(np.float32)
        squared = (centroids * centroids).sum(axis=1)
        gaps = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * centroids @ centroids.T, 0.0))
        return cls(centroids, weights, gaps)

    def planes(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's cell, and its distance to the plane between that cell and every other (rows x
        cells; 0 for its own). A row y of cell c within r of x (cell h) lies on c's side of their
        plane while x lies on h's, so x is within r of it: cells beyond r cannot hold such a row."""
        distance = _distances(vectors, self.centroids, self.weights[None, :])
        home = distance.argmin(axis=1)
        to_plane = (distance - distance[np.arange(len(home)), home][:, None]) / (2 * np.maximum(self.gaps[home], 1e-12))
        return home, to_plane


@dataclass(frozen=True)
class Blocking:
    """Two levels of cells: `coarse` ones, each split into its own `fine` cells, numbered from
    `first[c]`. A row is routed against the coarse centroids and the fine ones of at most
    NEAR_COARSE_PROBES coarse cells, not against every cell: routing stays a small share of the
    comparisons however many cells a release has."""

    coarse: Partition
    fine: tuple[Partition, ...]
    first: np.ndarray  # (coarse,): the number of each coarse cell's first fine cell
    basis: np.ndarray | None = None  # (dim, dim / NEAR_FILTER_SHARE): the cells' filter (best_better_neighbours)

    @property
    def cells(self) -> int:
        return int(self.first[-1]) + len(self.fine[-1].centroids)

    @classmethod
    def train(cls, sample: np.ndarray, cells: int) -> Blocking:
        """About `cells` fine cells in about sqrt(cells) coarse ones, each coarse cell split by its
        share of the sample. Only the fine cells are evened out: evening out the coarse ones cuts
        clusters of the data apart, and near duplicates then fall on both sides (recall 0.988
        instead of 0.998 at 1M rows). The filter's basis is the leading axes of the sample's spread
        around its fine centroids: rows of one cell differ most along those."""
        coarse = Partition.train(sample, max(1, round(math.sqrt(cells))), rounds=0)
        owner = coarse.planes(sample)[0]
        fine, spread = [], []
        for c in range(len(coarse.centroids)):
            mine = sample[owner == c]
            fine.append(Partition.train(mine, max(1, round(cells * len(mine) / len(sample)))) if len(mine) else Partition.train(sample[:1], 1))
            spread.append(mine - fine[-1].centroids[fine[-1].planes(mine)[0]] if len(mine) else mine)
        first = np.cumsum([0] + [len(f.centroids) for f in fine[:-1]])
        return cls(coarse, tuple(fine), first, _leading_axes(np.concatenate(spread), sample.shape[1] // NEAR_FILTER_SHARE))

    @classmethod
    def single(cls, dim: int) -> Blocking:
        one = Partition.train(np.zeros((1, dim), np.float32), 1)
        return cls(one, (one,), np.zeros(1, np.int64))


def _leading_axes(rows: np.ndarray, k: int) -> np.ndarray | None:
    """The k axes along which `rows` spread most (dim x k, orthonormal columns); None when there
    are fewer rows than axes to find."""
    if k < 1 or len(rows) < k:
        return None
    _, axes = np.linalg.eigh(rows.T.astype(np.float64) @ rows)  # ascending
    return np.ascontiguousarray(axes[:, ::-1][:, :k], dtype=np.float32)


def _true_cells(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.nonzero of a 2-d mask, in its order: found in the flat mask and split into row and column,
    about 8x faster than np.nonzero's 2-d walk (4.4 of the 15 s the cells of 301k rows took)."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def route(vectors: np.ndarray, blocking: Blocking, min_cosine: float, probes: int = NEAR_PROBES,
          coarse_probes: int = NEAR_COARSE_PROBES) -> tuple[np.ndarray, list[np.ndarray]]:  # fmt: skip
    """Each unit row's home cell, and the higher-numbered cells it visits: those whose planes (at
    both levels) are within r = sqrt(2 - 2 min_cosine) of it, nearest first, at most `probes`,
    through at most `coarse_probes` coarse cells (its own included). A pair at the cosine is
    compared in the home of its row with the lower home, which visits the other's home unless a cap
    cut it: with caps at least the cells, every such pair is compared, in exactly one cell."""
    radius = math.sqrt(max(0.0, 2 - 2 * min_cosine)) + NEAR_RADIUS_SLACK
    n = len(vectors)
    owner, to_coarse = blocking.coarse.planes(vectors)
    nearest = np.argsort(to_coarse, axis=1, kind="stable")[:, :coarse_probes]
    home = np.zeros(n, np.int64)
    rows, cells, bounds = [], [], []
    for c, fine in enumerate(blocking.fine):
        through = np.flatnonzero((owner == c) | ((nearest == c).any(axis=1) & (to_coarse[:, c] <= radius)))
        if not len(through):
            continue
        within, to_fine = fine.planes(vectors[through])
        at_home = owner[through] == c
        home[through[at_home]] = blocking.first[c] + within[at_home]
        bound = np.maximum(to_coarse[through, c][:, None], to_fine)  # a row of that fine cell is past both planes
        i, j = _true_cells(bound <= radius)
        rows.append(through[i])
        cells.append(blocking.first[c] + j)
        bounds.append(bound[i, j])
    row, cell, bound = (np.concatenate(x) for x in (rows, cells, bounds))
    higher = cell > home[row]
    row, cell, bound = row[higher], cell[higher], bound[higher]
    order = np.lexsort((cell, bound, row))  # per row, nearest plane first (ties by cell: reproducible)
    row, cell = row[order], cell[order]
    starts = np.searchsorted(row, np.arange(n + 1))
    return home, [np.sort(cell[starts[r] : min(starts[r + 1], starts[r] + probes)]) for r in range(n)]


def best_better_neighbours(home: np.ndarray, visitors: np.ndarray, rank_home: np.ndarray, rank_visitors: np.ndarray,
                           min_cosine: float, basis: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """For every row of a cell (its home rows, then its visitors) the lowest rank among the rows it
    is compared with here at cosine >= min_cosine and ranked before it (inf: none). Home rows meet
    home rows and visitors; visitors meet home rows only (visitors of one cell meet elsewhere).
    `basis` (dim x k, orthonormal columns): the cosines are taken only of the pairs whose projections
    are within the radius, and a projection is never farther apart than its rows, so no pair is lost."""
    best_home = np.full(len(home), np.inf, np.float32)
    best_visitors = np.full(len(visitors), np.inf, np.float32)
    step = max(64, NEAR_BLOCK_CELLS // max(1, len(home)))  # one block of cosines at a time: bounded memory
    close = _Close(home, min_cosine, basis)
    for rows, ranks, best, is_home in ((home, rank_home, best_home, True), (visitors, rank_visitors, best_visitors, False)):
        for start in range(0, len(rows), step):
            i, j = close.pairs(rows[start : start + step])  # few: only the close pairs go on
            mine, theirs = ranks[start + i], rank_home[j]
            better = theirs < mine
            np.minimum.at(best, start + i[better], theirs[better])
            if not is_home:  # a home row below a visitor: the visitor is its better neighbour
                np.minimum.at(best_home, j[~better & (mine < theirs)], mine[~better & (mine < theirs)])
    return best_home, best_visitors


class _Close:
    """The pairs (row of a block, home row) at cosine >= min_cosine. With a basis P, only the pairs
    whose projections are within the radius get a cosine: |P(x - y)| <= |x - y| = sqrt(2 - 2 cos) for
    unit rows. That test is one product too: [Px, -|Px|^2/2, 1] . [Py, 1, -|Py|^2/2] >= -r^2/2."""

    def __init__(self, home: np.ndarray, min_cosine: float, basis: np.ndarray | None) -> None:
        self.home, self.min_cosine, self.basis = home, min_cosine, basis
        if basis is not None:
            self.bound = -(max(0.0, 2 - 2 * min_cosine) + NEAR_FILTER_SLACK) / 2
            self.lifted = self._lift(home, home_side=True)

    def _lift(self, rows: np.ndarray, home_side: bool) -> np.ndarray:
        projected = rows @ self.basis
        half = -(projected * projected).sum(axis=1, keepdims=True) / 2
        one = np.ones_like(half)
        return np.hstack([projected, one, half] if home_side else [projected, half, one])

    def pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.basis is None:
            return _true_cells(rows @ self.home.T >= self.min_cosine)
        i, j = _true_cells(self._lift(rows, home_side=False) @ self.lifted.T >= self.bound)
        keep = np.einsum("ij,ij->i", rows[i], self.home[j]) >= self.min_cosine
        return i[keep], j[keep]


def pick_cells(df, n_rows: int, cells: int | None = None, probes: int = NEAR_PROBES, coarse_probes: int = NEAR_COARSE_PROBES) -> tuple[Cells, Blocking]:
    """The blocking for the n_rows rows of df (uid, img_emb): k-means on a sample taken by uid (a
    hash: arbitrary, reproducible). `cells`: about how many (default: cell_count)."""
    cells = cell_count(n_rows) if cells is None else cells
    sample = min(NEAR_SAMPLE_MAX, NEAR_SAMPLE_PER_CELL * cells) if cells > 1 else 0
    blobs = df.orderBy("uid").select("img_emb").limit(sample).toArrow().column("img_emb").to_pylist() if sample else []
    if not blobs:
        return Cells(1, 1, 0, probes, coarse_probes), Blocking.single(1)
    blocking = Blocking.train(_unit_rows(blobs), cells)
    return Cells(blocking.cells, len(blocking.fine), len(blobs), probes, coarse_probes), blocking


def mark_near_duplicates(df, min_cosine: float, n_rows: int | None = None, cells: int | None = None, probes: int = NEAR_PROBES,
                         coarse_probes: int = NEAR_COARSE_PROBES):  # fmt: skip
    """(marks: (uid, near_duplicate_of) for each marked row of `df`, near_duplicate_of the best
    (highest similarity, then smallest uid) other row whose image embedding has cosine >= min_cosine
    that the search met; the blocking used). Only the marked rows, so the caller's join back to `df`
    can broadcast them (a few percent of the rows) instead of shuffling `df`'s embeddings. Rows are
    grouped by k-means cell, and each row is compared with its own cell and with the `probes`
    nearest cells that may hold such a row (`route`); one pass, one shuffle. One cell (up to
    NEAR_SINGLE_CELL_ROWS rows) is exact. Each cell keeps, per row, only its best better neighbour,
    so a crowd of copies (placeholders, logos) yields a row each, not its pairs. `n_rows`: the rows
    of df where known; `cells`: about how many cells (default: from the rows); `probes`,
    `coarse_probes`: the caps of `route`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    cells_used, blocking = pick_cells(df, df.count() if n_rows is None else n_rows, cells, probes, coarse_probes)

    @pandas_udf("array<int>")
    def cells_of(embeddings: pd.Series) -> pd.Series:
        if blocking.cells == 1 or not len(embeddings):
            return pd.Series([[0]] * len(embeddings))
        home, visits = route(_unit_rows(embeddings), blocking, min_cosine, probes, coarse_probes)
        return pd.Series([[int(h), *v.tolist()] for h, v in zip(home, visits)])

    def in_cell(rows: pd.DataFrame) -> pd.DataFrame:
        order = np.lexsort((rows["uid"].to_numpy(), -rows["similarity"].to_numpy(dtype=np.float64)))
        rank = np.empty(len(rows), np.float32)
        rank[order] = np.arange(len(rows), dtype=np.float32)  # 0: the best row (highest similarity, then smallest uid)
        at_home = rows["_visit"].to_numpy() == 0
        vectors = _unit_rows(rows["img_emb"].tolist())
        best_home, best_visitors = best_better_neighbours(vectors[at_home], vectors[~at_home], rank[at_home], rank[~at_home], min_cosine, blocking.basis)
        best = np.empty(len(rows), np.float32)
        best[at_home], best[~at_home] = best_home, best_visitors
        marked = np.flatnonzero(np.isfinite(best))
        winners = order[best[marked].astype(np.int64)]
        return pd.DataFrame({
            "uid": rows["uid"].to_numpy()[marked],
            "near_duplicate_of": rows["uid"].to_numpy()[winners],
            "_winner_sim": rows["similarity"].to_numpy(dtype=np.float32)[winners],
        })  # fmt: skip

    routed = df.select("uid", "similarity", "img_emb", F.posexplode(cells_of("img_emb")).alias("_visit", "_cell"))
    links = routed.groupBy("_cell").applyInPandas(in_cell, "uid string, near_duplicate_of string, _winner_sim float")
    best = links.withColumn(
        "_rank", F.row_number().over(Window.partitionBy("uid").orderBy(F.desc("_winner_sim"), "near_duplicate_of"))
    ).where("_rank = 1")
    return best.select("uid", "near_duplicate_of"), cells_used


def write_pairs(spark, settings: Settings, pairs, rows: int) -> int:
    """Replace the pairs table (`rows` rows) in one commit, clustered by subset and uid, a file per
    publish.COLLECT_ROWS rows or more; returns the new version. Each release file is read back by
    subset and uid range (`publish.collect_by_uid`): clustered, each read opens the few files, and
    row groups, that hold its range instead of every file."""
    files = max(settings.spark_shuffle_partitions, math.ceil(rows / publish.COLLECT_ROWS))
    clustered = pairs.repartitionByRange(files, "subset", "uid").sortWithinPartitions("subset", "uid")
    clustered.write.format("delta").mode("overwrite").save(table_path(settings, "pairs"))
    return table_version(spark, settings, "pairs")


# --- gates -----------------------------------------------------------------------------------------


def _copy_docs(docs_dir: str, target: str, options: storage.S3Options) -> None:
    """The gate's Data Docs (beside the lake, local or on S3) into the release's staging folder."""
    for name in storage.list_files(docs_dir, options, recursive=True):
        destination = Path(target, *name.split("/"))
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(storage.read_bytes(storage.join(docs_dir, name), options))


def gate(spark, settings: Settings, scores, pairs, stages: list[dict], docs_dir: str, lowest_threshold: float) -> dict:
    """GX suites for scores and pairs plus the cross-layer counts (pairs <= ok <= candidates, kept
    fraction within bounds). Data Docs go to docs_dir/<table>; any failure raises QualityGateError."""
    counted = by_name(stages)
    n_ok, n_candidates = counted["downloaded"].kept, counted["scored"].taken
    min_pairs = max(1, math.ceil(settings.kept_fraction_min * n_ok))
    max_pairs = min(n_ok, math.floor(settings.kept_fraction_max * n_ok))
    if min_pairs > max_pairs:  # no pairs table could pass: say why, in the gate's words, before GX would refuse the bounds
        raise QualityGateError(
            f"the release gate cannot pass: {n_ok} ok score(s) allow at most {max_pairs} pair(s) "
            f"(ALTLAKE_KEPT_FRACTION_MAX={settings.kept_fraction_max}) and a release needs at least {min_pairs}; "
            "score more candidates first"
        )
    layers = {
        "scores": [("expect_table_row_count_to_be_between", {"max_value": n_candidates})],
        "pairs": [
            ("expect_table_row_count_to_be_between", {"min_value": min_pairs, "max_value": max_pairs}),
            ("expect_column_values_to_be_between", {"column": "similarity", "min_value": lowest_threshold}),
        ],
    }  # fmt: skip
    reports = {
        name: validate(spark, name, df, SUITES[name] + layers[name], docs_dir=storage.join(docs_dir, name), store=storage.S3Options.of(settings))
        for name, df in (("scores", scores), ("pairs", pairs))
    }
    summary = {
        name: {
            "success": r.success,
            "evaluated": len(r.outcomes),
            "failed": [o.describe() for o in r.failures],
        }
        for name, r in reports.items()
    }
    for report in reports.values():
        report.raise_for_failures()
    return summary


# --- the release -----------------------------------------------------------------------------------


def _bin_index(column: str, bins: int, low: float = 0.0, high: float = 1.0):
    """The bin of `column` among `bins` equal bins over [low, high]; values outside land in the edge bins,
    nulls in none (`greatest` alone would put them in bin 0)."""
    from pyspark.sql import functions as F

    index = F.least(F.greatest(F.floor((F.col(column) - low) * (bins / (high - low))), F.lit(0)), F.lit(bins - 1)).cast("int")
    return F.when(F.col(column).isNotNull(), index)


def _distributions(pairs) -> tuple[dict, dict]:
    """The manifest's `histograms` (similarity, punsafe, pwatermark, aesthetic: equal bins, values outside
    in the edge bins) and `sizes` (original width and height, the LAION WIDTH/HEIGHT columns, bucketed at
    SIZE_EDGES), counted in one pass over the pairs (six jobs before, each a second or so of Spark's
    per-job cost). Nulls are in no bin."""
    from pyspark.sql import functions as F

    bins = {"similarity": (HISTOGRAM_BINS, 0.0, 1.0), "punsafe": (HISTOGRAM_BINS, 0.0, 1.0), "pwatermark": (HISTOGRAM_BINS, 0.0, 1.0),
            "aesthetic": (AESTHETIC_BINS, *AESTHETIC_RANGE)}  # fmt: skip
    sides = {"width": "original_width", "height": "original_height"}
    buckets = {
        **{name: (_bin_index(name, n, low, high), n) for name, (n, low, high) in bins.items()},
        **{name: (sum((F.col(column) >= edge).cast("int") for edge in SIZE_EDGES[1:]), len(SIZE_EDGES)) for name, column in sides.items()},
    }
    # a bucket column per distribution (each computed once a row; null for a null value), then a count
    # per (distribution, bucket)
    per_row = pairs.select(*[expression.alias(name) for name, (expression, _) in buckets.items()])
    found = per_row.agg(*[F.count(F.when(F.col(name) == i, 1)).alias(f"{name}_{i}") for name, (_, n) in buckets.items() for i in range(n)]).first()

    def counts(name: str) -> list[int]:
        return [int(found[f"{name}_{i}"]) for i in range(buckets[name][1])]

    histograms = {
        name: {"edges": [round(low + (high - low) * i / n, 6) for i in range(n + 1)], "counts": counts(name)}
        for name, (n, low, high) in bins.items()
    }
    return histograms, {"edges": list(SIZE_EDGES), **{name: counts(name) for name in sides}}


def _release_inputs(versions: dict[str, int], thresholds: Thresholds, derived: tuple[DerivedSubset, ...]) -> dict:
    """What a release id hashes: the source versions and every parameter that shapes the rows and files."""
    return {
        "sources": {k: versions[k] for k in SOURCE_TABLES},
        "thresholds": thresholds.section(),
        "near_duplicates": near_duplicate_policy(),
        "derived_subsets": {d.name: d.filter for d in derived},
    }


def _derived_section(derived: tuple[DerivedSubset, ...], rows: dict[str, int]) -> dict[str, dict]:
    """The manifest's `derived_subsets`: per subset its filter (what a rebuild applies), the limits it
    was made from, its rows and its file (whose sha256 and bytes are added with the checksums)."""
    return {d.name: {"filter": d.filter, **d.parameters, "rows": rows[d.name], "file": derived_subset_file(d.name)} for d in derived}


def _store(settings: Settings, store_options: storage.S3Options | None = None) -> publish.ReleaseStore:
    return publish.ReleaseStore(settings.release_dir, store_options or storage.S3Options.of(settings))


def _staging_dir(store: publish.ReleaseStore, release_id: str) -> str:
    """Stage next to a local store (so publishing is one atomic rename), else in the temp dir."""
    if store.is_s3:
        return tempfile.mkdtemp(prefix=f"altlake-{release_id}-")
    path = os.path.join(store.location, f".staging-{release_id}-{uuid.uuid4().hex[:8]}")
    os.makedirs(path)
    return path


class IndexerMissingError(RuntimeError):
    """The KNN indexer (explore.index and faiss, optional for the job) is not installed here."""


def release_indexer(progress: bool = False) -> Callable[[str, str], dict]:
    """`(staging_dir, release_id) -> the manifest's index section`, from explore.index. Loaded here, so a
    Spark driver without faiss (or without explore) stops before any work, with the way out named."""
    try:
        from explore.index import build_index, manifest_section
    except ImportError as error:
        raise IndexerMissingError(
            f"the release's KNN index needs {error.name or 'explore.index'}, which is not installed here: install "
            "faiss-cpu (pinned in requirements.txt), or publish with --no-index and index the release later with "
            "`altlake index <release folder>`"
        ) from error

    def index_release(staging_dir: str, release_id: str) -> dict:
        return manifest_section(build_index(staging_dir, release_id=release_id, progress=progress))

    return index_release


def build_release(
    spark,
    settings: Settings,
    store_options: storage.S3Options | None = None,
    date: str | None = None,
    run_id: str | None = None,
    rows_per_file: int = publish.ROWS_PER_FILE,
    index: bool = True,
    progress: bool = False,
) -> dict:
    """Build pairs, gate them, publish `<release_dir>/<release_id>/` and record it in `releases`.

    Refuses (ReleaseExistsError) when the same inputs were already released that day; raises
    QualityGateError, before touching the pairs table, when a GX expectation fails.
    With `index` (the default) the KNN indices are built from the staged files before publishing and
    recorded in the manifest's `index` section, their files checksummed with the rest; a missing
    indexer (faiss) raises IndexerMissingError before any work. `progress`: the index build's bars.
    """
    index_release = release_indexer(progress) if index else None
    threading.Thread(target=preload_gx, name="gx-import", daemon=True).start()  # GX's 3-4 s import, done while Spark filters
    date = date or datetime.now(timezone.utc).strftime("%Y%m%d")
    versions = current_versions(spark, settings)
    used, thresholds = release_models(spark, settings, versions)
    derived = settings.derived_subsets
    release_id = publish.release_id_for(date, _release_inputs(versions, thresholds, derived))
    store = _store(settings, store_options)
    if store.exists(release_id):
        _record_release(spark, settings, release_id, store.url(release_id), publish.manifest_bytes(store.read_manifest(release_id)))
        raise publish.ReleaseExistsError(f"release {release_id} already exists at {store.url(release_id)}; releases are immutable")

    pairs, facts = compute_pairs(spark, settings, versions, thresholds)
    watch = Stopwatch()
    docs_dir = lake_paths(settings).gx_docs(run_id or release_id)
    scores = read_table(spark, settings, "scores", versions["scores"])
    gx_summary = gate(spark, settings, scores, pairs, facts["stages"], docs_dir, thresholds.lowest())
    watch.lap("gates")
    versions = {**versions, "pairs": write_pairs(spark, settings, pairs, by_name(facts["stages"])["near_dedup"].kept)}
    pairs.unpersist()
    published = read_table(spark, settings, "pairs", versions["pairs"])
    watch.lap("write_pairs")

    staging = _staging_dir(store, release_id)
    try:
        counts = publish.write_release_files(published, staging, rows_per_file)
        derived_rows = publish.write_derived_subsets(published, staging, {d.name: d.filter for d in derived}, rows_per_file)
        _copy_docs(docs_dir, os.path.join(staging, RELEASE_GX_DIR), storage.S3Options.of(settings))
        watch.lap("release_files")
        histograms, sizes = _distributions(published)
        manifest = {
            "release_id": release_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "format_version": publish.FORMAT_VERSION,
            "sources": versions,
            "thresholds": thresholds.section(),
            "profiles": _profiles_section(settings, used, thresholds),
            "near_duplicates": {**near_duplicate_policy(), **facts["near_duplicates"]},
            "stages": facts["stages"],
            "counts": counts,
            "derived_subsets": _derived_section(derived, derived_rows),
            "statuses": facts["statuses"],
            "languages": _top_languages(published),
            "histograms": histograms,
            "scored_similarity": facts["scored_similarity"],
            "samples": facts["samples"],
            "extraction": _extraction(spark, settings),
            "signals_honoured": _signals_honoured(spark, settings, versions, facts["statuses"]),
            "sizes": sizes,
            "licenses": _licenses(published),
            "previous": _previous(spark, settings, published, counts, facts["statuses"]),
            "models": facts["models"],
            "gx": gx_summary,
            "rows_per_file": rows_per_file,
            "layout": {
                "parquet": f"{RELEASE_PARQUET_DIR}/<subset>/part-NNNNN.parquet",
                "embeddings": f"{RELEASE_EMBEDDINGS_DIR}/<subset>/{{{','.join(EMBEDDING_KINDS)}}}/",
                "derived_subsets": derived_subset_file("<name>"),
            },
        }  # fmt: skip
        watch.lap("manifest_facts")
        if index_release is not None:
            manifest["index"] = index_release(staging, release_id)
            watch.lap("index")
        write_report(manifest, os.path.join(staging, REPORT))
        manifest["files"] = publish.file_checksums(staging)
        for entry in manifest["derived_subsets"].values():
            entry.update(manifest["files"][entry["file"]])  # sha256 and bytes, as the inventory has them
        if "index" in manifest:
            manifest["index"]["files"] = {path: manifest["files"][path] for path in manifest["index"]["files"]}
        text = publish.manifest_bytes(manifest)
        location = store.publish(staging, release_id, text)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    _record_release(spark, settings, release_id, location, text)
    watch.lap("checksums_and_publish")
    return {
        "release_id": release_id,
        "location": location,
        "sources": versions,
        "counts": counts,
        "stages": facts["stages"],
        "gx": gx_summary,
        "files": len(manifest["files"]),
        "index": manifest.get("index"),
        "seconds": {**facts["seconds"], **watch.seconds},
    }


def recorded_release(spark, settings: Settings) -> dict | None:
    """The newest recorded release cut from the tables' current versions with these thresholds (what a
    re-run that finds its release already published reports instead of publishing it twice)."""
    from pyspark.sql import functions as F

    versions = current_versions(spark, settings)
    wanted = release_models(spark, settings, versions)[1].section()
    for row in read_table(spark, settings, "releases").orderBy(F.desc("created_at")).collect():
        manifest = json.loads(row["manifest"])
        if manifest["thresholds"] == wanted and all(manifest["sources"].get(k) == v for k, v in versions.items()):
            return {"release_id": row["release_id"], "location": row["location"], "counts": manifest["counts"],
                    "stages": manifest_stages(manifest), "reused": True}  # fmt: skip
    return None


def index_published_release(settings: Settings, location: str, store_options: storage.S3Options | None = None) -> dict:
    """The KNN indices of a published release: recorded in its manifest when the build made them
    (nothing to do), else (a release published without them) written beside its files. On S3 the
    release is read into a temporary folder and only the new `index/` files are uploaded: the
    published files, manifest included, stay exactly as released."""
    store = _store(settings, store_options)
    release_id = location.rstrip("/").rsplit("/", 1)[1]
    manifest = store.read_manifest(release_id)
    if manifest.get("index"):
        return {"release_id": release_id, "rows": manifest["index"]["rows"], "skipped": True, "in_manifest": True,
                "indices": _indices_summary(manifest["index"]["indices"])}  # fmt: skip
    from explore.index import build_index

    if "://" not in location:
        return _index_summary(build_index(location))
    with tempfile.TemporaryDirectory(prefix=f"altlake-index-{release_id}-") as tmp:
        local = Path(tmp, release_id)
        for name in storage.list_files(store.url(release_id), store.s3, recursive=True):
            target = local / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with storage.open_input_stream(store.file_url(release_id, name), store.s3) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 8 << 20)
        manifest_before = (local / MANIFEST).read_bytes()
        info = build_index(str(local))
        (local / MANIFEST).write_bytes(manifest_before)  # published manifests are immutable
        for path in sorted((local / INDEX_DIR).rglob("*")):
            if path.is_file():
                storage.upload_file(path, store.file_url(release_id, path.relative_to(local).as_posix()), store.s3)
    return _index_summary(info)


def _index_summary(info: dict) -> dict:
    return {
        "release_id": info["release_id"],
        "rows": info["rows"],
        "skipped": info.get("skipped", False),
        "in_manifest": False,
        "indices": _indices_summary(info["indices"]),
    }


def _indices_summary(indices: dict) -> dict:
    return {m: {k: v for k, v in i.items() if k in ("file", "factory", "kind", "rows", "recall_at_10")} for m, i in indices.items()}


def _record_release(spark, settings: Settings, release_id: str, location: str, manifest: bytes) -> None:
    """Add the release to `releases` unless it is there: also run for a release found already
    published, so a publish that died between the store and this record is recorded on its retry."""
    from delta.tables import DeltaTable

    n_pairs = sum(json.loads(manifest)["counts"].values())
    row = (release_id, datetime.now(timezone.utc), location, n_pairs, hashlib.sha256(manifest).hexdigest(), manifest.decode(), None, 0, False)
    (
        DeltaTable.forPath(spark, table_path(settings, "releases"))
        .alias("t")
        .merge(spark.createDataFrame([row], RELEASES.spark_ddl()).alias("s"), "t.release_id = s.release_id")
        .whenNotMatchedInsertAll()
        .execute()
    )


def _top_languages(pairs) -> dict[str, int]:
    from pyspark.sql import functions as F

    rows = pairs.groupBy("language").count().orderBy(F.desc("count"), "language").limit(TOP_LANGUAGES).collect()
    return {r["language"]: int(r["count"]) for r in rows}


def _extraction(spark, settings: Settings) -> dict:
    """What the extraction dropped before anything became a candidate: crawl_files' per-WAT reject
    counts summed over every processed file (its version recorded, as the table is not a release input)."""
    from pyspark.sql import functions as F

    version = table_version(spark, settings, "crawl_files")
    files = read_table(spark, settings, "crawl_files", version)
    is_done = F.col("status") == FILE_DONE
    totals = files.agg(
        F.count(F.when(is_done, 1)).alias("n"),
        F.count(F.when(F.col("status") == FILE_FAILED, 1)).alias("failed"),
        F.sum(F.when(is_done, F.col("raw_pairs"))).alias("raw"),
        F.sum(F.when(is_done, F.col("kept_pairs"))).alias("kept"),
    ).first()  # one pass for every total
    per_reason = files.where(is_done).select(F.explode("rejected").alias("reason", "n")).groupBy("reason").agg(F.sum("n").alias("pairs"))
    found = {r["reason"]: int(r["pairs"]) for r in per_reason.collect()}
    rules = StageStats("rules", int(totals["raw"] or 0), found)
    if rules.kept != int(totals["kept"] or 0):
        raise ValueError(f"crawl_files version {version}: kept_pairs {totals['kept']} is not raw_pairs minus the rejected pairs ({rules.kept})")
    return {
        "crawl_files_version": version,
        "files_done": int(totals["n"]),
        "files_failed": int(totals["failed"]),
        "stages": chain([rules]),
    }


def _signals_honoured(spark, settings: Settings, versions: dict[str, int], statuses: dict[str, int]) -> dict:
    """Every opt-out signal the pipeline honours, with the rows each kept out of this release's inputs
    (candidates opted out at extraction, scores opted out by the worker or a hash takedown at merge, by
    the first word of their error), robots.txt refusals and the takedown requests in force by kind."""
    from pyspark.sql import functions as F

    candidates = read_table(spark, settings, "candidates", versions["candidates"])
    scores = read_table(spark, settings, "scores", versions["scores"])
    takedowns = read_table(spark, settings, "takedowns", versions["takedowns"])
    pages = {}
    if "opt_out" in candidates.columns:
        pages = {r["opt_out"]: int(r["count"]) for r in candidates.where(F.col("opt_out").isNotNull()).groupBy("opt_out").count().collect()}
    signal = F.trim(F.split(F.coalesce(F.col("error"), F.lit("")), ":").getItem(0))
    worker = {r["signal"]: int(r["count"]) for r in scores.where(F.col("status") == STATUS_OPTED_OUT).groupBy(signal.alias("signal")).count().collect()}
    return {
        "signals": {
            name: {"meaning": meaning, "rows": pages.get(name, 0) + worker.get(name, 0)} for name, meaning in OPT_OUT_SIGNALS.items()
        },
        "robots_txt": {"rule": "RFC 9309 (Protego): wildcards, longest match; 5xx and 429 disallow", "rows": statuses.get("robots_disallowed", 0)},
        "ai_crawler_tokens": [t.strip() for t in settings.ai_crawler_tokens.split(",") if t.strip()],
        "takedown_hash_matches": worker.get("takedown", 0),
        "takedown_requests": {kind: int(n) for kind, n in sorted((r["kind"], r["count"]) for r in takedowns.groupBy("kind").count().collect())},
    }


def _licenses(pairs) -> list[list]:
    """[license URL or None (no Creative Commons link on the page), pairs], most frequent first (a list: the
    manifest is written with sorted keys, and the order matters)."""
    from pyspark.sql import functions as F

    rows = pairs.groupBy("license").count().orderBy(F.desc("count"), F.asc_nulls_first("license")).limit(TOP_LICENSES).collect()
    return [[r["license"], int(r["count"])] for r in rows]


def _previous(spark, settings: Settings, pairs, counts: dict[str, int], statuses: dict[str, int]) -> dict | None:
    """The change against the newest release in the registry (None: this is the first): pairs added and
    removed by uid (its pairs table version, by time travel), [before, after] per subset, status and language."""
    from pyspark.sql import functions as F

    newest = read_table(spark, settings, "releases").orderBy(F.desc("created_at"), F.desc("release_id")).limit(1).collect()
    if not newest:
        return None
    manifest = json.loads(newest[0]["manifest"])
    before = read_table(spark, settings, "pairs", manifest["sources"]["pairs"]).select("uid", "language")
    after = pairs.select("uid", "language")
    per_language = (
        before.groupBy("language").count().withColumnRenamed("count", "before")
        .join(after.groupBy("language").count().withColumnRenamed("count", "after"), "language", "full")
        .fillna(0, ["before", "after"])
        .where(F.col("before") != F.col("after"))
        .orderBy(F.desc(F.abs(F.col("after") - F.col("before"))), "language")
        .limit(TOP_LANGUAGES)
        .collect()
    )  # fmt: skip
    # one join for both directions (two anti joins were a shuffle of every uid each); uids are unique in pairs
    sides = before.select("uid", F.lit(1).alias("_before")).join(after.select("uid", F.lit(1).alias("_after")), "uid", "full")
    change = sides.agg(F.count(F.when(F.col("_before").isNull(), 1)).alias("added"), F.count(F.when(F.col("_after").isNull(), 1)).alias("removed")).first()

    def side_by_side(old: dict[str, int], new: dict[str, int]) -> dict[str, list[int]]:
        return {k: [old.get(k, 0), new.get(k, 0)] for k in sorted(old.keys() | new.keys())}

    return {
        "release_id": manifest["release_id"],
        "created_at": manifest["created_at"],
        "pairs": [sum(manifest["counts"].values()), sum(counts.values())],
        "added": int(change["added"]),
        "removed": int(change["removed"]),
        "subsets": side_by_side(manifest["counts"], counts),
        "statuses": side_by_side(manifest["statuses"], statuses),
        "languages": [[r["language"], int(r["before"]), int(r["after"])] for r in per_language],
    }


def rebuild_release(
    spark, settings: Settings, release_id: str, out_dir: str, store_options: storage.S3Options | None = None
) -> dict:
    """Recompute a release's data files from the Delta versions in its manifest, minus the rows the
    takedowns in force now withhold, and compare checksums.

    With nothing withheld the files must equal the published ones byte for byte. With rows
    withheld, the release as published is recomputed too (in a temporary folder) and must match
    the manifest: then `out_dir` is exactly the release minus the withheld rows, each listed with
    the request that withholds it.
    """
    manifest = _store(settings, store_options).read_manifest(release_id)
    _check_history(spark, settings, release_id, manifest["sources"])
    pairs, _ = compute_pairs(spark, settings, manifest["sources"], Thresholds.from_section(manifest["thresholds"]))
    takedowns_version = table_version(spark, settings, "takedowns")
    takedowns = read_table(spark, settings, "takedowns", takedowns_version)
    matched = match_takedowns(pairs, takedowns, HASH_COLUMNS).join(pairs.select("uid", "url"), "uid")
    withheld = {}
    for row in matched.orderBy("uid", "kind", "value").collect():  # one request per row: the smallest
        withheld.setdefault(row["uid"], {"uid": row["uid"], "url": row["url"], "kind": row["kind"], "value": row["value"]})
    expected = publish.data_files(manifest["files"])
    version = manifest.get("format_version", 1)  # its columns: an older format lacks later ones
    filters = {name: entry["filter"] for name, entry in manifest.get("derived_subsets", {}).items()}  # as recorded

    def write(rows, where: str) -> None:
        publish.write_release_files(rows, where, manifest["rows_per_file"], version)
        publish.write_derived_subsets(rows, where, filters, manifest["rows_per_file"], version)

    if withheld:
        with tempfile.TemporaryDirectory(prefix="altlake-original-") as original:
            write(pairs, original)
            reproduced = _compare(expected, publish.data_files(publish.file_checksums(original)))
        write(pairs.join(spark.createDataFrame([(uid,) for uid in withheld], "uid string"), "uid", "left_anti"), out_dir)
    else:
        write(pairs, out_dir)
        reproduced = _compare(expected, publish.data_files(publish.file_checksums(out_dir)))
    pairs.unpersist()
    by_kind = {}
    for row in withheld.values():
        by_kind[row["kind"]] = by_kind.get(row["kind"], 0) + 1
    return {
        "release_id": release_id,
        "identical": reproduced["identical"] and not withheld,
        "reproduces_published": reproduced["identical"],
        "takedowns_version": takedowns_version,
        "withheld": len(withheld),
        "withheld_by_kind": by_kind,
        "withheld_rows": sorted(withheld.values(), key=lambda r: r["uid"]),
        **{k: v for k, v in reproduced.items() if k != "identical"},
    }


class HistoryPurgedError(RuntimeError):
    """The table versions a release was cut from left the Delta history (a takedown purge)."""


def _check_history(spark, settings: Settings, release_id: str, sources: dict[str, int]) -> None:
    """Refuse, naming the purge, a rebuild whose pinned versions a takedown purge removed."""
    purged = read_table(spark, settings, "purges").where("purged_at IS NOT NULL").collect()
    for row in purged:
        pinned = sources.get(row["table_name"])
        if row["table_name"] in SOURCE_TABLES and pinned is not None and pinned < row["table_version"]:
            raise HistoryPurgedError(
                f"release {release_id} was cut from {row['table_name']} version {pinned}, which a takedown purge removed "
                f"from the history on {row['purged_at']:%Y-%m-%d} (apply {row['apply_id']}, versions before {row['table_version']}); "
                "the release as published is its files minus its removals addenda"
            )


def _compare(expected: dict[str, dict], actual: dict[str, dict]) -> dict:
    mismatched = sorted(k for k in expected.keys() & actual.keys() if expected[k]["sha256"] != actual[k]["sha256"])
    return {
        "identical": not mismatched and expected.keys() == actual.keys(),
        "files_compared": len(expected),
        "mismatched": mismatched,
        "missing": sorted(expected.keys() - actual.keys()),
        "extra": sorted(actual.keys() - expected.keys()),
    }


# --- CLI -------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rebuild", metavar="RELEASE_ID", help="rebuild this release into --out and compare checksums")
    parser.add_argument("--out", help="where --rebuild writes its files")
    parser.add_argument("--date", help="YYYYMMDD of the release id (default: today, UTC)")
    parser.add_argument("--store", help="release store: a directory or s3://bucket/prefix (default: ALTLAKE_RELEASE_STORE)")
    parser.add_argument("--lake", help="lake root (default: ALTLAKE_LAKE_DIR)")
    parser.add_argument("--master", help="Spark master (default: ALTLAKE_SPARK_MASTER)")
    parser.add_argument("--no-index", action="store_true",
                        help="publish without the KNN index (where faiss is not installed); `altlake index` builds it later")
    parser.add_argument("--allow-mixed-models", action="store_true",
                        help="release rows scored by different CLIP models together (default: ALTLAKE_ALLOW_MIXED_MODELS, else refused)")


def run(args: argparse.Namespace) -> int:
    """`altlake build-release` and `spark-submit spark_jobs/release.py`: the same release, index included
    (bars on a terminal, quiet in a pipe)."""
    from spark_jobs.session import get_spark, require_lake

    settings = Settings.from_env(
        lake_dir=args.lake, spark_master=args.master, release_store=args.store, allow_mixed_models=args.allow_mixed_models or None
    )
    if args.rebuild and not args.out:
        print("altlake build-release: --rebuild needs --out", file=sys.stderr)
        return 2
    if not args.rebuild and not args.no_index:
        try:  # before Spark starts: a missing indexer is known at once
            release_indexer()
        except IndexerMissingError as error:
            print(f"altlake build-release: {error}", file=sys.stderr)
            return 1
    require_lake(settings)
    if args.rebuild and not _store(settings).exists(args.rebuild):
        print(f"altlake build-release: no release {args.rebuild!r} in {settings.release_dir}", file=sys.stderr)
        return 2
    spark = get_spark(settings, "altlake-release")
    try:
        if args.rebuild:
            summary = rebuild_release(spark, settings, args.rebuild, args.out)
            print(json.dumps(summary, indent=2))
            if summary["withheld"]:
                print(
                    f"altlake build-release: {summary['withheld']} row(s) of {args.rebuild} withheld by takedowns in force "
                    f"(takedowns version {summary['takedowns_version']}); the rest is the release as published",
                    file=sys.stderr,
                )
            return 0 if summary["reproduces_published"] else 1
        summary = build_release(spark, settings, date=args.date, index=not args.no_index, progress=sys.stderr.isatty())
    except (QualityGateError, publish.ReleaseExistsError, HistoryPurgedError, MixedModelsError, ProfileError) as error:
        print(f"altlake build-release: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release", description="build, gate and publish a release")
    configure(parser)
    return exit_status(parser.prog, lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
