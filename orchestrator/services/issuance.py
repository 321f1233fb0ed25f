"""Issuing payment instructions for an order through the router, durably.

Every provider call is preceded by its own committed ``creating`` attempt row (the journal), so a
crash mid-call leaves an attempt to verify rather than a live instrument nobody knows about. When
a route serves, the order moves to ``awaiting_payment`` and the merchant hears
``order.awaiting_payment`` with the instructions and, if it fell back, from what and why.

An order never gets a second e-wallet charge while one already made for it may still be paid
and Lunas can neither read whether it was nor void it (``unconfirmed_charges``: a create whose
answer was lost, not yet read, or read by reference as pending with no id to void it by, a
Xendit charge, RAILS.md §2.4). A second charge is a second payment prompt the customer may
approve as well as the first. Its e-wallet routes are skipped, saying why (``UNCONFIRMED``);
another rail serves where the merchant allows fallback or the customer chooses one.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.clock import Clock
from orchestrator.domain.errors import Conflict, DomainError, NotFound, TransitionRefused
from orchestrator.domain.ids import new_id
from orchestrator.domain.order import AttemptState, OrderState, OrderTrigger, next_order_state
from orchestrator.domain.verification import VerificationSchedule
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails import manual_transfer
from orchestrator.rails.base import ChargeRequest, Instrument, Rail, Route
from orchestrator.rails.plan import RoutingPolicy, plan_routes
from orchestrator.rails.router import Hop, IssueResult, RouteNotBegun, Router
from orchestrator.services.order_view import event_payload
from orchestrator.services.orders import retire_attempts, view_order
from orchestrator.settings import UniqueCodeSettings
from orchestrator.store.database import Database
from orchestrator.store.merchants import active_payout_accounts
from orchestrator.store.tables import idempotency_keys, merchants, orders, payment_attempts
from orchestrator.telemetry import tracing
from orchestrator.telemetry.metrics import Metrics


class _Journal:
    """The router's ``AttemptJournal`` for one order."""

    def __init__(self, service: IssuanceService, order: Any) -> None:
        self._s, self._order = service, order
        self._routes: dict[str, str] = {}

    def _count(self, attempt_id: str, outcome: str) -> None:
        route = self._routes.get(attempt_id)
        if route is not None:
            self._s.metrics.payment_attempts.labels(route, outcome).inc()

    async def begin(self, route: Route) -> str:
        attempt_id = new_id("att")
        now = self._s.clock.now()
        async with self._s.db.transaction() as conn:
            if route.rail is Rail.EWALLET:
                # Checked before the plan too, but two issuances for one order (a double tap on
                # "pay with OVO", a switch beside deferred issuance) could both pass that check
                # before either journalled its create: both charged. Under the order's lock the
                # second sees the first's ``creating`` row.
                await conn.execute(sa.select(orders.c.id).where(orders.c.id == self._order.id)
                                   .with_for_update())
                doubt = await unconfirmed_charges(conn, self._order.id)
                if doubt:
                    raise RouteNotBegun(unconfirmed_reason(doubt[0]))
            await conn.execute(payment_attempts.insert().values(
                id=attempt_id, order_id=self._order.id, rail=route.rail.value,
                provider=route.provider, channel=route.channel,
                state=AttemptState.CREATING.value, transfer_amount=self._order.amount,
                created_at=now, updated_at=now, expires_at=self._order.expires_at,
                next_check_at=self._s.schedule.first_check(route.rail, now),
            ))
        self._routes[attempt_id] = route.key
        return attempt_id

    async def served(self, attempt_id: str, instrument: Instrument) -> None:
        await self._close(attempt_id, AttemptState.ACTIVE, provider_ref=instrument.provider_ref,
                          instructions=_instructions(instrument))
        self._count(attempt_id, "served")

    async def failed(self, attempt_id: str, reason: str) -> None:
        await self._close(attempt_id, AttemptState.FAILED, failure_reason=reason)
        self._count(attempt_id, "failed")

    async def unknown(self, attempt_id: str, reason: str) -> None:
        await self._close(attempt_id, AttemptState.UNKNOWN, failure_reason=reason)
        self._count(attempt_id, "unknown")

    async def manual_transfer(self) -> str:
        s, order = self._s, self._order
        now = s.clock.now()
        async with s.db.transaction() as conn:
            instrument = await manual_transfer.issue_transfer(
                conn, order_id=order.id, amount=order.amount,
                accounts=await active_payout_accounts(conn, order.merchant_id),
                codes=s.codes.codes, tries=s.codes.allocation_tries,
                expires_at=order.expires_at, now=now, rng=s.rng,
            )
        return instrument.attempt_id

    async def _close(self, attempt_id: str, state: AttemptState, **values: Any) -> None:
        now = self._s.clock.now()
        closed = {"closed_at": now} if state is AttemptState.FAILED else {}
        async with self._s.db.transaction() as conn:
            # Only a creating attempt is this journal's to close (nothing else may have moved it,
            # but the guard makes that a property of the database, not of timing).
            await conn.execute(payment_attempts.update()
                               .where(payment_attempts.c.id == attempt_id,
                                      payment_attempts.c.state == AttemptState.CREATING.value)
                               .values(state=state.value, updated_at=now, **closed, **values))
            if state is AttemptState.UNKNOWN:  # verification is queued with the state change
                await add_unknown_event(conn, attempt_id, now=now)


