"""A real PostgreSQL server for the test session: initdb in a temporary folder, on 127.0.0.1
and a free port, trust authentication, stopped at the end. PostgreSQL refuses to run as root,
so as root its programs run as the `postgres` user (runuser)."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
START_TIMEOUT_S = 60


class ServerError(RuntimeError):
    """The server could not be started; the message says why and what to install."""


def bin_dir() -> Path:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/N/bin (newest)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )
    if not found:
        raise ServerError(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); "
            "`make install` installs it (apt-get install postgresql)"
        )
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """One running cluster; `url(name)` gives a fresh database's SQLAlchemy URL."""

    root: Path
    port: int
    bindir: Path
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "kb") -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.admin_url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def copy_database(self, url: str) -> str:
        """A new database holding a copy of the one at url (which nobody may be connected
        to: PostgreSQL copies it as a template), and its URL."""
        import psycopg

        source = url.rsplit("/", 1)[1]
        name = f"{source}_copy_{next(self._names)}"
        with psycopg.connect(self.admin_url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        return self.url(name)

    def stop(self) -> None:
        _run(self.bindir / "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop",
             check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _as_postgres() -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--"] if os.geteuid() == 0 else []


def _run(*command: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*_as_postgres(), *map(str, command)], capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)
    if check and done.returncode != 0:
        raise ServerError(
            f"{Path(str(command[0])).name} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return done


def start(durable: bool = False) -> Server:
    """initdb and start a cluster; raise ServerError with the reason when it cannot.

    The tests run it with fsync off (nothing of it outlives the session); durable=True keeps
    PostgreSQL's default, for benchmarks of the commit rate."""
    bindir = bin_dir()
    root = Path(tempfile.mkdtemp(prefix="vlkb-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SUPERUSER)
        except KeyError as exc:
            raise ServerError(f"no `{SUPERUSER}` user to run PostgreSQL as (not root)") from exc
        os.chown(root, owner.pw_uid, owner.pw_gid)
    try:
        _run(bindir / "initdb", "-D", root / "data", "-U", SUPERUSER, "-A", "trust",
             "-E", "UTF8", "--no-sync", "--no-locale")
        last = ""
        for _ in range(3):  # the port chosen may be taken by someone else before we bind it
            port = free_port()
            fsync = "on" if durable else "off"
            options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync={fsync} -c max_connections=100"
            done = _run(bindir / "pg_ctl", "-D", root / "data", "-l", root / "server.log",
                        "-o", options, "-w", "-t", START_TIMEOUT_S, "start", check=False)
            if done.returncode == 0:
                return Server(root=root, port=port, bindir=bindir)
            log = root / "server.log"
            last = log.read_text(errors="replace")[-2000:] if log.exists() else done.stderr
        raise ServerError(f"pg_ctl could not start the server: {last.strip()}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
