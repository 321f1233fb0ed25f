"""Ops API for dead-lettered outbox events: list them, send them again, or let one go. Every
change needs an ops token with the ``ops`` scope and a reason, and lands in the audit log."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from orchestrator.api.paging import page, page_limit
from orchestrator.api.schemas import DiscardIn, RedeliverIn
from orchestrator.bootstrap import Container
from orchestrator.services import dead_letters


class DeadLettersController(Controller):
    path = "/v1/ops/outbox/dead"
    tags = ("ops",)

    @get("/", summary="Dead-lettered outbox events, oldest first")
    async def list_dead(self, request: Request[Any, Any, Any],
                        container: NamedDependency[Container],
                        merchant_id: FromQuery[str | None] = None,
                        limit: FromQuery[str] = "100",
                        after: FromQuery[str | None] = None) -> dict[str, Any]:
        await container.auth.ops(request, "ops")
        size = page_limit(limit)
        return page(await dead_letters.list_dead(container.db, limit=size,
                                                 merchant_id=merchant_id or None,
                                                 after=after or None), size, key="event_id")

    @post("/redeliver", status_code=200,
          summary="Send dead events again (named, or all of one merchant's)")
    async def redeliver(self, request: Request[Any, Any, Any], data: JSONBody[RedeliverIn],
                        container: NamedDependency[Container]) -> dict[str, Any]:
        principal = await container.auth.ops(request, "ops")
        sent = await dead_letters.redeliver(
            container.db, event_ids=data.event_ids, merchant_id=data.merchant_id,
            actor=f"ops:{principal.name}", reason=data.reason,
            now=container.clock.now())
        return {"redelivered": len(sent), "event_ids": sent}

    @post("/{event_id:str}/discard", status_code=200,
          summary="Let one dead event go for good (kept as discarded)")
    async def discard(self, request: Request[Any, Any, Any], event_id: FromPath[str],
                      data: JSONBody[DiscardIn],
                      container: NamedDependency[Container]) -> dict[str, Any]:
        principal = await container.auth.ops(request, "ops")
        return await dead_letters.discard(container.db, event_id=event_id,
                                          actor=f"ops:{principal.name}",
                                          reason=data.reason,
                                          now=container.clock.now())