def _instructions(instrument: Instrument) -> dict[str, Any]:
    data = {k: v for k, v in asdict(instrument).items()
            if k not in ("route", "status", "provider_ref") and v not in (None, {}, "")}
    if instrument.expires_at is not None:
        data["expires_at"] = instrument.expires_at.isoformat()
    return data


UNCONFIRMED = "an e-wallet charge made for this order may still be paid"
"""The start of the reason an e-wallet route is skipped for an order with an unconfirmed
charge (``unconfirmed_charges``)."""


async def unconfirmed_charges(conn: AsyncConnection, order_id: str) -> list[Any]:
    """The order's e-wallet charges that may still be paid and that nothing can withdraw: a
    create still running or whose outcome is unknown (not yet read), and a charge read as
    pending by our reference alone (superseded with no provider id: it cannot be voided, and
    only a payment or the order's deadline closes it)."""
    a = payment_attempts.c
    return list((await conn.execute(sa.select(payment_attempts).where(
        a.order_id == order_id, a.rail == Rail.EWALLET.value,
        sa.or_(a.state.in_([AttemptState.CREATING.value, AttemptState.UNKNOWN.value]),
               sa.and_(a.state == AttemptState.SUPERSEDED.value, a.provider_ref.is_(None))),
    ).order_by(a.created_at))).all())


def unconfirmed_reason(attempt: Any) -> str:
    how = ("read as pending, with no id to void it by"
           if attempt.state == AttemptState.SUPERSEDED.value else "its create went unanswered")
    return (f"{UNCONFIRMED} ({attempt.id} on ewallet:{attempt.provider}:{attempt.channel}, "
            f"{how}); never charged twice")


