"""A throwaway Postgres server on 127.0.0.1 for tests that need a real shared database.

Why: Derby (the default metastore) and SQLite admit one process; the Hive metastore shared by jobs
and the Thrift server, and Airflow's metadata database, need a real server. The cluster lives in a
temporary directory (data, unix socket, log) and is stopped and deleted at the end.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote


def find_postgres_bin() -> Path | None:
    """The directory holding initdb/pg_ctl: $ALTLAKE_PG_BIN, PATH, or the newest Debian install."""
    if os.environ.get("ALTLAKE_PG_BIN"):
        return Path(os.environ["ALTLAKE_PG_BIN"])
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent  # Debian links single tools into /usr/local/bin
    installs = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(installs[-1]).parent if installs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> list[str]:
    """Postgres refuses to run as root: as root, run the server tools as an unprivileged user."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"]
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run Postgres")


OWNER_FILE = "owner.pid"


def _stop_orphans(bin_dir: Path) -> None:
    """Stop and delete the clusters of test runs that were killed before their fixture could stop
    them (a SIGKILLed pytest runs no finalizer): each records the pid of the process that started it."""
    for root in Path(tempfile.gettempdir()).glob("altlake-pg-*"):
        try:
            os.kill(int((root / OWNER_FILE).read_text()), 0)
            continue  # its run is alive
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # no owner recorded, or not ours to judge
        if (root / "data" / "postmaster.pid").exists():
            subprocess.run([*_run_as(), str(bin_dir / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(root / "data")], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


class Postgres:
    """One running cluster: a superuser with a password (TCP logins need it), databases made on demand."""

    def __init__(self, bin_dir: Path, user: str = "altlake", password: str = "altlake") -> None:
        self.bin_dir = bin_dir
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.user = user
        self.password = password
        self.root = Path(tempfile.mkdtemp(prefix="altlake-pg-"))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "postgres.log"
        self._as = _run_as()

    def start(self) -> "Postgres":
        _stop_orphans(self.bin_dir)
        (self.root / OWNER_FILE).write_text(str(os.getpid()))
        self.socket_dir.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as:
            owner = pwd.getpwnam(self._as[2])
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._tool(
            "initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
        )
        pwfile.unlink()
        options = f"-p {self.port} -k {self.socket_dir} -h {self.host} -c fsync=off -c max_connections=300"
        self._tool("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(self.log), "-o", options)
        return self

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._tool("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir))
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Creates `name` (no-op when it exists) and returns it, so calls can be inlined in URLs."""
        exists = self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if not exists.strip():
            self.sql(f'CREATE DATABASE "{name}"')
        return name

    def sql(self, statement: str, db: str = "postgres") -> str:
        """Runs one statement with psql over the unix socket; returns its unaligned, tuples-only output."""
        cmd = [str(self.bin_dir / "psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user,
               "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", statement]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    def sqlalchemy_url(self, db: str, driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://{quote(self.user)}:{quote(self.password)}@{self.host}:{self.port}/{db}"

    def jdbc_url(self, db: str, credentials: bool = True) -> str:
        """A JDBC URL; with credentials, user and password ride in its query string (pgjdbc reads them there)."""
        url = f"jdbc:postgresql://{self.host}:{self.port}/{db}"
        return f"{url}?user={quote(self.user)}&password={quote(self.password)}" if credentials else url

    def _tool(self, name: str, *args: str) -> None:
        cmd = [*self._as, str(self.bin_dir / name), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr.strip()} {log}")
