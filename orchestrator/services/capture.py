"""Capture: write the order, its payment instrument and its events durably, once per key.

Idempotency rests on two unique constraints, not on a check-then-insert: ``orders(merchant_id,
merchant_order_id)`` and ``idempotency_keys(merchant_id, key)``. Concurrent repeats of one request
queue on the first constraint until the first commits, then find its stored response; the same
key with another body conflicts on the second and the whole transaction rolls back.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.checkout import CheckoutRules, OrderRequest, request_fingerprint, validate
from orchestrator.domain.clock import Clock
from orchestrator.domain.errors import (
    DuplicateMerchantOrder,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidOrder,
    UniqueCodesExhausted,
)
from orchestrator.domain.ids import new_id
from orchestrator.domain.order import OrderState
from orchestrator.outbox.writer import PendingEvent, add_events, event_row, producing
from orchestrator.rails import manual_transfer
from orchestrator.rails.base import Rail
from orchestrator.rails.plan import channels_offered
from orchestrator.services.capture_statement import write_capture
from orchestrator.services.issuance import IssuanceService
from orchestrator.services.order_view import event_payload, render_order
from orchestrator.settings import UniqueCodeSettings
from orchestrator.store.database import Database
from orchestrator.store.merchants import PayoutAccount, active_payout_accounts
from orchestrator.store.tables import idempotency_keys, orders
from orchestrator.telemetry import tracing
from orchestrator.telemetry.metrics import Metrics

log = logging.getLogger("lunas.capture")

ACCOUNTS_TTL = 5.0
"""Seconds a merchant's payout-account list is reused by captures in one process."""

ANSWER_PENDING = 102
"""What a gateway capture keeps under its key from its commit until its request answers (HTTP's
"Processing"), never a reply itself: a repeat then is told the first is still being answered,
not replayed a 202 the first request will not give (it answers 201 once a route serves). After
``in_flight`` the request can no longer be running: it died unanswered, the worker issues the
order, and a repeat is answered 202 with what was stored."""


@dataclass(frozen=True, kw_only=True)
class CaptureOutcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool


class _Rejected(Exception):
    """Internal: roll the transaction back, then explain why outside it."""

    def __init__(self, order_conflict: bool) -> None:
        self.order_conflict = order_conflict