class IssuanceService:
    def __init__(self, db: Database, router: Router, *, codes: UniqueCodeSettings, clock: Clock,
                 callback_base_url: str, default_policy: RoutingPolicy | None = None,
                 rng: random.Random | None = None,
                 schedule: VerificationSchedule | None = None,
                 metrics: Metrics | None = None) -> None:
        self.db, self.router, self.codes, self.clock = db, router, codes, clock
        self.metrics = metrics or Metrics()
        self.schedule = schedule or VerificationSchedule()
        self.rng = rng or random.Random()
        self._callback_base = callback_base_url.rstrip("/")
        self._default_policy = default_policy or RoutingPolicy()

    async def policy_for(self, merchant_id: str) -> RoutingPolicy:
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(merchants.c.routing, merchants.c.allow_fallback)
                                      .where(merchants.c.id == merchant_id))).one()
        return RoutingPolicy.for_merchant(row.routing, allow_fallback=row.allow_fallback,
                                          defaults=self._default_policy)

    async def issue(self, order: Any, *, rail: Rail, channel: str,
                    budget: timedelta | None = None) -> IssueResult:
        """Run the router for ``order`` (a row in ``captured`` or switching method)."""
        with tracing.span("routing", attributes={
                "lunas.order_id": order.id, "lunas.rail": rail.value,
                "lunas.channel": channel}) as span:
            policy = await self.policy_for(order.merchant_id)
            plan = plan_routes(rail, channel, policy, self.router.catalog())
            skipped: list[Hop] = []
            if any(r.rail is Rail.EWALLET for r in plan):
                async with self.db.read() as conn:
                    doubt = await unconfirmed_charges(conn, order.id)
                if doubt:  # a second e-wallet charge could be paid beside the first
                    why = unconfirmed_reason(doubt[0])
                    skipped = [Hop(route=r.key, outcome="skipped", reason=why)
                               for r in plan if r.rail is Rail.EWALLET]
                    plan = [r for r in plan if r.rail is not Rail.EWALLET]
            result = await self.router.issue(
                plan, lambda route, ref: self.request_for(order, route, ref),
                _Journal(self, order), budget=budget)
            result.hops[:0] = skipped
            span.set_attributes({
                "lunas.served_by": result.served.key if result.served else "",
                "lunas.fell_back": result.fell_back,
                "lunas.hops": [f"{h.route} {h.outcome}" for h in result.hops]})
            return result

    def request_for(self, order: Any, route: Route, reference: str) -> ChargeRequest:
        return ChargeRequest(
            reference=reference, route=route, amount=order.amount, expires_at=order.expires_at,
            customer_name=order.customer_name, customer_email=order.customer_email,
            customer_phone=order.customer_phone,
            description=f"Order {order.merchant_order_id}"[:100],
            callback_url=f"{self._callback_base}/v1/webhooks/{route.provider}",
        )

    async def finish(self, order_id: str, result: IssueResult, *, idempotency: tuple[str, str]
                     | None = None, switching: bool = False) -> Finished:
        """Record the outcome on the order (one transaction) and return its rendering, saying
        whether the instrument served is the live one (what a reply's status must follow).

        Everything is decided again under the order's row lock, because the order may have moved
        while providers were being called: an instrument served for an order that was cancelled
        or expired meanwhile is superseded and cancelled at its provider, never announced; of two
        concurrent switches only the one whose attempt is still active supersedes the others.
        """
        now = self.clock.now()
        async with self.db.transaction() as conn:
            order = (await conn.execute(sa.select(orders).where(orders.c.id == order_id)
                                        .with_for_update())).one()
            served_live = result.served is not None and await _is_active(conn, result.attempt_id)
            if served_live and order.state not in _ISSUABLE:
                await retire_attempts(conn, [str(result.attempt_id)], now=now, quarantine=self.codes
                              .quarantine)
                served_live = False
            if (served_live and not switching
                    and await _another_active(conn, order_id, str(result.attempt_id))):
                # A switch of method was served while this issuance was mid-call (the switch
                # superseded only what was active then): the customer's choice stands, and this
                # instrument, never shown to them, is superseded (still watched) and cancelled.
                await _supersede(conn, payment_attempts.c.id == str(result.attempt_id),
                                 now=now)
                served_live = False
            if served_live and order.state == OrderState.CAPTURED.value:
                state = next_order_state(OrderState.CAPTURED, OrderTrigger.INSTRUCTIONS_ISSUED)
                await conn.execute(orders.update().where(orders.c.id == order_id)
                                   .values(state=state.value, updated_at=now))
                order = (await conn.execute(sa.select(orders)
                                            .where(orders.c.id == order_id))).one()
            if served_live and switching:
                await supersede_others(conn, order_id, str(result.attempt_id), now=now)
            body = await view_order(conn, order)
            body["routing"] = routing_view(result)
            if served_live:
                await add_events(conn, [PendingEvent(
                    event_type=events.ORDER_AWAITING_PAYMENT, aggregate_id=order_id,
                    merchant_id=order.merchant_id,
                    payload=event_payload(order, payment=body["payment"],
                                          routing=body["routing"]))], now=now)
            if idempotency is not None:
                await conn.execute(idempotency_keys.update().where(
                    idempotency_keys.c.merchant_id == idempotency[0],
                    idempotency_keys.c.key == idempotency[1],
                ).values(response_status=201 if served_live else 202, response_body=body))
        return Finished(body=body, live=served_live)


@dataclass(frozen=True)
class Finished:
    body: dict[str, Any]
    live: bool  # the instrument this issuance served is the order's live one


async def switch_method(service: IssuanceService, *, merchant_id: str, order_id: str,
                        rail: Rail, channel: str) -> tuple[int, dict[str, Any]]:
    """The customer chose another method: issue it first; only once it is live are the old
    instruments superseded (still watched) and cancelled at their providers."""
    async with service.db.read() as conn:
        order = (await conn.execute(sa.select(orders).where(
            orders.c.id == order_id, orders.c.merchant_id == merchant_id))).first()
    if order is None:
        raise NotFound(f"no order {order_id} for this merchant")
    if order.state not in (OrderState.CAPTURED.value, OrderState.AWAITING_PAYMENT.value):
        raise TransitionRefused("order", order.state, "switch payment method")
    if order.expires_at <= service.clock.now():
        # Not yet closed by the expiry sweep, but a new method could not be paid in time.
        raise TransitionRefused("order", order.state,
                                "switch payment method (its payment deadline has passed)")
    if rail is Rail.EWALLET:
        async with service.db.read() as conn:
            doubt = await unconfirmed_charges(conn, order_id)
        if doubt:
            raise ChargeUnconfirmed(
                f"{unconfirmed_reason(doubt[0])}: the customer may still approve it; they may "
                "choose another rail meanwhile")
    result = await service.issue(order, rail=rail, channel=channel)
    if result.served is None and (doubted := _refused_for_doubt(result)):
        # Another issuance journalled an e-wallet create after the check above (a double tap).
        raise ChargeUnconfirmed(f"{doubted}: the customer may still approve it; they may choose "
                                "another rail meanwhile")
    if result.served is None:
        raise NoRouteAvailable("no route can serve this method now; the current instructions "
                               "stay valid", routing=routing_view(result))
    finished = await service.finish(order_id, result, switching=True)
    if not finished.live:
        # The order moved while the provider was called (paid, cancelled, expired, or another
        # switch won): the instrument served here was superseded and cancelled, never shown.
        raise SwitchNotApplied("the order changed while the new method was being issued; its "
                               "current state and instructions are in GET /v1/orders/{id}")
    return 201, finished.body


