"""`altlake airflow`: a local Airflow (`airflow standalone`) with altlake's DAGs, ready to click.

Sets AIRFLOW_HOME (Settings.airflow_home, default ./airflow_home) with a SQLite metadata DB, points
Airflow at this repo's dags/ and plugins/, turns the examples off, creates the `spark` pool, then
replaces itself with `airflow standalone` (scheduler, DAG processor, triggerer and the web UI /
REST API). The admin password is kept in AIRFLOW_HOME/simple_auth_manager_passwords.json.generated;
every start says where. Tasks see the same ALTLAKE_* settings.

A laptop's Airflow behaves as a person expects from it: the UI listens on 127.0.0.1 only (`--host`
to change), the altlake DAGs are unpaused from their first start so the asset chain cc_ingest ->
score_candidates -> build_release follows by itself, and the DAGs have no time-based schedule
(ALTLAKE_SCHEDULES=false: the monthly ingest would reach for Common Crawl's crawl list, which an
offline machine cannot): only runs a person triggers, and the runs their assets trigger, start.
`--schedules` keeps the monthly and daily schedules, as a production deployment has them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from altlake.config import Settings
from plugins.defaults import SCORING_POOL, SCORING_POOL_DESCRIPTION, SCORING_POOL_SLOTS
from plugins.defaults import SPARK_POOL, SPARK_POOL_DESCRIPTION, SPARK_POOL_SLOTS

REPO = Path(__file__).resolve().parent.parent
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="web UI and REST API port (default 8080)")
    parser.add_argument("--home", help="AIRFLOW_HOME (default: $ALTLAKE_AIRFLOW_HOME or ./airflow_home)")
    parser.add_argument("--host", default="127.0.0.1", help="address the web UI listens on (default 127.0.0.1: this machine only)")
    parser.add_argument("--schedules", action="store_true", help="let the monthly ingest and daily takedown schedules fire (they need the internet)")


def airflow_env(
    settings: Settings, port: int, base: dict[str, str] | None = None, host: str = "127.0.0.1", schedules: bool = False
) -> dict[str, str]:
    """The environment of every Airflow process: config by AIRFLOW__* variables, paths absolute
    (task processes do not share our working directory)."""
    home = Path(settings.airflow_home).absolute()
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": host,
            "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "ALTLAKE_SCHEDULES": str(schedules).lower(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
            # Task processes call the API server; on a busy laptop 5 s (the default) is too short.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "ALTLAKE_AIRFLOW_HOME": str(home),
            # standalone starts its components as `airflow ...` from PATH: this environment's.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    if "://" not in settings.lake_dir:
        env["ALTLAKE_LAKE_DIR"] = str(Path(settings.lake_dir).absolute())
    return env


def prepare(settings: Settings, port: int, host: str = "127.0.0.1", schedules: bool = False) -> dict[str, str]:
    """Create AIRFLOW_HOME, migrate the metadata DB and create our pools; returns the environment."""
    env = airflow_env(settings, port, host=host, schedules=schedules)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow = _airflow_bin()
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [airflow, "pools", "set", SPARK_POOL, str(SPARK_POOL_SLOTS), SPARK_POOL_DESCRIPTION],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )
    subprocess.run(  # deferred AWS Batch / Kubernetes jobs keep their slot: the pool bounds GPUs in use
        [airflow, "pools", "set", SCORING_POOL, str(SCORING_POOL_SLOTS), SCORING_POOL_DESCRIPTION, "--include-deferred"],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )
    return env


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env(airflow_home=args.home)
    print(f"altlake airflow: preparing {Path(settings.airflow_home).absolute()} ...", file=sys.stderr)
    env = prepare(settings, args.port, args.host, args.schedules)
    passwords = Path(env["AIRFLOW_HOME"]) / PASSWORDS_FILE
    shown = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    print(f"altlake airflow: starting airflow standalone on http://{shown}:{args.port} (listening on {args.host})", file=sys.stderr)
    print(f"altlake airflow: log in as admin; the password is in {passwords}"
          + ("" if passwords.exists() else " once the first start has written it"), file=sys.stderr)  # fmt: skip
    if not args.schedules:
        print("altlake airflow: time-based schedules are off (--schedules turns them on); trigger DAGs from the UI", file=sys.stderr)
    airflow = _airflow_bin()
    os.execve(airflow, [airflow, "standalone"], env)
    return 0  # not reached: execve replaces this process


def _airflow_bin() -> str:
    """The `airflow` script of this interpreter's environment (the venv altlake runs in)."""
    return str(Path(sys.executable).parent / "airflow")
