"""The payment record of one order, for finance and SREs (``services.order_record``): what the
runbooks send a person to when an alert or a case names an order."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from orchestrator.api.openapi import Answer, contract, problem
from orchestrator.bootstrap import Container
from orchestrator.services.order_record import order_record

RECORD = contract("ops", {
    200: Answer(description="`order` (as its merchant sees it, with `merchant_id` and "
                            "`review_reason`); `attempts`: every instrument issued, with what "
                            "its provider last said and when it is read next "
                            "(`verification`); `evidence`: every observation of a payment; "
                            "`mutations`: bank lines matched or tied to it; `review_cases`; "
                            "`audit`: what people did about its cases and bank lines. Times "
                            "UTC, money integer rupiah."),
    404: problem("No such order (not_found)."),
})


class OrderRecordController(Controller):
    path = "/v1/ops/orders"
    tags = ("ops",)

    @get("/{order_id:str}", summary="An order's payment record: instruments, evidence, bank "
                                    "lines, cases and their audit",
         responses=RECORD.responses, operation_class=RECORD.operation)
    async def record(self, request: Request[Any, Any, Any], order_id: FromPath[str],
                     container: NamedDependency[Container]) -> dict[str, Any]:
        await container.auth.ops(request, "reconciliation", "ops")
        return await order_record(container.db, order_id=order_id)
