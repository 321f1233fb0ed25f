"""A merchant's routing, as an operator changes it: the next order follows it, every change is in
the audit log with what it replaced, and a name Lunas does not know changes nothing.

The real service and both provider simulators on real sockets, on the session's PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa

from chaos.sim.runner import Simulators, start_simulators
from orchestrator.bootstrap import Container, build
from orchestrator.domain.errors import InvalidRequest, NotFound
from orchestrator.services.merchant_routing import routing_of, set_routing
from orchestrator.settings import ProviderSettings, RedisSettings
from orchestrator.store.tables import audit_log, merchants
from orchestrator.tls import default_trust
from tests.support import ShopFixture, new_merchant, order_body, serve


@dataclass
class Shop:
    container: Container
    sims: Simulators
    client: httpx.AsyncClient
    shop: ShopFixture

    async def capture(self, rail: str = "va", channel: str | None = "bca") -> httpx.Response:
        body = order_body(f"R-{uuid.uuid4().hex[:12]}", 175_000, rail=rail)
        if channel is not None:
            body["channel"] = channel
        return await self.client.post("/v1/orders", json=body, headers={
            **self.shop.headers, "Idempotency-Key": str(uuid.uuid4())})

    async def set(self, **change: object) -> None:
        await set_routing(self.container.db, merchant_id=self.shop.merchant_id,
                          actor="cli:sari", reason="test", now=datetime.now(UTC),
                          **change)  # type: ignore[arg-type]

    async def down(self, *sims: str) -> None:
        for name in sims:
            sim = self.sims.xendit if name == "xendit" else self.sims.midtrans
            async with httpx.AsyncClient(verify=default_trust()) as control:
                (await control.post(f"{sim.control_url}/faults", json={"kind": "down"})
                 ).raise_for_status()


@pytest.fixture
async def shop(container: Container) -> AsyncIterator[Shop]:
    sims = await start_simulators()
    base = container.settings
    c = build(replace(
        base, providers=ProviderSettings(midtrans_url=sims.midtrans.data_url,
                                         xendit_url=sims.xendit.data_url),
        redis=RedisSettings(url=base.redis.url,
                            key_prefix=f"{base.redis.key_prefix}{uuid.uuid4().hex[:8]}:")))
    await c.start()
    try:
        fixture = await new_merchant(c)
        async with serve(c) as url, httpx.AsyncClient(verify=default_trust(),
                                                      base_url=url, timeout=30) as client:
            yield Shop(c, sims, client, fixture)
    finally:
        await c.close()
        await sims.stop()


def served(reply: httpx.Response) -> str | None:
    assert reply.status_code in (201, 202), reply.text
    route: str | None = reply.json()["routing"]["served_by"]
    return route


async def test_the_next_order_is_served_by_the_provider_the_merchant_now_prefers(
    shop: Shop,
) -> None:
    assert served(await shop.capture()) == "va:xendit:bca"  # the default order
    await shop.set(priorities={"va": ["midtrans", "xendit"]})
    assert served(await shop.capture()) == "va:midtrans:bca"
    # Other rails keep the defaults.
    assert served(await shop.capture("qris", None)) == "qris:midtrans:qris"


async def test_fallback_follows_the_merchants_chain_and_stops_when_disallowed(
    shop: Shop,
) -> None:
    await shop.down("xendit", "midtrans")
    await shop.set(fallback={"va": ["manual_transfer"]})
    reply = await shop.capture()
    assert served(reply) == "manual_transfer:bank:bank"
    assert [t["route"] for t in reply.json()["routing"]["tried"]] == [
        "va:xendit:bca", "va:midtrans:bca", "manual_transfer:bank:bank"]  # no QRIS
    await shop.set(allow_fallback=False)
    waiting = await shop.capture()
    assert waiting.status_code == 202 and served(waiting) is None
    assert waiting.json()["status"] == "captured"


async def test_each_change_is_audited_with_what_it_replaced_and_reset_restores_defaults(
    shop: Shop,
) -> None:
    await shop.set(priorities={"va": ["midtrans"]}, allow_fallback=False)
    await shop.set(fallback={"qris": []})
    now = await routing_of(shop.container.db, shop.shop.merchant_id)
    assert now.overrides == {"priorities": {"va": ["midtrans"]}, "fallback": {"qris": []}}
    assert now.render()["priorities"]["ewallet"] == ["midtrans", "xendit"]
    await shop.set(reset=True, allow_fallback=True)
    async with shop.container.db.read() as conn:
        row = (await conn.execute(sa.select(merchants.c.routing, merchants.c.allow_fallback)
                                  .where(merchants.c.id == shop.shop.merchant_id))).one()
        trail = (await conn.execute(sa.select(audit_log).where(
            audit_log.c.subject_id == shop.shop.merchant_id,
            audit_log.c.action == "merchant.routing_set").order_by(audit_log.c.id))).all()
    assert (row.routing, row.allow_fallback) == (None, True)
    assert [(t.actor, t.reason) for t in trail] == [("cli:sari", "test")] * 3
    assert [t.details for t in trail] == [
        {"from": {"routing": None, "allow_fallback": True},
         "to": {"routing": {"priorities": {"va": ["midtrans"]}}, "allow_fallback": False}},
        {"from": {"routing": {"priorities": {"va": ["midtrans"]}}, "allow_fallback": False},
         "to": {"routing": {"priorities": {"va": ["midtrans"]}, "fallback": {"qris": []}},
                "allow_fallback": False}},
        {"from": {"routing": {"priorities": {"va": ["midtrans"]}, "fallback": {"qris": []}},
                  "allow_fallback": False},
         "to": {"routing": None, "allow_fallback": True}},
    ]
    assert served(await shop.capture()) == "va:xendit:bca"


async def test_a_name_lunas_does_not_know_changes_nothing_and_writes_no_audit(
    shop: Shop,
) -> None:
    await shop.set(priorities={"va": ["midtrans"]})
    for change in ({"priorities": {"va": ["doku"]}, "allow_fallback": False},
                   {"fallback": {"qris": ["ewallet"]}}, {}):
        with pytest.raises(InvalidRequest):
            await shop.set(**change)
    with pytest.raises(NotFound):
        await set_routing(shop.container.db, merchant_id="mer_nobody", actor="cli:sari",
                          reason=None, now=datetime.now(UTC), allow_fallback=False)
    now = await routing_of(shop.container.db, shop.shop.merchant_id)
    assert (now.overrides, now.allow_fallback) == ({"priorities": {"va": ["midtrans"]}}, True)
    async with shop.container.db.read() as conn:
        audited = (await conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.subject_id == shop.shop.merchant_id))).scalar_one()
    assert audited == 1
