from altlake.paths import LakePaths
from altlake.schemas import TABLES


def test_session_registers_every_table_as_delta_in_the_lake(spark, settings):
    names = {r.tableName for r in spark.sql("SHOW TABLES IN altlake").collect()}
    assert names == set(TABLES)
    detail = spark.sql("DESCRIBE DETAIL altlake.candidates").first()
    assert detail["format"] == "delta"
    assert detail["location"].rstrip("/").endswith(LakePaths(settings.lake_dir).table("candidates").lstrip("."))
    assert detail["partitionColumns"] == ["first_seen_crawl"]


def test_catalog_names_follow_the_lake_they_were_opened_with(spark, tmp_path):
    from altlake.config import Settings
    from spark_jobs.session import get_spark

    other = Settings.from_env(lake_dir=str(tmp_path / "other"))
    get_spark(other)
    location = spark.sql("DESCRIBE DETAIL altlake.scores").first()["location"]
    assert "/other/tables/scores" in location


def test_a_local_session_reads_the_jars_in_place_and_copies_none(spark, settings):
    """Handed over as spark.jars, each JVM start copied the jars (over 500 MB) into its temporary
    folder: CI's disk filled with the copies of killed JVMs."""
    from pathlib import Path

    from pyspark import SparkFiles

    from spark_jobs.session import spark_conf

    conf = spark_conf(settings, "t")
    assert "spark.jars" not in conf and "delta-spark" in conf["spark.driver.extraClassPath"]
    assert spark.sparkContext._jsc.sc().listJars().size() == 0
    assert not list(Path(SparkFiles.getRootDirectory()).rglob("*.jar"))
    assert spark.sql("DESCRIBE DETAIL altlake.pairs").first()["format"] == "delta"  # Delta still loads


