"""Review cases for people (finance, CS): the open list and audited resolutions."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from orchestrator.api.errors import BadRequest
from orchestrator.api.openapi import Answer, contract, problem
from orchestrator.api.paging import page, page_limit
from orchestrator.api.schemas import ResolveCaseIn
from orchestrator.bootstrap import Container
from orchestrator.services.reviews import STATES, list_cases, resolve_case

CASES = contract("ops", {200: Answer(description="`data`: a page of cases, each with its "
                                                "`allowed_actions` (empty once resolved); "
                                                "`next_after`"),
                        404: problem("No case to continue `after` (not_found).")})
RESOLVE = contract("ops", body=True, answers={
    200: Answer(description="The case, resolved"),
    404: problem("No such case (not_found)."),
    409: problem("case_already_resolved, or the order's state does not allow the action "
                 "(transition_refused)."),
    422: problem("invalid_request: an unknown action, an empty or too long note; "
                 "action_not_allowed: an action outside the case's `allowed_actions` (honour "
                 "on money that can only go back, such as a second_payment, a payment on a "
                 "cancelled or refunded order or a refund made at the provider; expire on a "
                 "case that does not ask whether the order was paid), the detail lists the "
                 "allowed ones.")})

class ReviewsController(Controller):
    path = "/v1/reviews"
    tags = ("reconciliation",)

    @get("/", summary="Review cases (open by default): money a person must decide about",
         responses=CASES.responses, operation_class=CASES.operation)
    async def list_reviews(self, request: Request[Any, Any, Any],
                           container: NamedDependency[Container],
                           status: FromQuery[str] = "open",
                           limit: FromQuery[str] = "100",
                           order_id: FromQuery[str | None] = None,
                           after: FromQuery[str | None] = None) -> dict[str, Any]:
        await container.auth.ops(request, "reconciliation")
        if status not in (*STATES, ""):
            raise BadRequest(f"status is {', '.join(STATES)}, or empty for every case",
                             code="bad_status")
        # ``status`` (open | resolved | empty for all): ``state`` is reserved by litestar.
        size = page_limit(limit)
        return page(await list_cases(container.db, state=status or None, limit=size,
                                     order_id=order_id or None, after=after or None), size)

    @post("/{case_id:str}/resolve", status_code=200,
          summary="Resolve a case with one of its allowed_actions: honour (the money stays; "
                  "the order it decides is paid by this case's payment), refund (it goes "
                  "back; the order is refunded unless another payment's case waits beside "
                  "it), or expire (no payment found, for a case asking whether the order "
                  "was paid)",
          responses=RESOLVE.responses, operation_class=RESOLVE.operation)
    async def resolve(self, request: Request[Any, Any, Any], case_id: FromPath[str],
                      data: JSONBody[ResolveCaseIn],
                      container: NamedDependency[Container]) -> dict[str, Any]:
        principal = await container.auth.ops(request, "reconciliation")
        return await resolve_case(container.db, case_id=case_id, action=data.action,
                                  actor=f"ops:{principal.name}", note=data.note,
                                  now=container.clock.now(),
                                  quarantine=container.settings.unique_codes.quarantine)
