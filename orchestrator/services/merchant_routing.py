"""A merchant's routing: which provider serves each rail first, which rails stand in for a rail
that no provider can serve, and whether the merchant allows that fallback at all.

Stored on ``merchants`` (``routing``: only the merchant's overrides of ``rails.plan``'s
defaults; ``allow_fallback``) and read on every issuance (``IssuanceService.policy_for``), so a
change reaches the next order. Every change is checked against the adapters Lunas has
(``plan.routing_problem``) and audited, in the same transaction, with what it replaced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator.domain.errors import InvalidRequest, NotFound
from orchestrator.rails import midtrans, xendit
from orchestrator.rails.base import Rail
from orchestrator.rails.plan import RoutingPolicy, routing_problem
from orchestrator.services.audit import record_audit
from orchestrator.store.database import Database
from orchestrator.store.tables import merchants

SUPPORTED_PROVIDERS: Mapping[str, Mapping[Rail, tuple[str, ...]]] = {
    "midtrans": midtrans.CHANNELS, "xendit": xendit.CHANNELS}
"""Every provider an adapter exists for, configured in this deployment or not: a merchant's
preference may be set before the deploy that configures its provider (as a route may be paused)."""


@dataclass(frozen=True, kw_only=True)
class MerchantRouting:
    merchant_id: str
    overrides: dict[str, Any]
    """What the merchant set; every rail not named here follows the defaults."""
    allow_fallback: bool

    def render(self) -> dict[str, Any]:
        policy = RoutingPolicy.for_merchant(self.overrides, allow_fallback=self.allow_fallback)
        return {"merchant_id": self.merchant_id, "allow_fallback": self.allow_fallback,
                "overrides": self.overrides,
                "priorities": {k: list(v) for k, v in policy.priorities.items()},
                "fallback": {k: list(v) for k, v in policy.fallback.items()}}


async def routing_of(db: Database, merchant_id: str) -> MerchantRouting:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(merchants.c.routing, merchants.c.allow_fallback)
                                  .where(merchants.c.id == merchant_id))).first()
    if row is None:
        raise NotFound(f"no merchant {merchant_id}")
    return MerchantRouting(merchant_id=merchant_id, overrides=dict(row.routing or {}),
                           allow_fallback=row.allow_fallback)


async def set_routing(
    db: Database, *, merchant_id: str, actor: str, reason: str | None, now: datetime,
    priorities: Mapping[str, Sequence[str]] | None = None,
    fallback: Mapping[str, Sequence[str]] | None = None,
    allow_fallback: bool | None = None, reset: bool = False,
) -> MerchantRouting:
    """Change what is given: each rail named in ``priorities`` or ``fallback`` replaces that
    rail's override, the others are kept; ``reset`` drops every override first (back to the
    defaults). Raises ``InvalidRequest`` naming the first name Lunas does not know."""
    if not (priorities or fallback or reset) and allow_fallback is None:
        raise InvalidRequest("nothing to change: give priorities, fallback, a reset or whether "
                             "fallback is allowed")
    m = merchants.c
    async with db.transaction() as conn:
        before = (await conn.execute(sa.select(m.routing, m.allow_fallback)
                                     .where(m.id == merchant_id).with_for_update())).first()
        if before is None:
            raise NotFound(f"no merchant {merchant_id}")
        kept: dict[str, Any] = {} if reset else dict(before.routing or {})
        overrides = {part: {**dict(kept.get(part) or {}),
                            **{rail: list(v) for rail, v in (given or {}).items()}}
                     for part, given in (("priorities", priorities), ("fallback", fallback))}
        overrides = {part: value for part, value in overrides.items() if value}
        if problem := routing_problem(overrides, SUPPORTED_PROVIDERS):
            raise InvalidRequest(problem, field="routing")
        allowed = before.allow_fallback if allow_fallback is None else allow_fallback
        await conn.execute(merchants.update().where(m.id == merchant_id).values(
            routing=overrides or sa.null(), allow_fallback=allowed))
        await record_audit(conn, actor=actor, action="merchant.routing_set",
                           subject_type="merchant", subject_id=merchant_id, reason=reason,
                           details={"from": {"routing": before.routing,
                                             "allow_fallback": before.allow_fallback},
                                    "to": {"routing": overrides or None,
                                           "allow_fallback": allowed}},
                           now=now)
    return MerchantRouting(merchant_id=merchant_id, overrides=overrides,
                           allow_fallback=allowed)
