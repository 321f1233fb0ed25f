"""Which payment methods work right now, for a checkout page to grey out what is down.

A rail/channel is available when at least one of its own routes (fallback aside) is neither
paused, in maintenance, nor behind an open breaker. Manual transfer needs no gateway: it is
available whenever the merchant has a payout account (ops cannot pause it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestrator.rails.base import Rail
from orchestrator.rails.plan import MANUAL_ROUTE, channels_offered, plan_routes
from orchestrator.rails.router import Router
from orchestrator.services.issuance import IssuanceService
from orchestrator.store.database import Database
from orchestrator.store.merchants import active_payout_accounts


async def rails_for(db: Database, issuance: IssuanceService, router: Router,
                    merchant_id: str) -> list[dict[str, Any]]:
    policy = replace(await issuance.policy_for(merchant_id), allow_fallback=False)
    catalog = router.catalog()
    out: list[dict[str, Any]] = []
    for rail in (Rail.VA, Rail.QRIS, Rail.EWALLET):
        for channel in channels_offered(rail, catalog):
            routes = plan_routes(rail, channel, policy, catalog)
            checked = [(r.key, await router.why_unusable(r)) for r in routes]
            usable = [k for k, why in checked if why is None]
            out.append({
                "rail": rail.value, "channel": channel, "available": bool(usable),
                "reason": None if usable else _summary([why for _, why in checked]),
                "routes": [{"route": k, "available": why is None, "reason": why}
                           for k, why in checked],
            })
    async with db.read() as conn:
        has_account = bool(await active_payout_accounts(conn, merchant_id))
    why = None if has_account else "no payout account configured"
    out.append({
        "rail": Rail.MANUAL_TRANSFER.value, "channel": "bank", "available": has_account,
        "reason": why,
        "routes": [{"route": MANUAL_ROUTE.key, "available": has_account, "reason": why}],
    })
    return out


def _summary(reasons: list[str | None]) -> str:
    texts = [r for r in reasons if r]
    if not texts:
        return "no provider offers this channel"
    if any("maintenance" in t for t in texts):
        return next(t for t in texts if "maintenance" in t)
    return texts[0]
