"""The unit of work: one transaction per use case, committed as a whole or not at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"


class Database:
    """Hands out transactions and read connections over one engine.

    SQLite (the embedded default) allows one writer; deferred transactions that upgrade to writing
    can fail with "database is locked" instead of waiting, so writers in this process queue on a
    lock. PostgreSQL needs no such lock: row locks and constraints do the work.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._writer = asyncio.Lock() if self.is_sqlite else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        if self._writer is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._writer, self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    def insert(self, table: Any) -> Any:
        """A dialect INSERT that supports ``on_conflict_do_nothing`` on both databases."""
        return upsert_insert(self.engine.dialect.name)(table)


def rolled_back_by(exc: BaseException, sqlstates: frozenset[str]) -> bool:
    """Whether PostgreSQL ended ``exc``'s transaction with one of these SQLSTATEs (as asyncpg
    or a psycopg-style driver reports it, through SQLAlchemy or raised by the driver itself to
    code that uses it directly, as the batch statement import does): everything it did is
    undone."""
    cause: object = exc.orig if isinstance(exc, DBAPIError) else exc
    codes = {getattr(cause, "sqlstate", None), getattr(cause, "pgcode", None),
             getattr(getattr(cause, "__cause__", None), "sqlstate", None)}
    return bool(codes & sqlstates)


def upsert_insert(dialect_name: str) -> Callable[..., Any]:
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert
