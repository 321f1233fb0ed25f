"""Async engine construction and schema migration (Alembic), for PostgreSQL and SQLite alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from orchestrator.settings import DatabaseSettings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

PING_AFTER_IDLE = 1.0
"""Seconds a pooled PostgreSQL connection may sit idle before its next checkout pings it."""


class DatabaseUnreachable(Exception):
    """``LUNAS_DATABASE_URL`` names a database Lunas cannot connect to. The message says where and
    why in one line an operator can act on (never the URL itself: it may carry a password)."""


REACH_TIMEOUT = 10.0
"""Seconds ``check_reachable`` waits for a first connection (asyncpg's own default is 60)."""


async def check_reachable(engine: AsyncEngine) -> None:
    """Connect once, so a command that cannot reach its database says so in one line before it
    starts anything, instead of a driver's traceback from deep inside its first query."""
    url = engine.url
    where = (f"the SQLite database {url.database}" if engine.dialect.name == "sqlite"
             else f"the database at {url.host or 'localhost'}:{url.port or 5432}")
    try:
        async with asyncio.timeout(REACH_TIMEOUT), engine.connect():
            pass
    except TimeoutError as error:
        raise DatabaseUnreachable(f"cannot reach {where}: no answer in {REACH_TIMEOUT:g} s; is "
                                  f"that its address? (LUNAS_DATABASE_URL)") from error
    except socket.gaierror as error:
        raise DatabaseUnreachable(f"cannot reach {where}: no host is known by that name "
                                  f"(LUNAS_DATABASE_URL)") from error
    except OSError as error:  # refused, no route
        why = ("connection refused" if isinstance(error, ConnectionRefusedError)
               else error.strerror or str(error))
        raise DatabaseUnreachable(f"cannot reach {where} ({why}); is it running? "
                                  f"(LUNAS_DATABASE_URL)") from error
    except exc.DBAPIError as error:  # it answered, and refused: no such database, role, password
        why = str(error.orig).splitlines()[0] if error.orig is not None else str(error)
        if engine.dialect.name == "sqlite":
            why += "; does its directory exist, and may Lunas write there?"
        raise DatabaseUnreachable(f"cannot use {where}: {why} (LUNAS_DATABASE_URL)") from error


async def check_migrated(engine: AsyncEngine) -> None:
    """Refuse, in one line, a database no ``lunas migrate`` has run on: every command would
    otherwise fail on its first table with a driver's traceback. Only a schema that is not there
    at all: an older or newer revision is what a rolling deploy runs on for a while."""
    try:
        async with engine.connect() as conn:
            migrated = (await conn.exec_driver_sql(
                "SELECT count(*) FROM alembic_version")).scalar()
    except exc.DBAPIError:  # no such table
        migrated = 0
    if not migrated:
        raise DatabaseUnreachable("the database has no Lunas schema yet: run `lunas migrate` "
                                  "first (LUNAS_DATABASE_URL)")


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    if settings.is_sqlite:
        engine = create_async_engine(settings.url, connect_args={"timeout": 30},
                                     hide_parameters=True)
        _tune_sqlite(engine)
        return engine
    engine = create_async_engine(
        settings.url,
        pool_size=settings.pool_size,
        # No overflow: an overflow connection is closed as soon as it is returned, so a burst
        # above pool_size made PostgreSQL fork a backend (and asyncpg set up codecs) per request.
        # Waiting a few milliseconds for a pooled connection is far cheaper.
        max_overflow=0,
        pool_recycle=1800,
        # A statement's parameters are customers' emails, phones and account numbers: keep them
        # out of exception messages, which reach logs, last_error and traces.
        hide_parameters=True,
    )
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Pre-ping, but only connections that have been idle for ``PING_AFTER_IDLE`` seconds.

    SQLAlchemy's ``pool_pre_ping`` costs three round trips per checkout on asyncpg (BEGIN, ``;``,
    ROLLBACK): a third of a capture's. A connection returned moments ago is as good as the last
    statement it ran; one that sat idle may have been closed by a restart or a proxy, and is
    pinged exactly as ``pool_pre_ping`` would. A failed ping discards every pooled connection
    older than now, as ``pool_pre_ping`` does, and the checkout retries on a new one.
    """
    dialect = engine.sync_engine.dialect

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["lunas_idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("lunas_idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return  # a fresh connection, or one in use a moment ago
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as error:
            raise exc.InvalidatePoolError() from error


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: object, _record: object) -> None:
        cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
        # WAL lets the status reads run beside the single writer; FK checks are off by default.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def _alembic_config(url: str) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic over the given engine's connection."""
    from alembic import command

    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per revision is noise
    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))

    def _upgrade(connection: Connection) -> None:
        cfg.attributes["connection"] = connection  # type: ignore[attr-defined]
        command.upgrade(cfg, revision)  # type: ignore[arg-type]

    await _run_migrations(engine, _upgrade)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    from alembic import command

    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))

    def _down(connection: Connection) -> None:
        cfg.attributes["connection"] = connection  # type: ignore[attr-defined]
        command.downgrade(cfg, revision)  # type: ignore[arg-type]

    await _run_migrations(engine, _down)