class CaptureService:
    def __init__(
        self, db: Database, *, rules: CheckoutRules, codes: UniqueCodeSettings, clock: Clock,
        metrics: Metrics, rng: random.Random | None = None,
        issuance: IssuanceService | None = None, in_flight: timedelta = timedelta(seconds=15),
        one_statement: bool = True,
    ) -> None:
        """``one_statement=False`` keeps the four-statement path on PostgreSQL too: the
        reference ``capture_statement`` is tested against."""
        self._db, self._rules, self._codes, self._clock = db, rules, codes, clock
        self._metrics = metrics
        self._rng = rng or random.Random()
        # Built once: a statement object memoises its cache key and compiled form, and the values
        # go in as parameters, so a capture neither builds nor hashes a new statement.
        self._insert_order = (
            db.insert(orders)
            .on_conflict_do_nothing(index_elements=["merchant_id", "merchant_order_id"])
            .returning(orders.c.id)
        )
        self._insert_key = (
            db.insert(idempotency_keys).on_conflict_do_nothing()
            .returning(idempotency_keys.c.key)
        )
        self._accounts: dict[str, tuple[float, list[PayoutAccount]]] = {}
        self._issuance = issuance
        self._in_flight = in_flight
        self._one_statement = one_statement

    async def capture(
        self, *, merchant_id: str, idempotency_key: str, request: OrderRequest
    ) -> CaptureOutcome:
        """Capture in a span of its own; its context is kept on the order (``_new_order``), the
        root of the order flow's trace."""
        with tracing.span("capture", attributes={
                "lunas.merchant_id": merchant_id,
                "lunas.rail": request.rail or manual_transfer.RAIL}) as span:
            outcome = await self._capture(merchant_id=merchant_id,
                                          idempotency_key=idempotency_key, request=request)
            span.set_attributes({"lunas.order_id": str(outcome.body.get("id", "")),
                                 "lunas.replayed": outcome.replayed,
                                 "lunas.status_code": outcome.status_code})
            return outcome

    async def _capture(
        self, *, merchant_id: str, idempotency_key: str, request: OrderRequest
    ) -> CaptureOutcome:
        now = self._clock.now()
        expires_at = validate(request, self._rules, now=now)
        fingerprint = request_fingerprint(request)
        rail = request.rail or manual_transfer.RAIL
        if rail != manual_transfer.RAIL:
            return await self._capture_gateway(merchant_id, idempotency_key, fingerprint,
                                               request, expires_at)
        try:
            async with self._db.transaction() as conn:
                body = await self._write(conn, merchant_id, idempotency_key, fingerprint,
                                         request, expires_at)
        except _Rejected as rejected:
            # A refusal (or failure) is counted once, by the HTTP layer (api/orders.py).
            outcome = await self._explain(merchant_id, idempotency_key, fingerprint, request,
                                          rejected)
            self._metrics.orders_captured.labels("replayed", rail).inc()
            return outcome
        except UniqueCodesExhausted:
            self._metrics.unique_codes_exhausted.labels(rail).inc()
            raise
        self._metrics.orders_captured.labels("created", rail).inc()
        return CaptureOutcome(status_code=201, body=body, replayed=False)

    def channel_for(self, rail: Rail, requested: str | None) -> str:
        """The channel to route, checked against what the configured providers offer."""
        if rail is Rail.MANUAL_TRANSFER:
            return "bank"
        if self._issuance is None:
            raise InvalidOrder(f"rail '{rail.value}' is not offered: no payment gateway is "
                               "configured; use manual_transfer", field="rail")
        offered = channels_offered(rail, self._issuance.router.catalog())
        channel = requested or (offered[0] if len(offered) == 1 else None)
        if channel is None or channel not in offered:
            raise InvalidOrder(f"channel for rail '{rail.value}' must be one of: "
                               f"{', '.join(offered)}", field="channel")
        return channel

    async def _capture_gateway(
        self, merchant_id: str, key: str, fingerprint: str, request: OrderRequest,
        expires_at: datetime,
    ) -> CaptureOutcome:
        """Capture first (the order is durable before any provider is called), then issue."""
        rail = Rail(request.rail or manual_transfer.RAIL)
        channel = self.channel_for(rail, request.channel)
        assert self._issuance is not None
        try:
            async with self._db.transaction() as conn:
                order = await self._write_captured(conn, merchant_id, key, fingerprint, request,
                                                   rail, channel, expires_at)
        except _Rejected as rejected:
            outcome = await self._explain(merchant_id, key, fingerprint, request, rejected)
            self._metrics.orders_captured.labels("replayed", rail.value).inc()
            return outcome
        try:
            result = await self._issuance.issue(order, rail=rail, channel=channel)
            finished = await self._issuance.finish(order.id, result,
                                                   idempotency=(merchant_id, key))
        except UniqueCodesExhausted:
            # Every gateway route down and the manual-transfer fallback found every amount
            # held: deferred like any order no route served, but counted as the pool running
            # dry, as a manual-transfer capture refused for it is.
            log.warning("fallback found every unique code held; deferred",
                        extra={"order_id": order.id})
            self._metrics.unique_codes_exhausted.labels(rail.value).inc()
            self._metrics.orders_captured.labels("deferred", rail.value).inc()
            await self._answered_deferred(merchant_id, key)
            body = render_order(order, None, nothing_to_pay=False)  # captured
            return CaptureOutcome(status_code=202, body=body, replayed=False)
        except Exception:
            # The order is durable and its order.captured event will issue it later: intake
            # answers 202 with what it stored rather than an error for an order that exists.
            log.exception("issuance failed after capture; deferred", extra={"order_id": order.id})
            self._metrics.orders_captured.labels("deferred", rail.value).inc()
            try:
                await self._answered_deferred(merchant_id, key)
            except Exception:
                # The database that failed issuance may refuse this too: the key then keeps
                # ANSWER_PENDING, which a repeat after ``in_flight`` is answered as this 202.
                log.warning("deferred answer not recorded under its key",
                            extra={"order_id": order.id}, exc_info=True)
            body = render_order(order, None, nothing_to_pay=False)  # captured
            return CaptureOutcome(status_code=202, body=body, replayed=False)
        # Answered as stored for the key: an instrument served but no longer live (the customer
        # switched method meanwhile) is not this request's instructions.
        self._metrics.orders_captured.labels("created" if finished.live else "deferred",
                                             rail.value).inc()
        return CaptureOutcome(status_code=201 if finished.live else 202, body=finished.body,
                              replayed=False)

    async def _write_captured(
        self, conn: AsyncConnection, merchant_id: str, key: str, fingerprint: str,
        request: OrderRequest, rail: Rail, channel: str, expires_at: datetime,
    ) -> SimpleNamespace:
        now = self._clock.now()
        order = _new_order(merchant_id, request, OrderState.CAPTURED, rail.value, channel,
                           expires_at, now)
        if (await conn.execute(self._insert_order, vars(order))).first() is None:
            raise _Rejected(order_conflict=True)
        body = render_order(order, None, nothing_to_pay=False)  # captured: nothing issued yet
        # The safety net for deferred issuance: if this request dies mid-issuance, or no route
        # serves, the worker issues once the request's own attempt can no longer be running.
        await add_events(conn, [PendingEvent(
            event_type=events.ORDER_CAPTURED, aggregate_id=order.id, merchant_id=merchant_id,
            payload=event_payload(order), available_at=now + self._in_flight,
        )], now=now)
        await self._store_response(conn, merchant_id, key, fingerprint, order.id,
                                   ANSWER_PENDING, body, now)
        return order

    async def _answered_deferred(self, merchant_id: str, key: str) -> None:
        """A gateway capture that answers 202 with what it stored (issuance failed) keeps that
        answer under its key; ``IssuanceService.finish`` does this for every other answer."""
        async with self._db.transaction() as conn:
            await conn.execute(idempotency_keys.update().where(
                idempotency_keys.c.merchant_id == merchant_id, idempotency_keys.c.key == key,
                idempotency_keys.c.response_status == ANSWER_PENDING,
            ).values(response_status=202))

    async def _store_response(
        self, conn: AsyncConnection, merchant_id: str, key: str, fingerprint: str,
        order_id: str, status: int, body: dict[str, Any], now: datetime,
    ) -> None:
        """Record the reply under the key; a concurrent different request that took the key
        first rolls this transaction back (``_Rejected``)."""
        stored = await conn.execute(self._insert_key, {
            "merchant_id": merchant_id, "key": key, "request_hash": fingerprint,
            "order_id": order_id, "response_status": status, "response_body": body,
            "created_at": now,
        })
        if stored.first() is None:
            raise _Rejected(order_conflict=False)

    async def _write(
        self, conn: AsyncConnection, merchant_id: str, key: str, fingerprint: str,
        request: OrderRequest, expires_at: Any,
    ) -> dict[str, Any]:
        now = self._clock.now()
        order = _new_order(merchant_id, request, OrderState.AWAITING_PAYMENT,
                           manual_transfer.RAIL, None, expires_at, now)
        accounts = await self._payout_accounts(conn, merchant_id)
        one_statement = (self._one_statement and conn.dialect.name == "postgresql"
                         and bool(accounts) and self._codes.allocation_tries > 0)
        if one_statement:
            body = await self._write_in_one_statement(conn, order, accounts, key, fingerprint,
                                                      request.amount, now)
            if body is not None:
                return body
            # The blind proposal's amount is held: the order row stands; propose the usual way.
        else:
            inserted = await conn.execute(self._insert_order, vars(order))
            if inserted.first() is None:
                raise _Rejected(order_conflict=True)
        instrument = await manual_transfer.issue_transfer(
            conn, order_id=order.id, amount=request.amount, accounts=accounts,
            codes=self._codes.codes, tries=self._codes.allocation_tries,
            expires_at=expires_at, now=now, rng=self._rng, blind_first=not one_statement,
        )
        body = render_order(order, _attempt_view(instrument), nothing_to_pay=False)
        await add_events(conn, [self._captured(order, body)], now=now)
        await self._store_response(conn, merchant_id, key, fingerprint, order.id, 201, body, now)
        return body

    @staticmethod
    def _captured(order: SimpleNamespace, body: dict[str, Any]) -> PendingEvent:
        return PendingEvent(event_type=events.ORDER_CAPTURED, aggregate_id=order.id,
                            merchant_id=order.merchant_id,
                            payload=event_payload(order, payment=body["payment"]))

    async def _write_in_one_statement(
        self, conn: AsyncConnection, order: SimpleNamespace, accounts: list[PayoutAccount],
        key: str, fingerprint: str, amount: int, now: datetime,
    ) -> dict[str, Any] | None:
        """The four rows of a capture whose blind proposal is free, in one round trip
        (``capture_statement``); None, with only the order written, when its amount is held."""
        attempt, instrument = manual_transfer.first_proposal(
            order_id=order.id, amount=amount, accounts=accounts, codes=self._codes.codes,
            expires_at=order.expires_at, now=now, rng=self._rng)
        body = render_order(order, _attempt_view(instrument), nothing_to_pay=False)
        captured = self._captured(order, body)
        with producing([captured]) as context:
            written = await write_capture(
                conn, order=vars(order), attempt=attempt,
                event=event_row(captured, now=now, trace_context=context),
                reply={"merchant_id": order.merchant_id, "key": key,
                       "request_hash": fingerprint, "order_id": order.id,
                       "response_status": 201, "response_body": body, "created_at": now})
        if not written.order:
            raise _Rejected(order_conflict=True)
        if not written.attempt:
            return None
        if not written.reply:
            raise _Rejected(order_conflict=False)
        return body

    async def _payout_accounts(
        self, conn: AsyncConnection, merchant_id: str
    ) -> list[PayoutAccount]:
        """The merchant's active payout accounts, cached for ``ACCOUNTS_TTL`` seconds.

        Saves a query per capture. An account added or deactivated takes effect within the TTL
        (an empty list is never cached, so a merchant's first account works at once). Which
        amounts are free is never cached: the partial unique index decides that per insert.
        """
        now = time.monotonic()
        cached = self._accounts.get(merchant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        accounts = await active_payout_accounts(conn, merchant_id)
        if accounts:
            if len(self._accounts) > 10_000:
                self._accounts.clear()
            self._accounts[merchant_id] = (now + ACCOUNTS_TTL, accounts)
        return accounts

    async def _explain(
        self, merchant_id: str, key: str, fingerprint: str, request: OrderRequest,
        rejected: _Rejected,
    ) -> CaptureOutcome:
        async with self._db.read() as conn:
            stored = (await conn.execute(
                sa.select(idempotency_keys.c.request_hash, idempotency_keys.c.response_status,
                          idempotency_keys.c.response_body, idempotency_keys.c.created_at)
                .where(idempotency_keys.c.merchant_id == merchant_id,
                       idempotency_keys.c.key == key)
            )).first()
            if stored is not None:
                if stored.request_hash != fingerprint:
                    raise IdempotencyKeyReused(
                        "this Idempotency-Key was already used with a different request body; "
                        "use a new key for a new order"
                    )
                status = stored.response_status
                if status == ANSWER_PENDING:
                    if self._clock.now() - stored.created_at < self._in_flight:
                        raise IdempotencyKeyInFlight(
                            "the first request with this Idempotency-Key is still being "
                            "answered; send it again in a few seconds for its answer")
                    status = 202  # it died unanswered; the worker issues the order
                return CaptureOutcome(status_code=status, body=stored.response_body,
                                      replayed=True)
            existing = (await conn.execute(
                sa.select(orders.c.id).where(
                    orders.c.merchant_id == merchant_id,
                    orders.c.merchant_order_id == request.merchant_order_id,
                )
            )).scalar_one_or_none()
        if existing is None or not rejected.order_conflict:  # pragma: no cover - a lost race
            raise IdempotencyKeyReused("this Idempotency-Key is in use by a concurrent request")
        raise DuplicateMerchantOrder(
            f"merchant_order_id '{request.merchant_order_id}' already belongs to order {existing}",
            existing_order_id=existing,
        )


def _new_order(
    merchant_id: str, request: OrderRequest, state: OrderState, rail: str, channel: str | None,
    expires_at: datetime, now: datetime,
) -> SimpleNamespace:
    return SimpleNamespace(
        id=new_id("ord"), merchant_id=merchant_id, merchant_order_id=request.merchant_order_id,
        amount=request.amount, currency="IDR", state=state.value, rail=rail, channel=channel,
        customer_name=request.customer.name, customer_email=request.customer.email,
        customer_phone=request.customer.phone, metadata=request.metadata, created_at=now,
        updated_at=now, expires_at=expires_at, paid_at=None, review_reason=None,
        trace_context=tracing.carrier(),
    )


def _attempt_view(instrument: manual_transfer.TransferInstrument) -> SimpleNamespace:
    return SimpleNamespace(
        id=instrument.attempt_id, rail=manual_transfer.RAIL, state="active",
        payout_bank=instrument.bank, payout_account_number=instrument.account_number,
        payout_account_name=instrument.account_name, transfer_amount=instrument.transfer_amount,
        unique_code=instrument.unique_code, expires_at=instrument.expires_at,
    )