def _refused_for_doubt(result: IssueResult) -> str | None:
    """Why the issuance was not tried for an unconfirmed e-wallet charge another issuance had
    made, when that (and no unanswered create of its own) is what left it without a route."""
    if any(h.outcome != "skipped" for h in result.hops):
        return None
    return next((h.reason for h in result.hops if h.reason.startswith(UNCONFIRMED)), None)


class SwitchNotApplied(Conflict):
    code = "switch_not_applied"


class ChargeUnconfirmed(Conflict):
    """A switch to an e-wallet while an e-wallet charge made for the order may still be paid
    (``unconfirmed_charges``): a second charge would be a second prompt to approve."""

    code = "ewallet_charge_unconfirmed"


class NoRouteAvailable(DomainError):
    code = "no_route_available"

    def __init__(self, detail: str, *, routing: dict[str, Any]) -> None:
        super().__init__(detail)
        self.routing = routing


def routing_view(result: IssueResult) -> dict[str, Any]:
    served = result.served.key if result.served else None
    return {
        "served_by": served,
        "fallback": result.fell_back,
        "tried": [{"route": h.route, "outcome": h.outcome, "reason": h.reason}
                  for h in result.hops],
    }




async def add_unknown_event(conn: AsyncConnection, attempt_id: str, *, now: datetime) -> None:
    await add_events(conn, [PendingEvent(event_type=events.ATTEMPT_UNKNOWN,
                                         aggregate_id=attempt_id, merchant_id=None,
                                         payload={"attempt_id": attempt_id})], now=now)


_ISSUABLE = (OrderState.CAPTURED.value, OrderState.AWAITING_PAYMENT.value)


async def _is_active(conn: AsyncConnection, attempt_id: str | None) -> bool:
    if attempt_id is None:
        return False
    state = (await conn.execute(sa.select(payment_attempts.c.state).where(
        payment_attempts.c.id == attempt_id).with_for_update())).scalar_one_or_none()
    return state == AttemptState.ACTIVE.value


async def supersede_others(conn: AsyncConnection, order_id: str, keep_attempt_id: str, *,
                           now: datetime) -> list[str]:
    """Mark the order's other active attempts superseded (still watched, rule 4) and queue a
    cancel at their providers; returns their ids."""
    return await _supersede(conn, payment_attempts.c.order_id == order_id,
                            payment_attempts.c.id != keep_attempt_id, now=now)


async def _another_active(conn: AsyncConnection, order_id: str, attempt_id: str) -> bool:
    return (await conn.execute(sa.select(payment_attempts.c.id).where(
        payment_attempts.c.order_id == order_id, payment_attempts.c.id != attempt_id,
        payment_attempts.c.state == AttemptState.ACTIVE.value).limit(1))).first() is not None


async def _supersede(conn: AsyncConnection, *which: sa.ColumnElement[bool],
                     now: datetime) -> list[str]:
    """The active attempts ``which`` selects, superseded, a cancel queued at their providers;
    returns their ids."""
    rows = (await conn.execute(
        payment_attempts.update()
        .where(*which, payment_attempts.c.state == AttemptState.ACTIVE.value)
        .values(state=AttemptState.SUPERSEDED.value, updated_at=now)
        .returning(payment_attempts.c.id, payment_attempts.c.rail))).all()
    # The order stays open, so these stay watched with their codes held until it closes.
    await add_events(conn, [
        PendingEvent(event_type=events.ATTEMPT_CANCEL_REQUESTED, aggregate_id=r.id,
                     merchant_id=None, payload={"attempt_id": r.id})
        for r in rows if r.rail != Rail.MANUAL_TRANSFER.value
    ], now=now)
    return [r.id for r in rows]
