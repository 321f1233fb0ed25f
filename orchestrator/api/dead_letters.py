"""Ops API for dead-lettered outbox events: list them, send them again, or let one go. Every
change needs an ops token with the ``ops`` scope and a reason, and lands in the audit log."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from orchestrator.api.openapi import Answer, contract, problem
from orchestrator.api.paging import page, page_limit
from orchestrator.api.schemas import DiscardIn, RedeliverIn
from orchestrator.bootstrap import Container
from orchestrator.services import dead_letters

_NOT_DEAD = problem("not_dead_lettered: the event is not dead-lettered (pending again, or "
                    "discarded already).")
_REASON = problem("invalid_request: say why in `reason` (and, to redeliver, name events or a "
                  "merchant, not both).")
DEAD = contract("ops", {200: Answer(description="`data`: a page of dead events; `next_after`"),
                        404: problem("No event to continue `after` (not_found).")})
REDELIVER = contract("ops", body=True, answers={
    200: Answer(description="How many events are pending again, and which"),
    404: problem("No such merchant (not_found)."), 409: _NOT_DEAD, 422: _REASON})
DISCARD = contract("ops", body=True, answers={
    200: Answer(description="The event, discarded"),
    404: problem("No such event (not_found)."), 409: _NOT_DEAD, 422: _REASON})

class DeadLettersController(Controller):
    path = "/v1/ops/outbox/dead"
    tags = ("ops",)

    @get("/", summary="Dead-lettered outbox events, oldest first",
         responses=DEAD.responses, operation_class=DEAD.operation)
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
          summary="Send dead events again (named, or all of one merchant's)",
          responses=REDELIVER.responses, operation_class=REDELIVER.operation)
    async def redeliver(self, request: Request[Any, Any, Any], data: JSONBody[RedeliverIn],
                        container: NamedDependency[Container]) -> dict[str, Any]:
        principal = await container.auth.ops(request, "ops")
        sent = await dead_letters.redeliver(
            container.db, event_ids=data.event_ids, merchant_id=data.merchant_id,
            actor=f"ops:{principal.name}", reason=data.reason,
            now=container.clock.now())
        return {"redelivered": len(sent), "event_ids": sent}

    @post("/{event_id:str}/discard", status_code=200,
          summary="Let one dead event go for good (kept as discarded)",
          responses=DISCARD.responses, operation_class=DISCARD.operation)
    async def discard(self, request: Request[Any, Any, Any], event_id: FromPath[str],
                      data: JSONBody[DiscardIn],
                      container: NamedDependency[Container]) -> dict[str, Any]:
        principal = await container.auth.ops(request, "ops")
        return await dead_letters.discard(container.db, event_id=event_id,
                                          actor=f"ops:{principal.name}",
                                          reason=data.reason,
                                          now=container.clock.now())
