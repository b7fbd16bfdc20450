"""`altlake sql-server`: the lake's tables over JDBC/ODBC (beeline, DBeaver, BI tools).

Spark's Thrift server (HiveServer2 protocol, shipped with pyspark) started with the session settings
of every job (`spark_conf`: Delta, the jars, the metastore), so it sees the tables the jobs register.
With a Postgres metastore (ALTLAKE_METASTORE_URL=jdbc:postgresql:...) jobs keep writing while it
serves, and each query reads the tables' latest Delta commit; embedded Derby admits one JVM, so
there no job can run while the server holds the catalog.

    altlake sql-server --port 10000
    beeline -u jdbc:hive2://127.0.0.1:10000/altlake -n $USER
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from altlake.config import Settings
from altlake.paths import DATABASE

THRIFT_SERVER_CLASS = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"


def jdbc_url(host: str, port: int) -> str:
    return f"jdbc:hive2://{host}:{port}/{DATABASE}"


def spark_bin(name: str) -> Path:
    """A launcher script of the Spark that pyspark ships (spark-submit, beeline)."""
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / name


def thrift_server_command(settings: Settings, host: str, port: int) -> list[str]:
    """The spark-submit command line of the Thrift server, with the session's conf: a deployment
    runs exactly this (`spark-internal` is how Spark's own start-thriftserver.sh names no app jar)."""
    from spark_jobs.session import spark_conf

    cmd = [str(spark_bin("spark-submit")), "--class", THRIFT_SERVER_CLASS]
    for key, value in spark_conf(settings, "altlake-sql-server").items():
        cmd += ["--conf", f"{key}={value}"]
    return [*cmd, "spark-internal", "--hiveconf", f"hive.server2.thrift.bind.host={host}", "--hiveconf", f"hive.server2.thrift.port={port}"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", help="lake directory or s3a:// URL (default: $ALTLAKE_LAKE_DIR or ./lake)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=10000, help="HiveServer2 port (default: 10000)")


def run(args: argparse.Namespace) -> int:
    from spark_jobs.session import metastore_dir, metastore_url, require_lake

    _check_listenable(args.host, args.port)
    settings = Settings.from_env(lake_dir=args.lake)
    require_lake(settings)
    if metastore_url(settings).startswith("jdbc:derby:"):
        metastore_dir(settings).mkdir(parents=True, exist_ok=True)
        print("altlake sql-server: the catalog is embedded Derby: no job can run while this server holds it "
              "(set ALTLAKE_METASTORE_URL=jdbc:postgresql://... to share it)", file=sys.stderr)
    cmd = thrift_server_command(settings, args.host, args.port)
    print(f"altlake sql-server: serving {jdbc_url(args.host, args.port)} (connect: beeline -u {jdbc_url(args.host, args.port)} -n $USER)", flush=True)
    os.execv(cmd[0], cmd)  # the server is this process: stopping it stops the JVM, no orphan


def _check_listenable(host: str, port: int) -> None:
    """A taken port or a foreign address as one line here, not as the JVM's stack trace later."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM binds: a closing connection is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
