"""A real PostgreSQL server for the tests, started once per session: never a mock.

Where the binaries come from, in order:

1. the ``pgserver`` wheel (PyPI, in the ``test`` extra), which ships PostgreSQL 16's binaries
   (``pgserver/pginstall/bin``); a server starts from them in under a second;
2. Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``), newest version first.

We drive ``initdb`` and ``pg_ctl`` ourselves rather than through ``pgserver.get_server``: its
handle has no stop-then-start (the restart tests need one), it registers ``atexit`` hooks and a
global lock file, and it widens the permissions of every parent folder of its data directory.
Running the same two commands for both sources keeps one code path.

**As root.** PostgreSQL refuses to run as root ("root" execution of the PostgreSQL server is not
permitted). ``pgserver`` handles that by creating a system user ``pgserver`` (``useradd``) and
running ``initdb``/``pg_ctl`` as that user; we do the same, preferring an existing ``postgres``
account (Debian's package creates one) and otherwise creating ``pgserver`` as ``pgserver`` would.
The server's folder is a fresh ``mkdtemp`` under ``/tmp`` given to that user, so no other folder's
permissions change. A binaries source that this user cannot run is skipped for the next.

The server listens on a Unix socket in its own folder only (no TCP port to collide with a parallel
run, and the same address after a restart): URLs look like
``postgresql://postgres@/db?host=/tmp/movierec-pg-xyz``. Authentication is ``trust``; ``fsync``
stays on, so a stop, even ``immediate``, loses nothing committed, as on a real server.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

# The socket's full path must fit in sockaddr_un (107 bytes on Linux).
_MAX_SOCKET_DIR = 80
_START_TIMEOUT_S = 30


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; says what was tried and why each failed."""


def binary_sources() -> list[tuple[str, Path]]:
    """(name, bin folder) of every PostgreSQL install found, in order of preference."""
    found: list[tuple[str, Path]] = []
    # The wheel's own binaries, found without importing pgserver (its import sets up a lock file and
    # warns when XDG_RUNTIME_DIR is unset).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
        if (bin_dir / "pg_ctl").is_file() and (bin_dir / "initdb").is_file():
            found.append(("pgserver", bin_dir))

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(folder) / "pg_ctl").is_file() and (Path(folder) / "initdb").is_file():
            found.append((f"debian-{Path(folder).parent.name}", Path(folder)))
    return found


def _unprivileged_user() -> str | None:
    """The account the server runs as: None when we are not root (it runs as us)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    # What pgserver itself does as root (pgserver.utils.ensure_user_exists).
    subprocess.run(["useradd", "--system", "--shell", "/usr/sbin/nologin", "pgserver"], check=True,
                   capture_output=True, text=True)
    return "pgserver"


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; :meth:`stop` and :meth:`start` can repeat.

    ``url`` reaches the ``postgres`` database; :meth:`create_database` gives each test its own.
    """

    def __init__(self, source: str, bin_dir: Path, user: str | None) -> None:
        self.source = source
        self.bin_dir = bin_dir
        self.user = user
        parent = tempfile.gettempdir()
        if len(parent) > _MAX_SOCKET_DIR - 30:
            parent = "/tmp"
        self.base = Path(tempfile.mkdtemp(prefix="movierec-pg-", dir=parent))
        self.data_dir = self.base / "data"
        self.log_path = self.base / "server.log"
        self._names = itertools.count(1)
        self.running = False
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)

    # -- commands, run as the server's user
    def _run(self, tool: str, *args: str, timeout: float = _START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        account: dict[str, object] = {}
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            account = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        return subprocess.run([str(self.bin_dir / tool), *args], cwd=self.base, capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL, **account)

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise PostgresUnavailable(f"{self.source}: {what} failed ({result.returncode}): "
                                      f"{(result.stderr or result.stdout).strip()[-1500:]}\n{log}")

    def initdb(self) -> None:
        # --no-sync: a test cluster's template files need no fsync; the server itself keeps fsync on.
        self._check(self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                              "--encoding=UTF8", "--no-sync", "--no-instructions"), "initdb")

    def start(self) -> None:
        """Starts the server and waits until it accepts connections (no-op when running)."""
        if self.running:
            return
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.base}' -c max_connections=200"
        self._check(self._run("pg_ctl", "start", "-w", "-t", str(_START_TIMEOUT_S), "-D", str(self.data_dir),
                              "-l", str(self.log_path), "-o", options, timeout=_START_TIMEOUT_S + 5), "pg_ctl start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stops the server: ``fast`` (clients disconnected, clean shutdown) or ``immediate`` (like a crash:
        recovery replays the WAL at the next start)."""
        if not self.running:
            return
        self._check(self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir)), "pg_ctl stop")
        self.running = False

    def destroy(self) -> None:
        """Stops the server (as after a crash: it is thrown away) and deletes its folder."""
        with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # -- addresses
    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@/{quote(database)}?host={quote(str(self.base))}"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def create_schema(self) -> str:
        """A new empty schema (``test_<n>``) in the ``postgres`` database; returns a URL whose ``search_path``
        starts there, so unqualified tables are created and found in it. Milliseconds, where a database
        takes about 0.2 s: what a test that needs an empty store uses."""
        import psycopg

        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{name}"'.encode())
        return f"{self.url}&options={quote(f'-csearch_path={name}')}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (``test_<n>`` unless named); returns its URL."""
        import psycopg

        name = name or f"test_{next(self._names)}"
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url_for(name)


def start_server() -> PostgresServer:
    """Initialises and starts a server from the first binaries source that works."""
    sources = binary_sources()
    if not sources:
        raise PostgresUnavailable("no PostgreSQL binaries: install the `pgserver` wheel (pip install -e '.[test]') "
                                  "or Debian's `postgresql` package")
    user = _unprivileged_user()
    failures = []
    for source, bin_dir in sources:
        server = PostgresServer(source, bin_dir, user)
        try:
            server.initdb()
            server.start()
            return server
        except (PostgresUnavailable, OSError, subprocess.SubprocessError) as error:
            failures.append(f"{source} ({bin_dir}): {error}")
            server.destroy()
    raise PostgresUnavailable("could not start PostgreSQL:\n" + "\n".join(failures))
