"""Throwaway PostgreSQL and Redis servers (chaos/infra.py) really stop, die and come back.

These never touch the shared servers on 5432/6379: each test starts its own on a free port and
``async with`` removes it (process and directory) whatever happens.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
import redis.exceptions
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from chaos.infra import InfraError, ThrowawayPostgres, ThrowawayRedis, free_port

pytestmark = pytest.mark.slow

# What a session cut under asyncpg's feet raises: which one depends on where in its protocol the
# cut lands (a killed postmaster can leave it mid-operation: InternalClientError).
SESSION_CUT = (asyncpg.PostgresError, asyncpg.InterfaceError,
               asyncpg.exceptions.InternalClientError, OSError)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _assert_gone(pid: int, directory: Path) -> None:
    assert not _process_exists(pid)
    assert not directory.exists()


async def _rows(dsn: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id, note FROM t ORDER BY id")
        return [(r["id"], r["note"]) for r in rows]
    finally:
        await conn.close()


async def test_postgres_data_survives_a_fast_restart() -> None:
    async with ThrowawayPostgres() as pg:
        assert pg.port != 5432
        assert pg.url == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/lunas"
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/lunas"
        assert await pg.is_up()
        conn = await asyncpg.connect(pg.dsn)
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL)")
        await conn.execute("INSERT INTO t VALUES (1, 'before restart')")
        first_pid = pg.pid

        await pg.restart(mode="fast")

        # The session open across the restart was cut, as a real restart cuts it...
        with pytest.raises(SESSION_CUT):
            await conn.fetchval("SELECT 1")
        conn.terminate()
        # ...and the data, the port and the database are all still there.
        assert await pg.is_up()
        assert pg.pid is not None and pg.pid != first_pid
        assert await _rows(pg.dsn) == [(1, "before restart")]
        engine = create_async_engine(pg.url)  # the URL the app's settings take
        try:
            async with engine.connect() as c:
                assert (await c.execute(sa.text("SELECT current_database()"))).scalar() == "lunas"
        finally:
            await engine.dispose()

        running_pid = pg.pid  # the postmaster started by the restart, alive until stop()
        assert running_pid is not None and _process_exists(running_pid)
        await pg.stop()
        assert not await pg.is_up()
        assert pg.pid is None
        directory = pg.directory
    assert directory is not None
    _assert_gone(running_pid, directory)


async def test_postgres_recovers_after_its_postmaster_is_killed() -> None:
    async with ThrowawayPostgres() as pg:
        conn = await asyncpg.connect(pg.dsn)
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL)")
        await conn.execute("INSERT INTO t VALUES (1, 'committed before the crash')")
        killed_pid = pg.pid
        assert killed_pid is not None

        await pg.kill()

        assert not _process_exists(killed_pid)
        assert not await pg.is_up()
        with pytest.raises(SESSION_CUT):
            await conn.fetchval("SELECT 1")
        conn.terminate()
        with pytest.raises(OSError):
            await asyncpg.connect(pg.dsn, timeout=2)

        await pg.start()

        assert await pg.is_up()
        assert "not properly shut down" in pg.log_tail(200)  # it went through crash recovery
        assert await _rows(pg.dsn) == [(1, "committed before the crash")]
        # An immediate stop is a crash too; it comes back the same way.
        await pg.restart(mode="immediate")
        assert await _rows(pg.dsn) == [(1, "committed before the crash")]
        pid, directory = pg.pid, pg.directory
    assert pid is not None and directory is not None
    _assert_gone(pid, directory)


async def test_postgres_that_cannot_start_says_why_and_leaves_nothing() -> None:
    pg = ThrowawayPostgres(settings={"shared_buffers": "'lots'"}, start_timeout=10)
    try:
        with pytest.raises(InfraError, match="shared_buffers") as raised:
            await pg.start()
        assert "log tail" in str(raised.value)
        assert pg.pid is None
        assert not await pg.is_up()
    finally:
        directory = pg.directory
        pg.close()
    assert directory is not None and not directory.exists()


async def test_redis_kill_loses_the_data_and_start_brings_the_service_back() -> None:
    async with ThrowawayRedis() as cache:
        assert cache.port != 6379
        assert cache.url == f"redis://127.0.0.1:{cache.port}/0"
        client = aioredis.Redis.from_url(cache.url)
        try:
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            killed_pid = cache.pid
            assert killed_pid is not None

            await cache.kill()

            assert not _process_exists(killed_pid)
            assert not await cache.is_up()
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.get("k")

            await cache.start()

            assert await cache.is_up()
            assert await client.get("k") is None  # memory only: the data died with the process
            await client.set("k", "again")
        finally:
            await client.aclose()
        await cache.restart()
        fresh = aioredis.Redis.from_url(cache.url)
        try:
            assert await fresh.get("k") is None  # a clean SIGTERM keeps nothing either
        finally:
            await fresh.aclose()
        pid, directory = cache.pid, cache.directory
    assert pid is not None and directory is not None
    _assert_gone(pid, directory)


def test_free_ports_lie_below_the_range_outgoing_connections_take_theirs_from() -> None:
    """A server restarted on its port (the game day's worker, PostgreSQL, Redis) must find it
    free: no outgoing connection can have been given a port below the ephemeral range."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(20_000 <= port < low for port in ports), sorted(ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
