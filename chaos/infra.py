"""Throwaway PostgreSQL and Redis servers that chaos experiments may stop, kill and restart.

The shared servers on 127.0.0.1:5432 and :6379 belong to everybody's tests; an experiment that
wants to pull the plug on a database does it to one of these instead::

    async with ThrowawayPostgres() as pg, ThrowawayRedis() as cache:
        settings = Settings(database=DatabaseSettings(url=pg.url),
                            redis=RedisSettings(url=cache.url))
        ...
        await pg.kill()      # SIGKILL the postmaster: clients see their connections drop
        await pg.start()     # crash recovery, then the same port and the same data

Each server is a child process of this Python process, lives in its own temporary directory on a
free 127.0.0.1 port (the port stays the same across restarts, so clients reconnect to the same
URL), and is torn down with its directory by ``close()`` (also run by ``async with``). As last
resorts, ``atexit`` closes whatever is still open, and on Linux ``setpriv --pdeathsig`` makes a
server shut itself down if the Python process dies without running ``atexit`` (SIGKILL, OOM).

PostgreSQL runs as the ``postgres`` OS user when we are root (it refuses to run as root), with
``fsync=off`` and small buffers: these clusters hold test data only. The lifecycle methods are
``async`` (the chaos tooling is asyncio); ``close()`` is synchronous so ``atexit`` can call it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

import asyncpg

__all__ = [
    "InfraError", "StopMode", "ThrowawayPostgres", "ThrowawayRedis", "close_all", "free_port",
]

log = logging.getLogger(__name__)

StopMode = Literal["smart", "fast", "immediate"]

# How the postmaster reads each signal (the same ones ``pg_ctl stop -m MODE`` sends).
_PG_STOP_SIGNALS: dict[str, signal.Signals] = {
    "smart": signal.SIGTERM,  # wait for clients to disconnect
    "fast": signal.SIGINT,  # roll back and disconnect clients, checkpoint, exit
    "immediate": signal.SIGQUIT,  # exit without a checkpoint: crash recovery on next start
}

_POLL_INTERVAL = 0.02


class InfraError(RuntimeError):
    """A throwaway server could not be set up, started or stopped."""


# --- helpers -------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nobody listens on right now, below the kernel's ephemeral range.

    A port the kernel picked for a bind to port 0 comes from the ephemeral range, which is also
    where every outgoing connection gets its local port: between choosing the port and binding
    it (or, for a server killed and restarted on the same port, between its lives) a connection
    could take it, and the bind fails with EADDRINUSE (seen in the game day). Below the range
    only another explicit bind can. Another process may still take it; callers that can bind
    port 0 themselves should.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = _PORT_FLOOR + secrets.randbelow(max(1, low - _PORT_FLOOR))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded range: any port
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        return chosen


_PORT_FLOOR = 20_000


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768  # Linux's default
    return low if low > _PORT_FLOOR + 1_000 else _PORT_FLOOR + 10_000


def _find_pg_bindir() -> Path:
    """Where ``initdb`` and ``postgres`` live: $LUNAS_PG_BINDIR, Debian's newest, or $PATH."""
    explicit = os.environ.get("LUNAS_PG_BINDIR")
    if explicit:
        return Path(explicit)
    candidates = []
    for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb"):
        version = initdb.parent.parent.name
        if version.isdigit():
            candidates.append((int(version), initdb.parent))
    if candidates:
        return max(candidates)[1]
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise InfraError("no PostgreSQL binaries found: install them or set LUNAS_PG_BINDIR")