def test_shuffles_are_cut_by_their_size_also_in_frames_kept_on_disk(spark, settings):
    """A fixed partition count fits one size only: 8 partitions of about 430 MB failed the release
    at 4.14M candidates (Java heap space) while building the pairs it keeps on disk. A query's
    shuffle is cut into spark_max_shuffle_partitions and merged up to spark_partition_size by its
    measured size, in the frames a job persists too (Spark's default leaves those uncoalesced)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from spark_jobs.session import get_spark

    session = get_spark(settings.with_(spark_partition_size="1m"))  # the running session takes the new size
    # about 1 KB of hex a row (it compresses to about half): some 20 MB shuffled
    rows = session.range(40_000).select(
        (F.col("id") % 5_000).alias("k"), F.concat(*[F.sha2(F.concat(F.col("id").cast("string"), F.lit(str(i))), 512) for i in range(8)]).alias("payload")
    )  # fmt: skip

    def partition_rows(frame) -> list[int]:
        kept = frame.persist(StorageLevel.DISK_ONLY)
        try:
            return [r["n"] for r in kept.groupBy(F.spark_partition_id().alias("p")).agg(F.count("*").alias("n")).collect()]
        finally:
            kept.unpersist(blocking=True)

    large = partition_rows(rows.groupBy("k").agg(F.collect_list("payload").alias("payloads")))
    assert sum(large) == 5_000  # every group, once
    assert settings.spark_shuffle_partitions < 8 <= len(large) <= settings.spark_max_shuffle_partitions, large
    small = partition_rows(session.range(300).groupBy((F.col("id") % 100).alias("k")).count())
    assert sum(small) == 100 and len(small) <= 2, small  # merged, not 100 one-row tasks


def test_a_lake_on_s3_gets_its_delta_tables_through_s3a(moto_server, tmp_path):
    """The jars on the class path still reach S3A and the SDK behind it: a fresh process opens a
    lake in a bucket of the loopback S3 server and writes and reads a Delta table there."""
    import os
    import subprocess
    import sys
    import textwrap

    import boto3

    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket="lake-on-s3")
    probe = textwrap.dedent(
        """
        import sys
        from altlake.config import Settings
        from spark_jobs.session import get_spark
        settings = Settings.from_env(lake_dir="s3a://lake-on-s3/lake", s3_endpoint=sys.argv[1], spark_master="local[1]", spark_shuffle_partitions=1)
        spark = get_spark(settings, "s3-probe")
        spark.range(7).write.format("delta").save("s3a://lake-on-s3/lake/probe")
        print("TABLES", spark.sql("SHOW TABLES IN altlake").count(), "ROWS", spark.read.format("delta").load("s3a://lake-on-s3/lake/probe").count())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_GATEWAY_PORT"}
    env["ALTLAKE_METASTORE_URL"] = f"jdbc:derby:;databaseName={tmp_path / 'metastore_db'};create=true"
    (tmp_path / "cwd").mkdir()
    done = subprocess.run([sys.executable, "-c", probe, moto_server], cwd=tmp_path / "cwd", env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"TABLES {len(TABLES)} ROWS 7" in done.stdout
    assert not list((tmp_path / "cwd").iterdir())  # Derby's files went to a local folder, not to ./s3a:/...
    keys = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").list_objects_v2(Bucket="lake-on-s3", Prefix="lake/tables/pairs/_delta_log/")
    assert keys["KeyCount"] > 0


def test_the_embedded_catalog_of_a_lake_on_object_storage_lives_on_local_disk(tmp_path):
    from altlake.config import Settings
    from spark_jobs.session import metastore_dir, metastore_url

    local = Settings(lake_dir=str(tmp_path / "lake"))
    assert metastore_dir(local) == tmp_path / "lake" / "metastore"
    s3 = Settings(lake_dir="s3a://bucket/lake", cache_dir=str(tmp_path / "cache"))
    other = s3.with_(lake_dir="s3a://bucket/other")
    assert metastore_dir(s3).parent == tmp_path / "cache" / "metastores" and metastore_dir(s3) != metastore_dir(other)
    assert metastore_url(s3) == f"jdbc:derby:;databaseName={metastore_dir(s3) / 'metastore_db'};create=true"


def test_the_metastore_url_is_a_setting_not_a_raw_variable(monkeypatch):
    from altlake.config import Settings
    from spark_jobs.session import metastore_url

    shared = "jdbc:postgresql://metastore:5432/hive?user=hive&password=hive"
    assert metastore_url(Settings.from_env({"ALTLAKE_METASTORE_URL": shared})) == shared
    monkeypatch.setenv("ALTLAKE_METASTORE_URL", shared)  # settings made without it do not see it
    assert metastore_url(Settings(lake_dir="/data/lake")).startswith("jdbc:derby:;databaseName=/data/lake/metastore/")


def test_scores_refuses_an_ok_row_without_embeddings_and_a_lake_that_breaks_the_check_goes_on(spark, settings, caplog):
    """The declared check is a Delta constraint: a write that breaks it fails and writes nothing. A
    lake whose rows broke it before it was declared keeps working without it, says so, and is checked
    again only once it changes."""
    import pytest

    from altlake.schemas import DECLINED_CHECK_PROPERTY, EMBEDDED_OK_ROWS
    from spark_jobs.lake import check_holds, read_table, table_checks, table_path, table_properties, table_version
    from spark_jobs.session import _READY, ensure_tables
    from tests.spark_jobs.lakegen import add_scores, embeddings_for, result, score_row

    location = table_path(settings, "scores")
    assert EMBEDDED_OK_ROWS in table_checks(spark, location)
    add_scores(spark, settings, [score_row(result("a" * 32, "https://img.example.com/a.jpg"), *embeddings_for(1)),
                                 score_row(result("b" * 32, "https://img.example.com/b.jpg", "timeout"), None, None)])  # fmt: skip
    version = table_version(spark, settings, "scores")
    assert check_holds(spark, settings, "scores", EMBEDDED_OK_ROWS, version)
    with pytest.raises(Exception, match="(?i)check constraint"):
        add_scores(spark, settings, [score_row(result("c" * 32, "https://img.example.com/c.jpg"), None, None)])
    assert read_table(spark, settings, "scores").count() == 2 and table_version(spark, settings, "scores") == version

    # a lake from before the check, with an ok row that lacks its embeddings
    spark.sql(f"ALTER TABLE delta.`{location}` DROP CONSTRAINT {EMBEDDED_OK_ROWS}")
    add_scores(spark, settings, [score_row(result("c" * 32, "https://img.example.com/c.jpg"), None, None)])
    broken = table_version(spark, settings, "scores")
    _READY.clear()
    with caplog.at_level("WARNING", logger="spark_jobs.session"):
        ensure_tables(spark, settings)
    assert EMBEDDED_OK_ROWS not in table_checks(spark, location) and EMBEDDED_OK_ROWS in caplog.text
    assert not check_holds(spark, settings, "scores", EMBEDDED_OK_ROWS, table_version(spark, settings, "scores"))
    # the table records the version its rows broke the check at (one commit), and the next session
    # start does not scan it again while it is unchanged: it warns, and writes nothing
    declined = DECLINED_CHECK_PROPERTY + EMBEDDED_OK_ROWS
    assert table_properties(spark, location)[declined] == str(broken)
    recorded = table_version(spark, settings, "scores")
    assert recorded == broken + 1
    caplog.clear()
    _READY.clear()
    with caplog.at_level("WARNING", logger="spark_jobs.session"):
        ensure_tables(spark, settings)
    assert f"rows at version {broken} break the declared check {EMBEDDED_OK_ROWS}" in caplog.text
    assert table_version(spark, settings, "scores") == recorded
    # a write that leaves the rows breaking it: checked again, and the new version recorded
    add_scores(spark, settings, [score_row(result("d" * 32, "https://img.example.com/d.jpg", "timeout"), None, None)])
    changed = table_version(spark, settings, "scores")
    _READY.clear()
    ensure_tables(spark, settings)
    assert table_properties(spark, location)[declined] == str(changed) and EMBEDDED_OK_ROWS not in table_checks(spark, location)
    # an older version is never vouched for by the check, even where the lake has it now
    spark.sql(f"DELETE FROM delta.`{location}` WHERE uid = '{'c' * 32}'")
    _READY.clear()
    ensure_tables(spark, settings)
    latest = table_version(spark, settings, "scores")
    assert check_holds(spark, settings, "scores", EMBEDDED_OK_ROWS, latest)
    assert not check_holds(spark, settings, "scores", EMBEDDED_OK_ROWS, version)
    assert declined not in table_properties(spark, location)  # the record goes once the check is in
