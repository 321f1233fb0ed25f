"""Integration fixtures: the real app on a real socket over the session's PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from orchestrator.bootstrap import Container, build
from orchestrator.settings import DatabaseSettings, RedisSettings, Settings
from orchestrator.tls import default_trust
from tests.support import serve


def test_settings(pg_url: str, redis_prefix: str) -> Settings:
    from tests.conftest import REDIS_URL

    return Settings(
        environment="test",
        database=DatabaseSettings(url=pg_url, pool_size=20),
        redis=RedisSettings(url=REDIS_URL, key_prefix=redis_prefix),
    )


@pytest.fixture(scope="session")
async def container(pg_url: str, redis_prefix: str) -> AsyncIterator[Container]:
    c = build(test_settings(pg_url, redis_prefix))
    yield c
    await c.close()


@pytest.fixture(scope="session")
async def base_url(container: Container) -> AsyncIterator[str]:
    async with serve(container) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=default_trust(), base_url=base_url, timeout=30) as c:
        yield c
