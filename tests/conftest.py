"""Fixtures shared across the suite: a per-test lake and the one Spark session of the run."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

from altlake.config import Settings

REPO = Path(__file__).resolve().parent.parent
SAMPLE_WAT = REPO.parent / "shared" / "data" / "commoncrawl" / "CC-MAIN-2015-18-sample.warc.wat"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings pointing at a fresh lake under the test's temporary directory."""
    return Settings.from_env(lake_dir=str(tmp_path / "lake"), spark_master="local[2]", spark_shuffle_partitions=2)


@pytest.fixture
def spark(settings: Settings):
    """The run's Spark session, with the catalog names pointed at this test's lake."""
    from spark_jobs.session import get_spark

    return get_spark(settings, app_name="altlake-tests")


@pytest.fixture
def sample_wat(tmp_path: Path) -> Path:
    """A writable copy of the real Common Crawl WAT sample (the shared original is read-only)."""
    if not SAMPLE_WAT.exists():
        raise FileNotFoundError(f"the real WAT sample is missing: {SAMPLE_WAT}")
    copy = tmp_path / SAMPLE_WAT.name
    copy.write_bytes(SAMPLE_WAT.read_bytes())
    return copy


@pytest.fixture(scope="session")
def moto_server():
    """An S3-compatible moto server on 127.0.0.1 for the run; yields its endpoint URL.

    The run's fake credentials (set at import, below) are what it accepts; buckets per test keep tests apart.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3a_spark(spark, moto_server):
    """The run's Spark session, its S3A pointed at the moto server too (the session may predate the
    server): for reading back what a job in another process wrote to an s3a:// lake."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    values = {"fs.s3a.endpoint": moto_server, "fs.s3a.path.style.access": "true", "fs.s3a.connection.ssl.enabled": "false"}
    values |= {"fs.s3a.access.key": os.environ["AWS_ACCESS_KEY_ID"], "fs.s3a.secret.key": os.environ["AWS_SECRET_ACCESS_KEY"]}
    for key, value in values.items():
        conf.set(key, value)
    return spark


@pytest.fixture(scope="session")
def postgres():
    """A real Postgres server on 127.0.0.1 for the run (tests/postgres.py); skips where none is installed."""
    from tests.postgres import Postgres, find_postgres_bin

    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip("Postgres binaries (initdb, pg_ctl) not found; set ALTLAKE_PG_BIN")
    server = Postgres(bin_dir).start()
    yield server
    server.stop()


# The files that take longest (measured on 2 cores), in that order: pytest-xdist hands out whole files
# (--dist loadfile) in collection order, and one of these started last ran alone for 14 minutes at the
# end of CI's integration run while the other worker sat idle. Longest first packs the two workers.
LONGEST_FIRST = (
    "tests/test_airflow_standalone.py",
    "tests/test_airflow_team.py",
    "tests/spark_jobs/test_merge_scores.py",
    "tests/spark_jobs/test_release.py",
    "tests/spark_jobs/test_extract.py",
    "tests/spark_jobs/test_standalone_cluster.py",
    "tests/spark_jobs/test_release_profiles.py",
    "tests/spark_jobs/test_report.py",
    "tests/dags/test_pipeline_run.py",
    "tests/altlake_cli/test_demo.py",
    "tests/plugins/test_task_summaries.py",
    "tests/spark_jobs/test_sql_server.py",
    "tests/spark_jobs/test_maintain.py",
    "tests/spark_jobs/test_session.py",
    "tests/spark_jobs/test_batches.py",
)


def pytest_collection_modifyitems(config, items: list) -> None:
    """The files of LONGEST_FIRST first, in its order; every other file after them, as collected."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_sessionfinish(session, exitstatus) -> None:
    """py4j logs "Closing down clientserver connection" from __del__ at interpreter exit, after pytest has
    closed the captured streams: CI's log filled with "--- Logging error ---" tracebacks. Not at INFO."""
    logging.getLogger("py4j").setLevel(logging.WARNING)


os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
# Fake AWS credentials for the whole run, set before any JVM starts: a JVM keeps the environment it was
# launched with, so credentials set later (when the first moto test runs) never reach the run's Spark
# session, and its DynamoDB client found none. Never the developer's real ones.
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
for _name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
    os.environ.pop(_name, None)
# Airflow reads its configuration on first import: the test run gets a private home (never the
# developer's ~/airflow or ./airflow_home) with this repo's DAGs and no examples.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="altlake-airflow-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")  # registers the DAGs' timetable
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
