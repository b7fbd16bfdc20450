"""The one Spark session factory: Delta on, a persistent catalog under the lake, any master.

Every job, the CLI and the tests get their session here, so Delta, the jars and the catalog are
configured the same way in local mode, on a `spark://` standalone cluster and under spark-submit.
Data operations address tables by path (see `altlake.paths`); the catalog gives them names for
SQL users.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

from altlake import storage
from altlake.config import Settings
from altlake.paths import DATABASE, LakePaths
from altlake.schemas import DECLINED_CHECK_PROPERTY, TABLES, Table
from spark_jobs.lake import latest_version, table_checks, table_properties

log = logging.getLogger(__name__)

_JAR_HINT = "run `make setup` (or scripts/setup.sh) to resolve them from Maven Central"


def spark_jars(settings: Settings) -> list[str]:
    """The Delta and hadoop-aws jars from the cache (resolved once by scripts/setup.sh)."""
    jar_dir = settings.jar_dir
    jars = sorted(str(p) for p in jar_dir.glob("*.jar"))
    if not any("delta-spark" in j for j in jars):
        raise RuntimeError(f"Delta jars are missing from {jar_dir}: {_JAR_HINT}")
    return jars


def lake_fs(settings: Settings, url: str):
    """(pyarrow filesystem, path) for a lake URL, through altlake.storage (S3 at Settings.s3_endpoint)."""
    return storage.resolve(url, storage.S3Options.of(settings))


class NoLake(ValueError):
    """A command that reads a lake was pointed at a place that holds none."""


def require_lake(settings: Settings) -> None:
    """Refuse a lake root without a single Delta table, before Spark starts: a mistyped --lake
    would otherwise be created empty and every query over it would answer zero. Only the
    commands that create a lake (extract, the demo, takedown add) skip this."""
    from pyarrow import fs

    tables = LakePaths(settings.lake_dir).table("")
    filesystem, path = lake_fs(settings, tables)
    try:
        found = filesystem.get_file_info(fs.FileSelector(path.rstrip("/"), allow_not_found=True))
        logs = filesystem.get_file_info([f"{info.path}/_delta_log" for info in found if info.type == fs.FileType.Directory])
    except OSError as exc:
        raise NoLake(f"cannot read the lake at {settings.lake_dir}: {exc}") from exc
    if not any(info.type == fs.FileType.Directory for info in logs):
        raise NoLake(f"no lake at {settings.lake_dir} (no Delta table under {tables.rstrip('/')}); check --lake / ALTLAKE_LAKE_DIR")


def metastore_dir(settings: Settings) -> Path:
    """The local folder of the embedded Derby catalog and its log: under a lake on local disk; for a
    lake on object storage, under the cache, one per lake URL (Derby needs a local disk; a team
    shares one catalog through ALTLAKE_METASTORE_URL instead)."""
    if "://" not in settings.lake_dir:
        return Path(LakePaths(_absolute(settings.lake_dir)).metastore)
    return Path(settings.cache_dir) / "metastores" / hashlib.sha256(settings.lake_dir.encode()).hexdigest()[:16]


def metastore_url(settings: Settings) -> str:
    """JDBC URL of the catalog: embedded Derby (metastore_dir) unless Settings.metastore_url names one."""
    if settings.metastore_url:
        return settings.metastore_url
    return f"jdbc:derby:;databaseName={metastore_dir(settings) / 'metastore_db'};create=true"


def spark_conf(settings: Settings, app_name: str) -> dict[str, str]:
    """All settings of an altlake Spark session, as plain key/values (also used by spark-submit)."""
    lake = LakePaths(_absolute(settings.lake_dir))
    conf = {
        "spark.app.name": app_name,
        "spark.master": settings.spark_master,
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": lake.warehouse,
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        # A query's shuffles are cut fine and merged by their measured size, so a partition stays near
        # spark_partition_size at 20k rows and at millions (a fixed 8 failed the release at 4.14M
        # candidates: Java heap space); the frames jobs cache are merged too (Spark leaves them alone by default).
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.initialPartitionNum": str(settings.spark_max_shuffle_partitions),
        "spark.sql.adaptive.advisoryPartitionSizeInBytes": settings.spark_partition_size,
        "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
        # VACUUM lists a table's files in this many tasks; Spark's default of 10,000 made every VACUUM
        # (maintain, takedown purge) cost 23-35 s on two cores, even of an empty table
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(settings.spark_shuffle_partitions),
        # Delta rebuilds a table's state from its log in this many tasks; its default of 50 made each
        # snapshot of a small table 50 tiny tasks (a 5-row merge test: 91 s -> 63 s on two cores)
        "spark.databricks.delta.snapshotPartitions": str(settings.spark_shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }
    if not settings.spark_provided:
        conf.update(
            {
                **_jar_conf(settings),
                **_metastore_conf(settings),
            }
        )
    if settings.s3_endpoint:
        conf.update(
            {
                "spark.hadoop.fs.s3a.endpoint": settings.s3_endpoint,
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": str(settings.s3_endpoint.startswith("https")).lower(),
            }
        )
    if settings.dynamodb_log_table and settings.lake_dir.startswith("s3a://"):
        conf.update(_log_store_conf(settings))
    return conf


# Our log store (infra/spark/logstore, built by scripts/setup.sh): Delta's own S3DynamoDBLogStore
# artifact is not available from the registry this project resolves from.
LOG_STORE_CLASS = "dev.altlake.delta.DynamoDBLogStore"


def _log_store_conf(settings: Settings) -> dict[str, str]:
    """Delta commits on the s3a lake go through a DynamoDB conditional put, so two jobs committing
    the same version of one table cannot both win (S3 alone would keep the last and lose the other)."""
    if not settings.spark_provided and not any("altlake-logstore" in j for j in spark_jars(settings)):
        raise RuntimeError(f"ALTLAKE_DYNAMODB_LOG_TABLE is set but the log store jar is missing from {settings.jar_dir}: {_JAR_HINT}")
    conf = {
        "spark.delta.logStore.s3a.impl": LOG_STORE_CLASS,
        "spark.hadoop.altlake.dynamodb.table": settings.dynamodb_log_table,
        "spark.hadoop.altlake.dynamodb.region": settings.dynamodb_region,
    }
    if settings.dynamodb_endpoint:
        conf["spark.hadoop.altlake.dynamodb.endpoint"] = settings.dynamodb_endpoint
    return conf


def _metastore_conf(settings: Settings) -> dict[str, str]:
    """Where Spark's built-in Hive 2.3 client keeps the catalog. Embedded Derby admits one JVM; a
    Postgres metastore is shared by every job and the Thrift server (`altlake sql-server`). Hive's
    schematool and its SQL scripts do not ship with pyspark, so sessions create the schema's tables as
    they first need them (DataNucleus autoCreateTables) and the version check that would refuse a schema
    without a VERSION row is off. Without foreign keys: DataNucleus adds them from a second connection
    while the first holds row locks on the referenced tables, and on Postgres that waits forever.
    Credentials ride in the URL (?user=...&password=..., read by the pgjdbc driver)."""
    url = metastore_url(settings)
    if not url.startswith("jdbc:postgresql:"):
        return {
            "spark.hadoop.javax.jdo.option.ConnectionURL": url,
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={metastore_dir(settings)}",
        }
    return {
        "spark.hadoop.javax.jdo.option.ConnectionURL": url,
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
        "spark.hadoop.datanucleus.schema.autoCreateAll": "false",  # true would imply constraints too
        "spark.hadoop.datanucleus.schema.autoCreateTables": "true",
        "spark.hadoop.datanucleus.schema.autoCreateColumns": "true",
        "spark.hadoop.datanucleus.schema.autoCreateConstraints": "false",
        "spark.hadoop.hive.metastore.schema.verification": "false",
    }


def _jar_conf(settings: Settings) -> dict[str, str]:
    """How the session gets the jars. A local session puts them on the driver's class path: given as
    `spark.jars`, every JVM would copy all of them (over 500 MB with hadoop-aws' SDK bundle) into a
    temporary folder at each start, and a JVM that is killed leaves its copy behind. Spark's own jars
    go first, as they resolve first for `spark.jars`: the SDK bundle carries an slf4j 1 that would
    otherwise silence Spark's logging. A cluster's executors need the jars shipped, so any other
    master gets `spark.jars`."""
    jars = spark_jars(settings)
    if settings.spark_master.startswith("local"):
        import pyspark

        own = Path(pyspark.__file__).parent / "jars" / "*"
        return {"spark.driver.extraClassPath": os.pathsep.join([str(own), *jars])}
    return {"spark.jars": ",".join(jars)}


def submitted_master() -> str | None:
    """The master spark-submit was given, when this driver runs under spark-submit."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return None
    from pyspark import SparkConf

    return SparkConf().get("spark.master", None)


def get_spark(settings: Settings | None = None, app_name: str = "altlake"):
    """A Spark session with Delta and the lake's tables registered under the `altlake` database.

    Under spark-submit the master given to spark-submit wins over the settings, for every job."""
    from pyspark.sql import SparkSession

    settings = (settings or Settings.from_env()).with_(spark_master=submitted_master())
    if not settings.spark_provided:
        metastore_dir(settings).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in spark_conf(settings, app_name).items():
        builder = builder.config(key, value)
    spark = builder.enableHiveSupport().getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    ensure_tables(spark, settings)
    return spark


# Lakes whose tables this process already created and registered, per Spark session: every job
# calls get_spark, and checking seven tables against the metastore each time costs seconds.
_READY: set[tuple[int, str]] = set()


def ensure_tables(spark, settings: Settings) -> None:
    """Create every Delta table that is missing and point the catalog names at this lake."""
    lake = LakePaths(_absolute(settings.lake_dir))
    key = (id(spark), lake.root)
    if key in _READY:
        return
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    spark.sql(f"USE {DATABASE}")
    external_catalog = spark._jsparkSession.sessionState().catalog().externalCatalog()
    for table in TABLES.values():
        _ensure_table(spark, external_catalog, table, lake.table(table.name))
    _READY.clear()  # the catalog names now point at this lake, not at any other
    _READY.add(key)


def _ensure_table(spark, external_catalog, table: Table, location: str) -> None:
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, location):
        (
            DeltaTable.createIfNotExists(spark)
            .location(location)
            .addColumns(spark.createDataFrame([], table.spark_ddl()).schema)
            .partitionedBy(*table.partition_by)
            .execute()
        )
    else:
        _add_new_columns(spark, table, location)
    _add_checks(spark, table, location)
    name = f"{DATABASE}.{table.name}"
    if external_catalog.tableExists(DATABASE, table.name):
        # Read the location from the metastore itself: DESCRIBE DETAIL would load the Delta log.
        current = external_catalog.getTable(DATABASE, table.name).location().toString()
        if _same_location(current, location):
            return
        spark.sql(f"DROP TABLE {name}")  # external: drops the name, never the data
    spark.sql(f"CREATE TABLE {name} USING delta LOCATION '{location}'")