def _find_redis_server() -> Path:
    found = os.environ.get("LUNAS_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        raise InfraError("no redis-server found: install it or set LUNAS_REDIS_SERVER")
    return Path(found)


def dies_with_us(argv: list[str], signal_name: str = "TERM") -> list[str]:
    """``argv`` under ``setpriv --pdeathsig``: if we are killed before we can clean up, the kernel
    signals the child. It fires when the *spawning thread* ends, so spawn from a thread that lives
    as long as the child should (the main thread, or a game day's loop thread)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, f"--pdeathsig={signal_name}", "--", *argv] if setpriv else argv


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in process group ``pgid``."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: ask the kernel (counts zombies too, so errs on "alive")
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


async def _wait_exit(proc: subprocess.Popen[bytes], limit: float) -> bool:
    """Wait (not blocking the loop) for ``proc`` to exit and reap it; False after ``limit`` s."""
    deadline = time.monotonic() + limit
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_INTERVAL)
    return True


async def _wait_group_gone(pgid: int, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_INTERVAL)
    return True


def _wait_group_gone_sync(pgid: int, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- the registry atexit empties ------------------------------------------------------------------

_live: set[_ChildServer] = set()
_live_lock = threading.Lock()
_atexit_registered = False


def _register(server: _ChildServer) -> None:
    global _atexit_registered
    with _live_lock:
        _live.add(server)
        if not _atexit_registered:
            atexit.register(close_all)
            _atexit_registered = True


def _unregister(server: _ChildServer) -> None:
    with _live_lock:
        _live.discard(server)


def close_all() -> None:
    """Stop every throwaway server still open and delete its directory (registered with atexit)."""
    with _live_lock:
        servers = list(_live)
    for server in servers:
        try:
            server.close()
        except Exception:
            log.exception("could not close %r", server)


# --- the common lifecycle ------------------------------------------------------------------------


class _ChildServer(ABC):
    """A server process we spawn, probe, signal and reap ourselves; subclasses say how."""

    kind: str = "server"
    _dir_prefix: str = "lunas-chaos-"
    _pdeath_signal: str = "TERM"

    def __init__(self, *, port: int | None, start_timeout: float, stop_timeout: float) -> None:
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_once = False
        self._closed = False

    # -- what subclasses provide

    @abstractmethod
    def _prepare(self, root: Path) -> None:
        """One-time set-up of the fresh directory ``root`` (blocking; runs in a thread)."""

    @abstractmethod
    def _command(self) -> list[str]:
        """The server's command line."""

    @abstractmethod
    async def _probe(self) -> bool:
        """Whether the server answers (quickly; never raises)."""

    async def _on_first_start(self) -> None:  # noqa: B027 - an optional hook
        """Runs once, the first time the server answers."""

    def _spawn_user(self) -> pwd.struct_passwd | None:
        """The OS user to run the server as, or None for ourselves."""
        return None

    # -- introspection

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive (it may still be starting up or shutting down)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def directory(self) -> Path | None:
        """The temporary directory holding the server's files (None before the first start)."""
        return self._root

    @property
    def log_path(self) -> Path | None:
        return self._root / "server.log" if self._root is not None else None

    def log_tail(self, lines: int = 40, *, since: int = 0) -> str:
        """The last ``lines`` lines the server logged (after byte offset ``since``)."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        with path.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self.running else "stopped")
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    # -- lifecycle

    async def is_up(self) -> bool:
        """Whether the server runs and answers right now."""
        return self.running and await self._probe()

    async def start(self) -> None:
        """Start the server (set it up first if needed) and wait until it answers.

        A no-op when it already runs. Raises InfraError with the tail of the server's log when it
        exits or does not answer within ``start_timeout`` seconds (the process is then killed).
        """
        if self._closed:
            raise InfraError(f"{self!r} was closed")
        if self.running and self._started_once:
            return
        if self._root is None:
            root = Path(tempfile.mkdtemp(prefix=self._dir_prefix))
            self._root = root
            _register(self)
            try:
                await asyncio.to_thread(self._prepare, root)
            except BaseException:
                # Leave nothing half set up: the next start() begins from scratch.
                shutil.rmtree(root, ignore_errors=True)
                self._root = None
                _unregister(self)
                raise
        # A port picked by free_port() can be taken before the first start: pick another then.
        attempts = 1 if self._fixed_port or self._started_once else 3
        for attempt in range(0 if self.running else attempts):  # running: only the hook failed
            try:
                await self._start_once()
                break
            except _PortTaken:
                if attempt == attempts - 1:
                    raise
                self._port = free_port()
        if not self._started_once:
            await self._on_first_start()
            self._started_once = True

    async def _start_once(self) -> None:
        assert self._root is not None and self.log_path is not None
        if self._log is None:
            self._log = self.log_path.open("ab")
        offset = self._log.tell()
        self._proc = self._spawn()
        proc = self._proc
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc.poll() is not None:
                await self._signal_and_wait(signal.SIGKILL, 10)  # reaps whatever it left behind
                tail = self.log_tail(since=offset)
                port_taken = "Address already in use" in tail
                if port_taken and not (self._fixed_port or self._started_once):
                    raise _PortTaken(tail)
                raise InfraError(
                    f"{self.kind} on port {self.port} exited with {proc.returncode} while starting;"
                    f" log tail ({self.log_path}):\n{tail}"
                )
            if await self._probe():
                return
            if time.monotonic() >= deadline:
                await self._signal_and_wait(signal.SIGKILL, 10)
                raise InfraError(
                    f"{self.kind} on port {self.port} did not answer within {self.start_timeout}s;"
                    f" log tail ({self.log_path}):\n{self.log_tail(since=offset)}"
                )
            await asyncio.sleep(0.05)

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._root is not None and self._log is not None
        cmd = self._command()
        # Shut the server down if we die without running atexit. The parent-death signal is sent
        # when the *thread* that forked exits, so only arm it from the main thread.
        if threading.current_thread() is threading.main_thread():
            cmd = dies_with_us(cmd, self._pdeath_signal)
        user = self._spawn_user()
        return subprocess.Popen(  # noqa: S603 - our own argv, no shell
            cmd,
            cwd=self._root,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: a terminal's ^C does not reach it
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )

    async def _signal_and_wait(self, sig: signal.Signals, grace: float) -> None:
        """Send ``sig`` to the server, wait for it (SIGKILL after ``grace`` s) and its group."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            if not await _wait_exit(proc, grace):
                log.warning("%r ignored %s for %ss; killing it", self, sig.name, grace)
                proc.kill()
                await _wait_exit(proc, 10)
        self._proc = None
        # Whatever the server left behind (PostgreSQL backends after the postmaster was killed)
        # notices and exits within milliseconds; make sure before anyone starts it again.
        if not await _wait_group_gone(proc.pid, 5):
            _killpg(proc.pid, signal.SIGKILL)
            await _wait_group_gone(proc.pid, 5)

    async def kill(self) -> None:
        """SIGKILL the server process, as a crash would (no shutdown work of any kind)."""
        await self._signal_and_wait(signal.SIGKILL, 10)

    async def aclose(self) -> None:
        """``close()`` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop the server at once and delete its directory; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            proc, self._proc = self._proc, None
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(self._close_signal())
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=10)
                if not _wait_group_gone_sync(proc.pid, 5):
                    _killpg(proc.pid, signal.SIGKILL)
                    _wait_group_gone_sync(proc.pid, 5)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
            _unregister(self)

    def _close_signal(self) -> signal.Signals:
        return signal.SIGTERM

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _PortTaken(InfraError):
    pass


# --- PostgreSQL ----------------------------------------------------------------------------------


class ThrowawayPostgres(_ChildServer):
    """A private PostgreSQL cluster in a temporary directory, for experiments to break.

    ``url`` (SQLAlchemy, asyncpg driver) and ``dsn`` (libpq/asyncpg) name database ``database``
    (created on the first start) as superuser ``postgres`` with trust authentication. ``settings``
    adds or overrides postgresql.conf parameters.
    """

    kind = "PostgreSQL"
    _dir_prefix = "lunas-chaos-pg-"
    _pdeath_signal = "QUIT"  # immediate shutdown: the postmaster takes its backends along

    def __init__(
        self, *, database: str = "lunas", port: int | None = None, max_connections: int = 200,
        shared_buffers: str = "32MB", settings: Mapping[str, str] | None = None,
        bindir: str | os.PathLike[str] | None = None, start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
            raise ValueError(f"database name {database!r} must be a plain identifier")
        self.database = database
        self.bindir = Path(bindir) if bindir is not None else _find_pg_bindir()
        self._settings: dict[str, str] = {
            "max_connections": str(max_connections),
            "shared_buffers": shared_buffers,
            # Durable against a killed server (commits reach the OS before they are
            # acknowledged), not against a crashed machine, which these never see.
            "fsync": "off",
            "max_wal_size": "256MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] '",
            **(dict(settings) if settings else {}),
        }

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/DATABASE``, for asyncpg and libpq tools."""
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    @property
    def url(self) -> str:
        """``postgresql+asyncpg://postgres@127.0.0.1:PORT/DATABASE``, for SQLAlchemy."""
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{self.database}"

    @property
    def data_dir(self) -> Path | None:
        return self._root / "data" if self._root is not None else None

    async def stop(self, mode: StopMode = "fast", *, grace: float | None = None) -> None:
        """Shut the server down the way ``pg_ctl stop -m MODE`` would, and wait for it.

        ``fast`` disconnects clients and checkpoints; ``immediate`` exits at once, leaving crash
        recovery to the next start; ``smart`` waits for clients to disconnect. SIGKILL follows if
        it has not exited after ``grace`` (default ``stop_timeout``) seconds. No-op if stopped.
        """
        sig = _PG_STOP_SIGNALS[mode]
        await self._signal_and_wait(sig, self.stop_timeout if grace is None else grace)

    async def restart(self, mode: StopMode = "fast") -> None:
        """``stop(mode)`` then ``start()``: same port, same data."""
        await self.stop(mode)
        await self.start()

    def _close_signal(self) -> signal.Signals:
        return signal.SIGQUIT

    def _spawn_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise InfraError("running as root but there is no 'postgres' OS user to run "
                             "PostgreSQL as") from None

    def _prepare(self, root: Path) -> None:
        user = self._spawn_user()
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        data = root / "data"
        initdb = [
            str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ]
        result = subprocess.run(  # noqa: S603 - our own argv, no shell
            initdb, cwd=root, capture_output=True, check=False,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode("utf-8", "replace")
            raise InfraError(f"initdb failed ({result.returncode}):\n{output[-4000:]}")
        lines = [f"{name} = {value}" for name, value in self._settings.items()]
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# lunas chaos throwaway cluster\n" + "\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        assert self._root is not None
        # Port, address and socket go on the command line: the port may change before the first
        # successful start (see start()).
        return [
            str(self.bindir / "postgres"), "-D", str(self._root / "data"), "-p", str(self.port),
            "-c", f"listen_addresses={self.host}", "-c", f"unix_socket_directories={self._root}",
        ]

    async def _connect(self, database: str, connect_timeout: float) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.host, port=self.port, user="postgres", database=database,
            timeout=connect_timeout,
        )

    async def _probe(self) -> bool:
        # A real query, not just pg_isready: during crash recovery the server accepts TCP
        # connections but refuses sessions ("the database system is starting up").
        # Any failure (refused, reset, "starting up", timeout) means "not up"; never raises.
        try:
            conn = await self._connect("postgres", 2.0)
        except Exception:
            return False
        try:
            await conn.fetchval("SELECT 1", timeout=2.0)
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2.0)
        return True

    async def _on_first_start(self) -> None:
        conn = await self._connect("postgres", 10.0)
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", self.database)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()


