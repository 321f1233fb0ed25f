"""Reconciliation for people: the unmatched list, manual matches and unreadable feed items
(audited)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from orchestrator.api.errors import BadRequest
from orchestrator.api.paging import page, page_limit
from orchestrator.api.schemas import HandledIn, ManualMatchIn
from orchestrator.bootstrap import Container
from orchestrator.services.unreadable_feed_items import STATES


class ReconciliationController(Controller):
    path = "/v1/reconciliation"
    tags = ("reconciliation",)

    @get("/unmatched", summary="Credit mutations no order claimed, and ambiguous ones")
    async def unmatched(
        self, request: Request[Any, Any, Any], container: NamedDependency[Container],
        account_number: FromQuery[str | None] = None, limit: FromQuery[str] = "100",
        after: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        await container.auth.ops(request, "reconciliation")
        size = page_limit(limit)
        return page(await container.reconciliation.unmatched(
            limit=size, account_number=account_number, after=after or None), size)

    @post("/matches", status_code=201, summary="Match a mutation to an order by hand")
    async def match(
        self, request: Request[Any, Any, Any], data: JSONBody[ManualMatchIn],
        container: NamedDependency[Container],
    ) -> dict[str, Any]:
        principal = await container.auth.ops(request, "reconciliation")
        if not data.reason.strip():
            raise BadRequest("say why in 'reason'; it goes to the audit log",
                             code="reason_required")
        return await container.reconciliation.manual_match(
            mutation_id=data.mutation_id, order_id=data.order_id,
            actor=f"ops:{principal.name}", reason=data.reason.strip(),
        )

    @get("/unreadable", summary="Items the mutation feed listed that Lunas could not read")
    async def unreadable(
        self, request: Request[Any, Any, Any], container: NamedDependency[Container],
        status: FromQuery[str] = "open", limit: FromQuery[str] = "100",
        after: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        await container.auth.ops(request, "reconciliation")
        if status not in (*STATES, ""):
            raise BadRequest(f"status is one of {', '.join(STATES)}, or empty for every item",
                             code="bad_status")
        size = page_limit(limit)
        # ``status``, not ``state``: litestar reserves that name.
        return page(await container.unreadable_feed_items.listing(
            state=status or None, limit=size, after=after or None), size)

    @post("/unreadable/{item_id:str}/handled", status_code=200,
          summary="Close an unreadable feed item once its money is dealt with (audited)")
    async def handled(
        self, request: Request[Any, Any, Any], item_id: FromPath[str], data: JSONBody[HandledIn],
        container: NamedDependency[Container],
    ) -> dict[str, Any]:
        principal = await container.auth.ops(request, "reconciliation")
        return await container.unreadable_feed_items.handled(
            item_id, actor=f"ops:{principal.name}", note=data.note, now=container.clock.now())
