"""Checkout API: capture an order, read it, find it by the merchant's id, cancel it."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from orchestrator.api.errors import BadRequest, status_for
from orchestrator.api.openapi import (
    IDEMPOTENCY_KEY,
    LOCATION,
    REPLAYED,
    RETRY_AFTER,
    Answer,
    contract,
    problem,
)
from orchestrator.api.replies import OrderList, OrderOut
from orchestrator.api.schemas import OrderIn, SwitchMethodIn
from orchestrator.bootstrap import Container
from orchestrator.domain.checkout import SUPPORTED_RAILS, Customer, OrderRequest
from orchestrator.domain.errors import DomainError, InvalidOrder
from orchestrator.rails.base import Rail
from orchestrator.services import orders as order_queries
from orchestrator.services.issuance import switch_method


async def _strict_body(request: Request[Any, Any, Any]) -> OrderIn:
    """Decode the body again in msgspec's strict mode.

    litestar converts bodies leniently (`"150000"` becomes `150000`); a checkout that sends
    money as a string has a bug we should tell it about, not hide. `data` still declares the
    shape, so the OpenAPI schema documents it.
    """
    try:
        return msgspec.json.decode(await request.body(), type=OrderIn, strict=True)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc), code="malformed_request") from exc


def _order_request(data: OrderIn) -> OrderRequest:
    # Not part of the request Lunas keeps (nor of its idempotency fingerprint): with or without
    # it, the same order.
    if data.currency is not None and data.currency != "IDR":
        raise InvalidOrder("Lunas takes rupiah only: currency is IDR (or leave it out)",
                           field="currency")
    return OrderRequest(
        merchant_order_id=data.merchant_order_id, amount=data.amount,
        customer=Customer(name=data.customer.name, email=data.customer.email,
                          phone=data.customer.phone),
        rail=data.rail, channel=data.channel, expires_in=data.expires_in,
        metadata=data.metadata,
    )


def _failure_outcome(exc: Exception) -> str:
    """refused: the request is wrong or conflicts (4xx); unavailable: no capacity to serve it
    now (a 5xx the domain decided: no route, no unique code); error: Lunas itself failed
    (database unreachable, a bug). The status is the one the client is answered with."""
    if status_for(exc) < 500:
        return "refused"
    return "unavailable" if isinstance(exc, DomainError) else "error"


_NOT_FOUND = problem("No such order for this merchant (not_found); another merchant's order "
                     "is answered the same way.")
_NOT_NOW = problem("The order's state does not allow it (transition_refused): it is paid, "
                   "expired, cancelled, or payment evidence exists.")

CAPTURE = contract("merchant", body=True, request_headers=(IDEMPOTENCY_KEY,), answers={
    201: Answer(description="Captured, with payment instructions (`payment`) and, on a "
                            "gateway rail, which route served (`routing`).",
                headers=(LOCATION, REPLAYED), body=OrderOut),
    202: Answer(description="Captured and durable, but no route could issue instructions now "
                            "(state `captured`, `payment` null): Lunas issues them later and "
                            "tells the merchant (order.awaiting_payment). Do not send it again "
                            "as a new order. Also when the customer switched method while this "
                            "request's instructions were being issued: `payment` is then the "
                            "switch's.",
                headers=(LOCATION, REPLAYED), body=OrderOut),
    400: problem("As for every endpoint (malformed_json, malformed_request, unstorable_text, "
                 "repeated_name), or idempotency_key_required (none, or longer than 255 "
                 "characters), idempotency_key_repeated (the header sent more than once)."),
    409: problem("idempotency_key_reused: this Idempotency-Key came with another body; "
                 "idempotency_key_in_flight: the first request with this key is still being "
                 "answered (its instructions being issued): send it again after its Retry-After "
                 "(1 s) for its answer; duplicate_merchant_order_id: another order has this "
                 "merchant_order_id (`existing_order_id` names it)."),
    422: problem("invalid_order: a rule refused the order (amount, rail, channel, expiry, "
                 "currency; `field` names it); no_payout_account: manual transfer needs a "
                 "payout account and the merchant has none."),
    503: problem("Nothing was stored; the same request (same key) again is safe. "
                 "unique_codes_exhausted (every transfer amount near this one is held; "
                 "Retry-After 60), database_unavailable (Retry-After 5), retry (a concurrent "
                 "change undid it; Retry-After 1).", RETRY_AFTER),
})
READ = contract("merchant", {200: Answer(description="The order", body=OrderOut),
                             404: _NOT_FOUND})
FIND = contract("merchant", {
    200: Answer(description="`data`: the order with this merchant_order_id, or none",
                body=OrderList),
    400: problem("As for every endpoint, or merchant_order_id_required.")})
SWITCH = contract("merchant", body=True, answers={
    201: Answer(description="The new instructions; the previous ones are superseded",
                body=OrderOut),
    404: _NOT_FOUND,
    409: problem("transition_refused, as for every change of an order, and once its payment "
                 "deadline has passed; or switch_not_applied: "
                 "the order changed (paid, cancelled, expired, or another switch won) while "
                 "the new method was being issued, which was then withdrawn; read the order. "
                 "Or ewallet_charge_unconfirmed: an e-wallet charge made for the order may "
                 "still be approved by the customer, so no second one is made; another rail "
                 "may be chosen."),
    422: problem("invalid_order: the rail or channel is not offered (`field` names it)."),
    503: problem("no_route_available: no route can issue this method now; the current "
                 "instructions stay valid (`routing` says what was tried; Retry-After 30). "
                 "Or database_unavailable / retry, as for every endpoint.", RETRY_AFTER),
})
CANCEL = contract("merchant", body=True, answers={
    200: Answer(description="The cancelled order", body=OrderOut), 404: _NOT_FOUND,
    409: _NOT_NOW})


class OrdersController(Controller):
    path = "/v1/orders"
    tags = ("orders",)

    @post("/", status_code=201, summary="Capture an order and get payment instructions",
          responses=CAPTURE.responses, operation_class=CAPTURE.operation)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[OrderIn],
        container: NamedDependency[Container],
    ) -> Response[dict[str, Any]]:
        rail = "unknown"
        try:
            merchant = await container.auth.merchant(request)
            keys = request.headers.getall("idempotency-key", [])
            if len(keys) > 1:
                # Using either would make "done once" hang on which one a proxy passes first.
                raise BadRequest("send one Idempotency-Key header, not several",
                                 code="idempotency_key_repeated")
            key = keys[0].strip() if keys else ""
            if not key or len(key) > 255:
                raise BadRequest("send an Idempotency-Key header (1-255 characters) with every "
                                 "order", code="idempotency_key_required")
            del data  # decoded leniently by litestar; see _strict_body
            order = _order_request(await _strict_body(request))
            rail = order.rail or Rail.MANUAL_TRANSFER.value
            outcome = await container.capture.capture(
                merchant_id=merchant.id, idempotency_key=key, request=order)
        except Exception as exc:
            # Successes are counted by the capture service; every failure once, here, so that
            # one whose cause is Lunas (its database down before auth even answered) is seen.
            label = rail if rail in SUPPORTED_RAILS else "unknown"  # bounded, never as sent
            container.metrics.orders_captured.labels(_failure_outcome(exc), label).inc()
            raise
        if container.crash_after_commit is not None and not outcome.replayed:
            container.crash_after_commit.reply_ready()
        headers = {"Location": f"/v1/orders/{outcome.body['id']}"}
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(content=outcome.body, status_code=outcome.status_code, headers=headers)

    @get("/{order_id:str}", summary="Read one order", responses=READ.responses,
         operation_class=READ.operation)
    async def read(
        self, request: Request[Any, Any, Any], order_id: FromPath[str],
        container: NamedDependency[Container],
    ) -> dict[str, Any]:
        merchant = await container.auth.merchant(request)
        return await order_queries.get_order(container.db, merchant_id=merchant.id,
                                             order_id=order_id)

    @get("/", summary="Find an order by the merchant's own order id",
         responses=FIND.responses, operation_class=FIND.operation)
    async def find(
        self, request: Request[Any, Any, Any], container: NamedDependency[Container],
        merchant_order_id: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        merchant = await container.auth.merchant(request)
        if not merchant_order_id:
            raise BadRequest("pass ?merchant_order_id=... to find an order",
                             code="merchant_order_id_required")
        found = await order_queries.find_by_merchant_order_id(
            container.db, merchant_id=merchant.id, merchant_order_id=merchant_order_id
        )
        return {"data": found}

    @post("/{order_id:str}/payment", status_code=201,
          summary="Switch to another payment method (the old instructions are superseded)",
          responses=SWITCH.responses, operation_class=SWITCH.operation)
    async def switch(
        self, request: Request[Any, Any, Any], order_id: FromPath[str],
        data: JSONBody[SwitchMethodIn], container: NamedDependency[Container],
    ) -> Response[dict[str, Any]]:
        merchant = await container.auth.merchant(request)
        rail = data.rail
        if rail not in SUPPORTED_RAILS:
            raise InvalidOrder(f"rail '{rail}' is not offered; choose one of: "
                               f"{', '.join(SUPPORTED_RAILS)}", field="rail")
        channel = container.capture.channel_for(Rail(rail), data.channel)
        status, body = await switch_method(container.issuance, merchant_id=merchant.id,
                                           order_id=order_id, rail=Rail(rail), channel=channel)
        return Response(content=body, status_code=status)

    @post("/{order_id:str}/cancel", status_code=200, summary="Cancel an unpaid order",
          responses=CANCEL.responses, operation_class=CANCEL.operation)
    async def cancel(
        self, request: Request[Any, Any, Any], order_id: FromPath[str],
        container: NamedDependency[Container],
    ) -> dict[str, Any]:
        merchant = await container.auth.merchant(request)
        return await order_queries.cancel_order(
            container.db, merchant_id=merchant.id, order_id=order_id,
            now=container.clock.now(), quarantine=container.settings.unique_codes.quarantine,
        )
