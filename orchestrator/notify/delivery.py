"""Merchant webhooks: an outbox handler that POSTs each merchant-visible event, signed, to the
merchant's endpoint. Retries, backoff and dead letters are the relay's; this module makes one try.

Exception tree (what the relay sees)::

    Exception
     ├── WebhookDeliveryError    non-2xx answer, timeout, connection or URL error, a URL the
     │                           egress policy refuses (``EgressRefused``): retried
     └── PermanentFailure        the event names no merchant, or one that does not exist

Error messages never carry the URL (it may hold a merchant's token), the secret or the payload:
they end up in ``outbox.last_error`` and in logs.

The merchant's URL and secrets are read on every try, so a URL changed or a secret rotated
(``lunas merchants set-webhook`` / ``rotate-secret``, services/webhook_endpoints.py) is honoured
by the next try of every pending event. While a rotation's overlap lasts, each try is signed
under the new secret and the previous one (``t=…,v1=<new>,v1=<previous>``); once it is over,
under the new one only. Redirects are not followed: a signed POST goes exactly where the
merchant configured it.

Where a try may go is ``notify/egress.py``'s: the host is resolved once and the connection goes
to exactly the addresses resolved (``pinned_to``), so DNS rebinding cannot move it; a production
worker sends only over https and only to public addresses (``EgressPolicy``, unless
``LUNAS_WEBHOOK_ALLOW_HTTP`` / ``LUNAS_WEBHOOK_ALLOW_PRIVATE``). A refusal fails the try like any
other (recorded in ``outbox.last_error``, retried, at last dead-lettered): the name may come to
resolve elsewhere, or ops set a URL that is allowed, which brings the retries forward.

The webhook timeout bounds the whole try, from connecting to the answer's status line and
headers: httpx's own timeouts are per phase and per read, so an endpoint that answers a byte at a
time would otherwise hold the try (and a relay slot) until the relay's much longer handler
timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.domain.clock import Clock, SystemClock
from orchestrator.domain.events import MERCHANT_VISIBLE
from orchestrator.notify.egress import (
    OPEN,
    EgressPolicy,
    EgressRefused,
    pinned_to,
    resolve_endpoint,
)
from orchestrator.notify.signing import EVENT_ID_HEADER, sign
from orchestrator.outbox.relay import Handler, OutboxEvent, PermanentFailure
from orchestrator.store.tables import merchants

log = logging.getLogger(__name__)

USER_AGENT = "Lunas-Webhooks/0.1"


class WebhookDeliveryError(Exception):
    """One delivery try failed in a way a later try may not: the relay retries with backoff."""


@dataclass(frozen=True, kw_only=True)
class _Endpoint:
    url: str
    secret: str
    previous_secret: str | None
    """The secret a rotation replaced, while its overlap lasts at this try; else None."""


_ENDPOINT = sa.select(
    merchants.c.webhook_url, merchants.c.webhook_secret, merchants.c.previous_webhook_secret,
    merchants.c.previous_webhook_secret_expires_at,
).where(merchants.c.id == sa.bindparam("merchant_id"))
"""Built once: one lookup per merchant event."""


class MerchantWebhookHandler:
    """The outbox handler for merchant-visible events; see ``merchant_webhook_handlers``."""

    def __init__(
        self,
        engine: AsyncEngine,
        http: httpx.AsyncClient,
        timeout: timedelta,
        *,
        clock: Clock | None = None,
        egress: EgressPolicy = OPEN,
    ) -> None:
        """``egress``: where a try may go (production's ``Settings.webhook_egress``). The
        addresses are pinned only by a client from ``egress.webhook_client`` (the worker's)."""
        self._engine = engine
        self._egress = egress
        self._http = http
        self._timeout = httpx.Timeout(timeout.total_seconds())
        self._deadline_s = timeout.total_seconds()
        self._clock = clock or SystemClock()

    async def __call__(self, event: OutboxEvent) -> None:
        if event.merchant_id is None:
            raise PermanentFailure("merchant-visible event without a merchant_id")
        now = self._clock.now()
        endpoint = await self._endpoint(event.merchant_id, now)
        if endpoint is None:
            return  # the merchant has no webhook URL: nothing to deliver
        body = webhook_body(event)
        ts = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: event.event_id,
            **sign(endpoint.secret, body, ts, previous=endpoint.previous_secret),
        }
        status = await self._post(endpoint.url, body, headers)
        log.debug(
            "merchant webhook delivered",
            extra={"event_id": event.event_id, "event_type": event.event_type, "status": status},
        )

    async def _endpoint(self, merchant_id: str, now: datetime) -> _Endpoint | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_ENDPOINT, {"merchant_id": merchant_id})).one_or_none()
        if row is None:
            raise PermanentFailure(f"merchant {merchant_id} does not exist")
        if not row.webhook_url:
            return None
        until = row.previous_webhook_secret_expires_at
        overlapping = row.previous_webhook_secret and until is not None and now < until
        return _Endpoint(url=row.webhook_url, secret=row.webhook_secret,
                         previous_secret=row.previous_webhook_secret if overlapping else None)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            async with asyncio.timeout(self._deadline_s):
                target = httpx.URL(url)
                host = target.raw_host.decode("ascii")
                addresses = await resolve_endpoint(target, self._egress)
                # Streamed and never read: the status is the whole answer, and a merchant
                # endpoint cannot make the worker buffer a large response body.
                with pinned_to(host, addresses):
                    async with self._http.stream(
                        "POST", target, content=body, headers=headers, timeout=self._timeout
                    ) as response:
                        status = response.status_code
        except EgressRefused as exc:
            raise WebhookDeliveryError(str(exc)) from exc
        except TimeoutError as exc:  # this try's own deadline (the relay's passes through)
            raise WebhookDeliveryError(f"timed out after {self._deadline_s:g}s") from exc
        except httpx.TimeoutException as exc:
            raise WebhookDeliveryError(f"timed out ({type(exc).__name__})") from exc
        except httpx.InvalidURL as exc:
            raise WebhookDeliveryError("webhook URL is not valid") from exc
        except httpx.HTTPError as exc:
            raise WebhookDeliveryError(f"transport error ({type(exc).__name__})") from exc
        if not 200 <= status < 300:
            raise WebhookDeliveryError(f"merchant endpoint answered HTTP {status}")
        return status


def webhook_body(event: OutboxEvent) -> bytes:
    """The exact bytes that are signed and sent; identical on every retry of one event."""
    document = {
        "id": event.event_id,
        "type": event.event_type,
        "created_at": _iso_utc(event.created_at),
        "data": event.payload,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def merchant_webhook_handlers(handler: Handler) -> dict[str, Handler]:
    """Route every merchant-visible event type to ``handler`` (a ``MerchantWebhookHandler``)."""
    return {event_type: handler for event_type in sorted(MERCHANT_VISIBLE)}


def _iso_utc(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
