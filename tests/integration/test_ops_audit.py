"""An ops action and its audit row land together or not at all (services/audit.py): a change the
audit log cannot record is not made.

A database of its own, turned read-only under the running app (what a failover to a replica, or
a disk full, does to writes while reads still answer), real PostgreSQL and Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import httpx
import pytest

from orchestrator.bootstrap import Container, build
from orchestrator.rails.breaker import BreakerState
from orchestrator.settings import DatabaseSettings
from orchestrator.store.engine import migrate
from orchestrator.tls import default_trust
from tests.conftest import PG_ADMIN_DSN, create_database, drop_database
from tests.integration.conftest import test_settings as settings_for
from tests.support import new_ops_token, serve


@pytest.fixture
async def own(redis_prefix: str) -> AsyncIterator[Container]:
    url = await create_database("lunas_ops_audit")
    settings = settings_for(url, redis_prefix)
    c = build(replace(settings, database=DatabaseSettings(url=url, pool_size=5)))
    try:
        await migrate(c.db.engine)
        yield c
    finally:
        await c.close()
        await drop_database(url)


async def _writes_refused(c: Container) -> None:
    """From now on every new session of the app's database is read-only."""
    name = c.settings.database.url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    finally:
        await admin.close()
    await c.db.engine.dispose()  # the pool's sessions predate the setting


async def test_a_breaker_override_the_audit_log_cannot_record_is_not_applied(
    own: Container,
) -> None:
    route = "va:xendit:bca"
    ops = {"Authorization": f"Bearer {await new_ops_token(own)}"}
    async with serve(own) as url, httpx.AsyncClient(verify=default_trust(),
                                                    base_url=url, timeout=30) as client:
        await _writes_refused(own)
        r = await client.post(f"/v1/ops/routes/{route}/breaker", headers=ops, json={
            "action": "force_closed", "reason": "provider says it is fine"})
        assert r.status_code >= 500, r.text
        # Nobody can say who forced it or why: it must not be forced, here or cluster-wide.
        assert own.breakers.get(route).state is BreakerState.CLOSED
