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
