"""Gateway webhooks in (Midtrans HTTP notifications, Xendit callbacks).

The request path verifies and stores the raw delivery with its outbox event, and answers; the
worker applies it (``services.provider_webhooks``). Verified → 200 (a duplicate too: the provider
must stop retrying); unverified → 401, stored, never trusted; not a JSON object → 400, stored.

Each verified first delivery is timed against the event time the provider stamped on it
(``lunas_webhook_receive_lag_seconds``): how late Lunas hears that a customer paid.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency

from orchestrator.api.errors import BadRequest
from orchestrator.api.input_guard import refuse_unstorable_url
from orchestrator.api.openapi import Answer, contract, problem
from orchestrator.bootstrap import Container
from orchestrator.rails import midtrans, xendit
from orchestrator.services.provider_webhooks import MIDTRANS, XENDIT, Receipt

NOTIFICATION = contract(None, body=True, answers={
    200: Answer(description="Stored (a duplicate too): the provider may stop retrying"),
    400: problem("malformed_notification: not a JSON object (stored, never applied)."),
    401: problem("bad_signature: the signature or callback token is missing or wrong "
                 "(stored, never trusted).")})

class WebhooksController(Controller):
    path = "/v1/webhooks"
    tags = ("webhooks",)

    @post("/midtrans", status_code=200, summary="Midtrans HTTP notification",
          responses=NOTIFICATION.responses, operation_class=NOTIFICATION.operation,
          before_request=refuse_unstorable_url)
    async def midtrans(
        self, request: Request[Any, Any, Any], container: NamedDependency[Container]
    ) -> dict[str, Any]:
        received, raw = container.clock.now(), await request.body()
        receipt = await container.provider_webhooks.receive(MIDTRANS, raw, request.headers)
        _observe_lag(container, MIDTRANS, raw, receipt, received)
        return _answer(receipt, "signature_key does not match the notification, or a "
                                "payment is reported without status_code 200, or a close "
                                "under the pending status_code 201")

    @post("/xendit", status_code=200, summary="Xendit callback",
          responses=NOTIFICATION.responses, operation_class=NOTIFICATION.operation,
          before_request=refuse_unstorable_url)
    async def xendit(
        self, request: Request[Any, Any, Any], container: NamedDependency[Container]
    ) -> dict[str, Any]:
        received, raw = container.clock.now(), await request.body()
        receipt = await container.provider_webhooks.receive(XENDIT, raw, request.headers)
        _observe_lag(container, XENDIT, raw, receipt, received)
        return _answer(receipt, "x-callback-token is missing or wrong")


def _observe_lag(container: Container, provider: str, raw: bytes, receipt: Receipt,
                 received: datetime) -> None:
    """Only a verified first delivery: a forger's stamp proves nothing, and a repeat measures
    the provider's retry schedule, not how late the event reached us. A provider clock ahead of
    ours would give a negative lag; it counts as 0."""
    if not receipt.verified or receipt.duplicate:
        return
    body = json.loads(raw)  # verified implies a JSON object
    at = (midtrans.notification_time(body) if provider == MIDTRANS
          else xendit.callback_time(body))
    if at is not None:
        container.metrics.webhook_receive_lag.labels(provider).observe(
            max(0.0, (received - at).total_seconds()))


def _answer(receipt: Receipt, unverified: str) -> dict[str, Any]:
    if receipt.malformed:
        raise BadRequest(f"malformed body: {receipt.problem} (stored as {receipt.delivery_id})",
                         code="malformed_notification")
    if not receipt.verified:
        raise BadRequest(f"{unverified} (stored as {receipt.delivery_id})", status=401,
                         code="bad_signature")
    return {"received": True, "delivery_id": receipt.delivery_id,
            "duplicate": receipt.duplicate}
