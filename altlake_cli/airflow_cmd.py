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

`--database postgresql://...` is the team's Airflow on one host: the metadata database on Postgres,
LocalExecutor running tasks in parallel, and the scheduler, DAG processor, triggerer and API server
as separate processes (each logging to AIRFLOW_HOME/logs/components/), sharing one JWT secret; the
command supervises them and stops them all when one ends or on Ctrl-C. The compose file and the Helm
values in infra/ run the same components in containers.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from altlake.config import Settings
from plugins.defaults import SCORING_POOL, SCORING_POOL_DESCRIPTION, SCORING_POOL_SLOTS
from plugins.defaults import SPARK_POOL, SPARK_POOL_DESCRIPTION, SPARK_POOL_SLOTS

REPO = Path(__file__).resolve().parent.parent
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
# A team's Airflow: each component its own process (the API server also serves the UI).
COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
# Where the components of a team's Airflow log, under AIRFLOW_HOME.
COMPONENT_LOGS = Path("logs") / "components"
# The JWT secret every component signs and checks task tokens with, kept under AIRFLOW_HOME (0600).
JWT_SECRET_FILE = "jwt_secret"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="web UI and REST API port (default 8080)")
    parser.add_argument("--home", help="AIRFLOW_HOME (default: $ALTLAKE_AIRFLOW_HOME or ./airflow_home)")
    parser.add_argument("--host", default="127.0.0.1", help="address the web UI listens on (default 127.0.0.1: this machine only)")
    parser.add_argument("--schedules", action="store_true", help="let the monthly ingest and daily takedown schedules fire (they need the internet)")
    parser.add_argument(
        "--database", metavar="URL",
        help="a team's metadata database, e.g. postgresql://airflow:...@db:5432/airflow (default: $AIRFLOW__DATABASE__SQL_ALCHEMY_CONN "
        "when it names one; otherwise SQLite and `airflow standalone`): LocalExecutor and the four components as separate processes",
    )  # fmt: skip
    parser.add_argument("--parallelism", type=int, default=8, help="task processes LocalExecutor runs at once (team mode; default 8)")
    parser.add_argument("--spark-slots", type=int, help=f"slots of the `spark` pool (default {SPARK_POOL_SLOTS}: the embedded Derby catalog admits "
                        "one JVM; raise it with a shared metastore, ALTLAKE_METASTORE_URL)")  # fmt: skip
    parser.add_argument("--scoring-slots", type=int, help=f"slots of the `scoring` pool: batches scored at once (default {SCORING_POOL_SLOTS})")


def airflow_env(
    settings: Settings,
    port: int,
    base: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    schedules: bool = False,
    database: str | None = None,
    parallelism: int = 8,
) -> dict[str, str]:
    """The environment of every Airflow process: config by AIRFLOW__* variables, paths absolute
    (task processes do not share our working directory). With `database`, a team's components:
    that metadata database, LocalExecutor, and one JWT secret for all of them (Airflow would
    otherwise make up a different one in each process, and no task could talk to the API server)."""
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
    if database:
        env.update(
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(parallelism),
                "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET") or _jwt_secret(home),
            }
        )
    if "://" not in settings.lake_dir:
        env["ALTLAKE_LAKE_DIR"] = str(Path(settings.lake_dir).absolute())
    return env


def team_database(explicit: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The team's metadata database: --database, else an AIRFLOW__DATABASE__SQL_ALCHEMY_CONN that is
    not SQLite (a laptop's standalone Airflow keeps its SQLite file)."""
    if explicit:
        if explicit.startswith("sqlite"):
            raise ValueError("--database takes a server database (postgresql://...); without it altlake airflow runs on SQLite")
        return explicit
    configured = (os.environ if environ is None else environ).get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    return configured if configured and not configured.startswith("sqlite") else None


def _jwt_secret(home: Path) -> str:
    """The components' shared JWT secret, made once per AIRFLOW_HOME and kept there, so a restart of
    any one component still accepts the tokens the others issued."""
    path = home / JWT_SECRET_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def prepare(
    settings: Settings,
    port: int,
    host: str = "127.0.0.1",
    schedules: bool = False,
    database: str | None = None,
    parallelism: int = 8,
    spark_slots: int | None = None,
    scoring_slots: int | None = None,
) -> dict[str, str]:
    """Create AIRFLOW_HOME, migrate the metadata DB and create our pools; returns the environment."""
    env = airflow_env(settings, port, host=host, schedules=schedules, database=database, parallelism=parallelism)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow = _airflow_bin()
    _airflow(airflow, ["db", "migrate"], env)
    spark = spark_slots or SPARK_POOL_SLOTS
    description = SPARK_POOL_DESCRIPTION if spark == SPARK_POOL_SLOTS else "altlake Spark jobs (shared metastore)"
    _airflow(airflow, ["pools", "set", SPARK_POOL, str(spark), description], env)
    # Deferred AWS Batch / Kubernetes jobs keep their slot: the pool bounds GPUs in use.
    _airflow(airflow, ["pools", "set", SCORING_POOL, str(scoring_slots or SCORING_POOL_SLOTS), SCORING_POOL_DESCRIPTION, "--include-deferred"], env)
    return env


def _airflow(airflow: str, args: list[str], env: dict[str, str]) -> None:
    """One `airflow` command of the setup; its failure is one line with the command's last words."""
    done = subprocess.run([airflow, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"`airflow {' '.join(args[:2])}` failed ({done.returncode}): {last}")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env(airflow_home=args.home)
    database = team_database(args.database)
    print(f"altlake airflow: preparing {Path(settings.airflow_home).absolute()} ...", file=sys.stderr)
    env = prepare(settings, args.port, args.host, args.schedules, database, args.parallelism, args.spark_slots, args.scoring_slots)
    if database:
        return run_components(env, args.port, args.host)
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


def run_components(env: dict[str, str], port: int, host: str) -> int:
    """Start the team's components as separate processes and watch them: when one exits, or on
    SIGINT/SIGTERM, all are stopped (a half-running Airflow schedules nothing, silently)."""
    airflow = _airflow_bin()
    logs = Path(env["AIRFLOW_HOME"]) / COMPONENT_LOGS
    logs.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    for name in COMPONENTS:
        with (logs / f"{name}.log").open("ab") as out:
            processes[name] = subprocess.Popen([airflow, name], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    print(f"altlake airflow: {', '.join(COMPONENTS)} started (LocalExecutor); UI and REST API on http://{shown}:{port}; logs in {logs}", file=sys.stderr)
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    try:
        while not stopping:
            ended = {name: p.returncode for name, p in processes.items() if p.poll() is not None}
            if ended:
                name, code = next(iter(ended.items()))
                print(f"altlake airflow: {name} exited ({code}); stopping the others (see {logs / (name + '.log')})", file=sys.stderr)
                return 1
            time.sleep(1)
        print("altlake airflow: stopping", file=sys.stderr)
        return 0
    finally:
        _stop_all(processes.values())


def _stop_all(processes) -> None:
    """SIGTERM each component's process group (its task processes too), SIGKILL what outlives 60 s."""
    processes = [p for p in processes if p.poll() is None]
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + 60
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _airflow_bin() -> str:
    """The `airflow` script of this interpreter's environment (the venv altlake runs in)."""
    return str(Path(sys.executable).parent / "airflow")
