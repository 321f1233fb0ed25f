"""Gateway webhooks in (Midtrans HTTP notifications, Xendit callbacks).

The request path verifies and stores the raw delivery with its outbox event, and answers; the
worker applies it (``services.provider_webhooks``). Verified → 200 (a duplicate too: the provider
must stop retrying); unverified → 401, stored, never trusted; not a JSON object → 400, stored.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency

from orchestrator.api.errors import BadRequest
from orchestrator.bootstrap import Container
from orchestrator.services.provider_webhooks import MIDTRANS, XENDIT, Receipt


class WebhooksController(Controller):
    path = "/v1/webhooks"
    tags = ("webhooks",)

    @post("/midtrans", status_code=200, summary="Midtrans HTTP notification")
    async def midtrans(
        self, request: Request[Any, Any, Any], container: NamedDependency[Container]
    ) -> dict[str, Any]:
        receipt = await container.provider_webhooks.receive(
            MIDTRANS, await request.body(), request.headers)
        return _answer(receipt, "signature_key does not match the notification")

    @post("/xendit", status_code=200, summary="Xendit callback")
    async def xendit(
        self, request: Request[Any, Any, Any], container: NamedDependency[Container]
    ) -> dict[str, Any]:
        receipt = await container.provider_webhooks.receive(
            XENDIT, await request.body(), request.headers)
        return _answer(receipt, "x-callback-token is missing or wrong")


def _answer(receipt: Receipt, unverified: str) -> dict[str, Any]:
    if receipt.malformed:
        raise BadRequest(f"the body is not a JSON object (stored as {receipt.delivery_id})",
                         code="malformed_notification")
    if not receipt.verified:
        raise BadRequest(f"{unverified} (stored as {receipt.delivery_id})", status=401,
                         code="bad_signature")
    return {"received": True, "delivery_id": receipt.delivery_id,
            "duplicate": receipt.duplicate}
