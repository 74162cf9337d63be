"""Start a throwaway PostgreSQL cluster on a loopback port, in a temp directory: the test suite's server
(``tests/pg`` re-exports it) and the soak's (``./dev soak --topology replicas``).

Debian's PostgreSQL server binaries live in /usr/lib/postgresql/<major>/bin (not on PATH); if none is
there, the Debian ``postgresql`` package is installed (as root) before anything else. ``postgres`` refuses
to run as root, so under root the cluster runs as an unprivileged system user (``sovereign-test``,
created if absent). fsync is off: this server is for tests only, and a crash just loses a temp dir.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sovereign.devtools.openbao_server import free_port

PG_USER = "sovereign-test"
SUPERUSER = "sovereign"
PREFERRED_MAJOR = "15"


class PostgresUnavailable(RuntimeError):
    """The throwaway PostgreSQL server could not be found, installed or started."""


def find_bin_dir() -> Path:
    override = os.environ.get("SOVEREIGN_PG_BIN")
    candidates = [Path(override)] if override else []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        majors = sorted((p.name for p in root.iterdir() if p.name.isdigit()), key=int, reverse=True)
        majors.sort(key=lambda m: m != PREFERRED_MAJOR)
        candidates += [root / m / "bin" for m in majors]
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    raise PostgresUnavailable(f"no PostgreSQL server binaries in {[str(c) for c in candidates] or root}")


def ensure_bin_dir() -> Path:
    """The server binaries; installs Debian's ``postgresql`` package only if they are missing."""
    try:
        return find_bin_dir()
    except PostgresUnavailable:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PostgresUnavailable(f"apt-get install postgresql failed:\n{done.stderr[-2000:]}")
    return find_bin_dir()


def _service_user() -> pwd.struct_passwd | None:
    """None when not root (the server then runs as us); else the unprivileged user, created if absent."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    done = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in (0, 9):  # 9: created meanwhile by a parallel run
        raise PostgresUnavailable(f"cannot create the user {PG_USER}: {done.stderr.strip()}")
    return pwd.getpwnam(PG_USER)


@dataclass
class PostgresServer:
    """One ``postgres`` process; ``url(db)`` gives a SQLAlchemy URL, ``create_database`` a fresh db."""

    bin_dir: Path
    root: Path
    port: int
    password: str = field(repr=False)
    user: pwd.struct_passwd | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} password={self.password} dbname={database}"

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = ensure_bin_dir()
        user = _service_user()
        root = Path(tempfile.mkdtemp(prefix="sovereign-pg-"))
        server = cls(bin_dir, root, free_port(), secrets.token_urlsafe(18), user)
        try:
            server._initdb()
            server._run("pg_ctl", "-D", str(server.data_dir), "-l", str(server.log_path), "-w", "-t", "30",
                        "start")  # fmt: skip
        except BaseException:
            server.destroy()
            raise
        atexit.register(server.destroy)
        return server

    def start_again(self, timeout: int = 60) -> None:
        """Start the server on its data after ``stop`` (immediate mode: it recovers from its WAL)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", str(timeout),
                  "start")  # fmt: skip

    def _initdb(self) -> None:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.root.chmod(0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# sovereign tests: loopback only, no durability (a temp dir)\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )

    def _run(self, tool: str, *args: str) -> None:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.root), "TZ": "UTC"}
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        done = subprocess.run(
            [str(self.bin_dir / tool), *args],
            env=env,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            **kwargs,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"{tool} failed ({done.returncode}):\n{done.stdout[-1500:]}{done.stderr[-1500:]}\n"
                f"log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its URL."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def execute(self, statement: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (for tests that inspect or disturb the server)."""
        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            cur = conn.execute(statement.encode())
            return list(cur.fetchall()) if cur.description else []

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(PostgresUnavailable):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
