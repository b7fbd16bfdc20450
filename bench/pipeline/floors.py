"""`python -m bench.pipeline.floors STAGE --lake LAKE --scratch DIR`: a stage's physical floor.

The floor is what the stage cannot do without on this machine with these Spark settings: start a
session (spark_jobs.session.get_spark, so jars, Delta and the catalog are the production ones),
read the stage's input tables once and write an output of the same rows once, doing nothing else.
A stage reported as a multiple of its floor says how much of its time goes to its own work.

  startup    a session and nothing else (the fixed cost inside every floor and stage)
  plan       read candidates; write them once as parquet (the batches' input files)
  merge      read every batch output's results.parquet and embedding files; write them once as
             Delta (the scores rows and their embedding bytes)
  release    read candidates and scores; write the ok rows at or above LAION's 0.28 once to Delta
             (pairs) and once more as parquet read back from it (the release's files)
  takedown-add  read the columns a request is matched on (candidates' uid and canonical URL, the
             uid and image hashes of scores and pairs) once: `takedown add` counts each request's
             matches in every table; its own write (the takedowns rows) is a few KB
  takedowns  read candidates, scores and pairs; write each once to Delta (a delete rewrites the
             files holding matched rows: with domains spread over the crawl, nearly all of them)

`takedown add` and `takedown apply` are two commands, each with its session: the takedowns stage is
held against the sum of the takedown-add and takedowns floors.
"""

from __future__ import annotations

import argparse
import os
import sys

from altlake.config import Settings
from altlake.paths import LakePaths

FLOOR_STAGES = ("startup", "plan", "merge", "release", "takedown-add", "takedowns")


def _delta(spark, lake: LakePaths, name: str):
    return spark.read.format("delta").load(lake.table(name))


def floor_plan(spark, lake: LakePaths, scratch: str) -> None:
    _delta(spark, lake, "candidates").write.mode("overwrite").parquet(os.path.join(scratch, "inputs"))


def floor_merge(spark, lake: LakePaths, scratch: str) -> None:
    outputs = os.path.join(lake.root, "batches", "*", "output")
    spark.read.parquet(os.path.join(outputs, "results.parquet")).write.format("delta").mode("overwrite").save(os.path.join(scratch, "scores"))
    files = spark.read.format("binaryFile").load([os.path.join(outputs, kind, "*") for kind in ("img_emb", "text_emb", "metadata")])
    # A file is one value of up to 10 MB. Parquet checks a page's size every 100 values at first, so a
    # task's dozen files made one page of ~120 MB, compressed through an in-heap buffer that doubles as
    # it grows: twice in about six floors at 831k that ran out of the 2 GB heap. Check every value.
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    hadoop.set("parquet.page.size.row.check.min", "1")
    hadoop.set("parquet.page.size.row.check.max", "1")
    files.select("path", "content").write.format("delta").mode("overwrite").save(os.path.join(scratch, "embeddings"))


def floor_release(spark, lake: LakePaths, scratch: str) -> None:
    _delta(spark, lake, "candidates").write.format("noop").mode("overwrite").save()
    kept = _delta(spark, lake, "scores").where("status = 'ok' AND similarity >= 0.28")
    kept.write.format("delta").mode("overwrite").save(os.path.join(scratch, "pairs"))
    spark.read.format("delta").load(os.path.join(scratch, "pairs")).write.mode("overwrite").parquet(os.path.join(scratch, "release"))


def floor_takedown_add(spark, lake: LakePaths, scratch: str) -> None:
    from spark_jobs.takedowns import HASH_COLUMNS

    _delta(spark, lake, "candidates").select("uid", "url_canonical").write.format("noop").mode("overwrite").save()
    for name in ("scores", "pairs"):
        table = _delta(spark, lake, name)
        table.select("uid", *[c for c in HASH_COLUMNS if c in table.columns]).write.format("noop").mode("overwrite").save()


def floor_takedowns(spark, lake: LakePaths, scratch: str) -> None:
    for name in ("candidates", "scores", "pairs"):
        _delta(spark, lake, name).write.format("delta").mode("overwrite").save(os.path.join(scratch, name))


FLOORS = {"plan": floor_plan, "merge": floor_merge, "release": floor_release, "takedown-add": floor_takedown_add, "takedowns": floor_takedowns}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline.floors", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=FLOOR_STAGES)
    parser.add_argument("--lake", required=True)
    parser.add_argument("--scratch", required=True, help="where the floor writes (outside the lake)")
    args = parser.parse_args(argv)
    from spark_jobs.session import get_spark

    settings = Settings.from_env(lake_dir=args.lake)
    spark = get_spark(settings, f"altlake-floor-{args.stage}")
    if args.stage != "startup":
        FLOORS[args.stage](spark, LakePaths(os.path.abspath(args.lake)), args.scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