_MIGRATION_LOCK = 7_317_101_155  # any constant; the same for every Lunas process


async def _release_migration_lock(conn: AsyncConnection) -> None:
    """Unlock for the next migrator. If the connection broke (often the very reason a revision
    failed), the unlock fails too: the lock went with the session, and the revision's own error
    must be the one that reaches the operator, so this one is only logged. The connection is
    dropped rather than pooled, in case it still holds the lock."""
    try:
        await conn.rollback()
        await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")
        await conn.commit()
    except Exception:
        logging.getLogger(__name__).warning(
            "migration lock: unlock failed; the connection is dropped", exc_info=True)
        with contextlib.suppress(Exception):
            await conn.invalidate()


async def _run_migrations(engine: AsyncEngine, step: Callable[[Connection], None]) -> None:
    """``step`` on one connection. On PostgreSQL, a transaction per revision (so a revision may
    build an index concurrently: migrations/online.py). On SQLite, one transaction for all of
    them, with foreign keys off while it runs: SQLite changes a table's constraints by copying it
    (Alembic's batch mode), and with keys enforced, dropping the old copy fails as soon as another
    table's row refers to one of its rows. This is SQLite's own recipe: keys off outside the
    transaction (the pragma is ignored inside one), ``foreign_key_check`` before committing, keys
    on again."""
    if engine.dialect.name != "sqlite":
        async with engine.connect() as conn:
            # Two deploys migrating at once would each build and drop the other's concurrent
            # indexes; the second waits here instead. A session lock: it outlives the commits.
            # Polled, outside a transaction: a session blocked in pg_advisory_lock is itself
            # a transaction, and the first migrator's CREATE INDEX CONCURRENTLY waits for every
            # transaction older than it, so the two would deadlock.
            while not (await conn.exec_driver_sql(
                    f"SELECT pg_try_advisory_lock({_MIGRATION_LOCK})")).scalar():
                await conn.commit()
                await asyncio.sleep(0.2)
            await conn.commit()
            try:
                # Not in a transaction: Alembic begins and commits one per revision
                # (migrations/env.py).
                await conn.run_sync(step)
                await conn.commit()  # what the version lookups began; a no-op otherwise
            finally:
                await _release_migration_lock(conn)
        return
    async with engine.connect() as conn:
        # The first statement on the connection: the driver opens its transaction only at the
        # first write, so the pragma takes effect.
        await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            await conn.run_sync(step)
            broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
            if broken:
                raise RuntimeError(f"the migration would leave rows breaking foreign keys: "
                                   f"{[tuple(r) for r in broken[:5]]}")
        except BaseException:
            await conn.rollback()  # a failed step stores none of its rows
            raise
        else:
            await conn.commit()
        finally:
            # Outside any transaction now (committed or rolled back), so the pragma applies
            # before the connection goes back to the pool.
            await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            await conn.commit()