# --- Redis ---------------------------------------------------------------------------------------


class ThrowawayRedis(_ChildServer):
    """A private, memory-only redis-server: nothing survives a restart, by design."""

    kind = "Redis"
    _dir_prefix = "lunas-chaos-redis-"
    _pdeath_signal = "TERM"

    def __init__(
        self, *, port: int | None = None, args: Sequence[str] = (),
        executable: str | os.PathLike[str] | None = None, start_timeout: float = 15.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.executable = Path(executable) if executable is not None else _find_redis_server()
        self.args = list(args)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    async def stop(self, *, grace: float | None = None) -> None:
        """SIGTERM the server and wait for it (SIGKILL after ``grace`` s). No-op if stopped."""
        await self._signal_and_wait(signal.SIGTERM, self.stop_timeout if grace is None else grace)

    async def restart(self) -> None:
        """``stop()`` then ``start()``: same port, empty data set."""
        await self.stop()
        await self.start()

    def _prepare(self, root: Path) -> None:
        pass  # the directory is all redis-server needs

    def _command(self) -> list[str]:
        assert self._root is not None
        return [
            str(self.executable), "--port", str(self.port), "--bind", self.host,
            "--save", "", "--appendonly", "no", "--dir", str(self._root),
            "--daemonize", "no", "--logfile", "", *self.args,
        ]

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(2.0):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(b"PING\r\n")
                    await writer.drain()
                    reply = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError):
            return False
        return reply == b"+PONG\r\n"
