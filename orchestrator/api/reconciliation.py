"""Reconciliation for people: the unmatched list, manual matches and unreadable feed items
(audited)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from orchestrator.api.errors import BadRequest
from orchestrator.api.openapi import Answer, contract, problem
from orchestrator.api.paging import page, page_limit
from orchestrator.api.schemas import HandledIn, ManualMatchIn
from orchestrator.bootstrap import Container
from orchestrator.services.unreadable_feed_items import STATES

_PAGE = Answer(description="`data`: a page of rows; `next_after`: ask `after` it for the next")
_AFTER = problem("No row to continue `after` (not_found).")
UNMATCHED = contract("ops", {200: _PAGE, 404: _AFTER})
MATCH = contract("ops", body=True, answers={
    201: Answer(description="The settlement the match made: `verdict`, `order_status`, and "
                            "`review_case_id` (the case the settlement opened, e.g. a "
                            "second_payment to refund, or null); `possible_reversal_case_ids`: "
                            "the possible_reversal cases the match opened, a debit stored "
                            "before it that may have taken the money back (empty if none). "
                            "While an import holds the account, the credit is judged again "
                            "once it ends, and a case that opens then is in the review "
                            "queue, not here."),
    404: problem("No such mutation, or no such order with a payment attempt (not_found)."),
    409: problem("already_matched: the mutation is matched already, or is a debit; "
                 "transition_refused: the order cannot take the payment; likely_duplicate: "
                 "another source's copy of the same credit paid the order (the mutation is "
                 "kept as a likely duplicate with a case; match it again for a second "
                 "payment)."),
    422: problem("not_the_merchants_account: the credit is on an account the order's "
                 "merchant does not own.")})
UNREADABLE = contract("ops", {200: _PAGE, 404: _AFTER})
HANDLED = contract("ops", body=True, answers={
    200: Answer(description="The item, closed"),
    404: problem("No such item (not_found)."),
    409: problem("unreadable_item_closed: the item was closed already."),
    422: problem("invalid_request: `note` is empty or too long.")})

class ReconciliationController(Controller):
    path = "/v1/reconciliation"
    tags = ("reconciliation",)

    @get("/unmatched", summary="Credit mutations no order claimed, and ambiguous ones",
         responses=UNMATCHED.responses, operation_class=UNMATCHED.operation)
    async def unmatched(
        self, request: Request[Any, Any, Any], container: NamedDependency[Container],
        account_number: FromQuery[str | None] = None, limit: FromQuery[str] = "100",
        after: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        await container.auth.ops(request, "reconciliation")
        size = page_limit(limit)
        return page(await container.reconciliation.unmatched(
            limit=size, account_number=account_number, after=after or None), size)

    @post("/matches", status_code=201, summary="Match a mutation to an order by hand",
          responses=MATCH.responses, operation_class=MATCH.operation)
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

    @get("/unreadable", summary="Items the mutation feed listed that Lunas could not read",
         responses=UNREADABLE.responses, operation_class=UNREADABLE.operation)
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
          summary="Close an unreadable feed item once its money is dealt with (audited)",
          responses=HANDLED.responses, operation_class=HANDLED.operation)
    async def handled(
        self, request: Request[Any, Any, Any], item_id: FromPath[str], data: JSONBody[HandledIn],
        container: NamedDependency[Container],
    ) -> dict[str, Any]:
        principal = await container.auth.ops(request, "reconciliation")
        return await container.unreadable_feed_items.handled(
            item_id, actor=f"ops:{principal.name}", note=data.note, now=container.clock.now())
