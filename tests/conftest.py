"""Shared fixtures: a fresh PostgreSQL database and a private Redis key prefix per test session.

Integration tests run on real PostgreSQL and Redis (127.0.0.1, started by ``make test``). Each
session creates its own database, migrates it with the real migrations, and drops it at the end,
so a run never depends on what an earlier run left behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.settings import DatabaseSettings
from orchestrator.store.engine import create_engine, migrate

PG_ADMIN_DSN = os.environ.get("LUNAS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LUNAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _sqlalchemy_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def create_database(prefix: str = "lunas_test", *, template: str | None = None) -> str:
    """Create an empty PostgreSQL database, or a copy of the database named ``template`` (which
    nobody may be connected to); returns its SQLAlchemy URL."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"'
                           + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await conn.close()
    return _sqlalchemy_url(PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name)


async def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    url = await create_database()
    engine = create_engine(DatabaseSettings(url=url))
    await migrate(engine)
    await engine.dispose()
    yield url
    await drop_database(url)


@pytest.fixture(scope="session")
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(url=pg_url, pool_size=10))
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """This run's key prefix; every key under it is deleted when the run ends, whichever tests
    ran (a run of one file wrote feed watermarks that outlived it when only the
    ``redis_client`` fixture cleaned up, and only if a test had asked for it)."""
    import redis

    prefix = f"lunas-test:{os.getpid()}:{secrets.token_hex(4)}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # Redis gone at the end of a run: nothing of ours can be left in it to delete
    finally:
        client.close()


@pytest.fixture(scope="session")
async def redis_client(redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