def _backfills():
    """Values for columns added to a declared table after lakes already held rows, by (table, column)."""
    from pyspark.sql import functions as F

    from altlake.urls import canonical_url

    return {("candidates", "url_canonical"): F.udf(canonical_url, "string")(F.col("url"))}


def _add_new_columns(spark, table: Table, location: str) -> None:
    """Bring a lake written by an older release up to the declared schema: add the new (nullable)
    columns and fill those with a backfill, so no job meets a table that lacks a column."""
    from delta.tables import DeltaTable

    existing = set(spark.read.format("delta").load(location).schema.fieldNames())
    missing = [c for c in table.columns if c.name not in existing]
    if not missing:
        return
    required = [c.name for c in missing if not c.nullable]
    if required:
        raise RuntimeError(f"{location}: the declared table {table.name} needs columns this lake lacks: {required}")
    columns = ", ".join(f"`{c.name}` {c.type}" for c in missing)
    spark.sql(f"ALTER TABLE delta.`{location}` ADD COLUMNS ({columns})")
    backfills = _backfills()
    fill = {c.name: backfills[(table.name, c.name)] for c in missing if (table.name, c.name) in backfills}
    if fill:
        DeltaTable.forPath(spark, location).update(set=fill)


def _add_checks(spark, table: Table, location: str) -> None:
    """Add the declared CHECK constraints the table lacks. Delta checks the rows already there as it adds
    one (a scan of the table); a lake whose rows break one goes on without it (jobs then read the
    columns instead). The table records the version its rows broke it at (DECLINED_CHECK_PROPERTY), so a
    session start tries again only once the table has changed since: deleting the offending rows is
    what lets it in."""
    from pyspark.errors import AnalysisException

    if not table.checks:
        return
    properties = table_properties(spark, location)
    present = table_checks(spark, location, properties)
    for name, condition in table.checks.items():
        if name in present:
            continue
        declined = DECLINED_CHECK_PROPERTY + name
        version = latest_version(spark, location)  # per check: adding one is a commit
        if properties.get(declined) == str(version - 1):  # the only commit since is the record itself
            log.warning("%s: rows at version %s break the declared check %s (%s); the table goes on without it until it changes",
                        location, properties[declined], name, condition)  # fmt: skip
            continue
        try:
            spark.sql(f"ALTER TABLE delta.`{location}` ADD CONSTRAINT {name} CHECK ({condition})")
        except AnalysisException as error:
            if "CHECK_CONSTRAINT_VIOLATION" not in str(error):
                raise
            log.warning("%s: rows break the declared check %s (%s); the table goes on without it", location, name, condition)
            spark.sql(f"ALTER TABLE delta.`{location}` SET TBLPROPERTIES ('{declined}' = '{version}')")
            continue
        if declined in properties:
            spark.sql(f"ALTER TABLE delta.`{location}` UNSET TBLPROPERTIES IF EXISTS ('{declined}')")


def _same_location(a: str, b: str) -> bool:
    strip = lambda s: s.removeprefix("file:").rstrip("/")  # noqa: E731
    return strip(a) == strip(b)


def _absolute(lake_dir: str) -> str:
    return lake_dir if "://" in lake_dir else str(Path(lake_dir).absolute())
