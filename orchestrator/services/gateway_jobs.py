"""Worker jobs for gateway rails, run from the outbox.

``order.captured`` — deferred issuance. An order still ``captured`` after its capture request's
budget (the api died mid-issuance, or every route was down and the merchant allows no fallback)
gets its instructions here, retried with the relay's backoff until a route serves. An order
cancelled while an issuer that then died was mid-call has what it served withdrawn here.

``attempt.unknown`` — an attempt whose create outcome was unknown is resolved by a status read
(never by a blind re-create, rule 3): absent → failed; paid → settled as evidence; live →
cancelled at the provider where it allows and kept watched as ``superseded`` (rule 4), so no
instrument nobody was shown is left uncancelled; a cancelled one is read again at once, so its
close can tell the merchant when nothing is left to pay on (``_supersede_live``). A create is
repeated only where the provider documents an idempotency key for it (a Xendit VA, which
cannot be found by our reference otherwise). A Xendit e-wallet charge is never created again:
no key is documented there and a charge is found by its id only, so a repeat would push a
second payment prompt to the customer. Unpaid, it reads as pending and is kept ``superseded``:
it cannot be cancelled without its id, so it is watched (read for a payment by our reference,
its webhook matched by it) to the order's deadline and through the quarantine after.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.domain import events
from orchestrator.domain.clock import Clock
from orchestrator.domain.errors import UniqueCodesExhausted
from orchestrator.domain.order import AttemptState, OrderState
from orchestrator.domain.verification import VerificationSchedule
from orchestrator.outbox.relay import OutboxEvent
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import (
    Instrument,
    NeutralStatus,
    PaymentProvider,
    ProviderStatus,
    Rail,
    Route,
)
from orchestrator.rails.errors import OutcomeUnknown, RailError, Refused
from orchestrator.rails.router import Hop, IssueResult, RouteGuard, RouteUnavailable
from orchestrator.services.issuance import (
    UNCONFIRMED,
    IssuanceService,
    add_unknown_event,
    unconfirmed_charges,
)
from orchestrator.services.payment_failed import lock_order_of, tell_if_nothing_left_to_pay
from orchestrator.services.reversals import REVERSALS, apply_reversal
from orchestrator.services.settlement import apply_read_payments
from orchestrator.services.status_reads import (
    StatusReads,
    defer,
    queue_closed_read,
    route_of,
    wait_to_retry,
)
from orchestrator.store.database import Database
from orchestrator.store.tables import orders, payment_attempts
from orchestrator.telemetry.metrics import Metrics

log = logging.getLogger("lunas.gateway_jobs")


class IssuanceStillRunning(Exception):
    """A capture request may still be issuing this order; try again after the backoff."""


class NoRouteYet(Exception):
    """No route can serve this order now; the relay retries with backoff."""


class GatewayJobs:
    def __init__(self, db: Database, issuance: IssuanceService,
                 providers: Mapping[str, PaymentProvider], guard: RouteGuard, clock: Clock,
                 *, reads: StatusReads, in_flight: timedelta, quarantine: timedelta,
                 schedule: VerificationSchedule | None = None,
                 metrics: Metrics | None = None) -> None:
        self._db, self._issuance, self._providers = db, issuance, providers
        self._guard, self._clock, self._reads = guard, clock, reads
        self._in_flight, self._quarantine = in_flight, quarantine
        self._schedule = schedule or VerificationSchedule()
        self._metrics = metrics or Metrics()

    def handlers(self) -> dict[str, Any]:
        return {events.ORDER_CAPTURED: self.on_order_captured,
                events.ATTEMPT_UNKNOWN: self.on_attempt_unknown,
                events.ATTEMPT_CANCEL_REQUESTED: self.on_cancel_requested}

    async def on_cancel_requested(self, event: OutboxEvent) -> None:
        """A superseded or expired instrument: cancel it where the provider allows. A
        superseded one stays live and read by the verifier. An expired one was last read before
        its cancel, and the verifier reads it no more: a payment made in between is found only
        by one more read. Once cancelled it is read once (``_read_after_cancel``: a Xendit VA
        accepts its closing even once paid); if the provider would not cancel it (a Xendit QR
        has no cancel; Midtrans refuses one for a charge paid since), it can still take money,
        or took it, and is watched through the code quarantine of its closing
        (``_watch_uncancelled``)."""
        attempt_id = str(event.payload["attempt_id"])
        async with self._db.read() as conn:
            attempt = (await conn.execute(sa.select(payment_attempts)
                                          .where(payment_attempts.c.id == attempt_id))).one()
        if attempt.state not in (AttemptState.SUPERSEDED.value, AttemptState.EXPIRED.value):
            return  # paid or already failed meanwhile: nothing to cancel
        route = Route(rail=Rail(attempt.rail), provider=attempt.provider,
                      channel=attempt.channel or "")
        tries = int(event.payload.get("tries") or 0)  # earlier tries that could not be made
        try:
            async with self._guard.guard(route.key):
                await self._providers[attempt.provider].cancel(attempt.id, attempt.provider_ref,
                                                               route)
        except Refused:
            if attempt.state == AttemptState.EXPIRED.value:
                await self._watch_uncancelled(attempt, again=tries > 0)
            return
        except (RouteUnavailable, RailError) as exc:
            await self._cancel_later(attempt, tries + 1, exc)
            return
        if attempt.state == AttemptState.EXPIRED.value:
            await self._read_after_cancel(attempt)

    async def _cancel_later(self, attempt: Any, tries: int, exc: Exception) -> None:
        """A cancel that cannot be made now (breaker open, 429, provider down, outcome
        unknown; a cancel is safe to repeat) is tried again later, never left to the relay's
        backoff: that retried it into the outage and dead-lettered it, leaving the instrument
        neither cancelled nor read. An expired instrument is watched meanwhile, as one the
        provider refused to cancel (a payment on it is found), and its cancel is given up when
        that watch ends; a superseded one stays live, so the verifier reads it meanwhile."""
        now = self._clock.now()
        wait = wait_to_retry(exc, base=self._schedule.retry_after_failure, tries=tries,
                             retry_at=self._reads.retry_at(route_of(attempt).key), now=now)
        if attempt.state == AttemptState.EXPIRED.value:
            if tries == 1:  # once: each call would say a read is queued now on the attempt
                await self._watch_uncancelled(attempt)
            watch_until = (attempt.closed_at or attempt.updated_at) + self._quarantine
            if now + wait > watch_until:
                log.warning("cancel of expired %s given up at the end of its watch (%s)",
                            attempt.id, exc, extra={"attempt_id": attempt.id,
                                                    "order_id": attempt.order_id})
                return
        log.warning("cancel of %s not made (%s, try %d), tried again in %.0f s", attempt.id,
                    type(exc).__name__, tries, wait.total_seconds(),
                    extra={"attempt_id": attempt.id, "order_id": attempt.order_id})
        async with self._db.transaction() as conn:
            await add_events(conn, [PendingEvent(
                event_type=events.ATTEMPT_CANCEL_REQUESTED, aggregate_id=attempt.id,
                merchant_id=None, payload={"attempt_id": attempt.id, "tries": tries},
                available_at=now + wait, event_id=f"cancel{tries}_{attempt.id}"[:40])], now=now)

    async def _read_after_cancel(self, attempt: Any) -> None:
        """One read of an expired instrument just cancelled (``provider_webhooks
        .on_attempt_verify``): what was paid between its last read and the cancel."""
        now = self._clock.now()
        async with self._db.transaction() as conn:
            await queue_closed_read(conn, attempt.id, due=now, now=now,
                                    why="cancelled at the provider; read once more",
                                    event_id=f"recheck_{attempt.id}")  # at most 40

    async def _watch_uncancelled(self, attempt: Any, *, again: bool = False) -> None:
        """Read an expired instrument the provider would not cancel now (a payment that landed
        at the deadline is found at once), then at doubling gaps (``VerificationSchedule
        .next_watch``) until the quarantine of its closing ends (``provider_webhooks
        .on_attempt_verify``). Its webhook is the fast path; this is the net for the one that is
        lost (rule 4). ``again``: the watch may have been started while the cancel could not be
        made (``_cancel_later``), so its fixed id is taken; a refusal now (a payment since?)
        still gets its read at once, once."""
        now = self._clock.now()
        watch_until = (attempt.closed_at or attempt.updated_at) + self._quarantine
        if watch_until <= now:
            return
        async with self._db.transaction() as conn:
            await queue_closed_read(conn, attempt.id, due=now, now=now,
                                    why="the provider would not cancel it; watched until "
                                        f"{watch_until.isoformat()}", watch_until=watch_until,
                                    event_id=f"watch_{attempt.id}")  # a cancel job run twice
            if again:
                await queue_closed_read(conn, attempt.id, due=now, now=now,
                                        why="the provider refused its cancel; read once",
                                        event_id=f"refused_{attempt.id}")  # at most 40

    async def on_order_captured(self, event: OutboxEvent) -> None:
        order_id = str(event.aggregate_id)
        async with self._db.read() as conn:
            order = (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).one()
            attempts = (await conn.execute(sa.select(payment_attempts).where(
                payment_attempts.c.order_id == order_id))).all()
        if order.rail == Rail.MANUAL_TRANSFER.value:
            return
        live = [a for a in attempts if a.state == AttemptState.ACTIVE.value]
        if order.state == OrderState.CANCELLED.value:
            # A cancel retires every active instrument in its transaction, so one active now
            # was served after it, by an issuer that died before ``finish``, the step that
            # withdraws it (superseded, cancelled at its provider, never announced).
            for attempt in live:
                await self._finish_served(order_id, attempt)
            return
        if order.state != OrderState.CAPTURED.value:
            return
        if live:  # served, but the request died before finishing: finish, never issue twice
            await self._finish_served(order_id, live[0])
            return
        creating = [a for a in attempts if a.state == AttemptState.CREATING.value]
        now = self._clock.now()
        if any(now - a.created_at < self._in_flight for a in creating):
            raise IssuanceStillRunning(f"order {order_id} has an attempt being created")
        for stale in creating:  # its caller died mid-call: the provider may hold a charge
            await self._mark_unknown(stale.id, "issuer stopped mid-call; verifying")
        if order.expires_at <= now:
            # Instructions issued now could not be paid in time (a Xendit QR has no expiry of
            # its own): the order is the expiry sweep's to close.
            return
        if order.rail == Rail.EWALLET.value:
            order = await self._read_unknown_charges(order_id)
            if order.state != OrderState.CAPTURED.value:
                return  # paid by the charge just read (or closed meanwhile)
        try:
            result = await self._issuance.issue(order, rail=Rail(order.rail),
                                                channel=order.channel or "")
        except UniqueCodesExhausted:
            # Every route still down and the fallback found every amount held: retried by the
            # relay like any order no route served, and counted each try as the pool running
            # dry, as the capture that deferred it was (capture.py).
            self._metrics.unique_codes_exhausted.labels(order.rail).inc()
            raise
        await self._issuance.finish(order_id, result)
        if result.served is None:
            async with self._db.read() as conn:
                doubt = await unconfirmed_charges(conn, order_id)
            if (doubt and result.hops
                    and all(a.state == AttemptState.SUPERSEDED.value for a in doubt)
                    and all(h.reason.startswith(UNCONFIRMED) for h in result.hops)):
                # Only its own e-wallet charge, read pending with no id to void it by, could
                # serve the order: it waits on that one (a payment settles it; the deadline's
                # read closes it) and shows why (order_view), never charged a second time.
                log.warning("order %s not issued: %s", order_id, result.hops[0].reason,
                            extra={"order_id": order_id, "attempt_id": doubt[0].id})
                return
            raise NoRouteYet("; ".join(f"{h.route}: {h.reason}" for h in result.hops))

    async def _read_unknown_charges(self, order_id: str) -> Any:
        """Read every e-wallet charge of the order whose create's outcome is unknown before
        anything else is issued for it (rule 3): one not made is failed, one paid settles the
        order, one pending is kept watched; one that cannot be read now stays unknown, and
        ``IssuanceService.issue`` makes no other e-wallet charge beside it. Returns the order
        as it is after."""
        async with self._db.read() as conn:
            unknown = (await conn.execute(sa.select(payment_attempts).where(
                payment_attempts.c.order_id == order_id,
                payment_attempts.c.rail == Rail.EWALLET.value,
                payment_attempts.c.state == AttemptState.UNKNOWN.value))).all()
        for attempt in unknown:
            try:
                await self.resolve_unknown(attempt)
            except (RouteUnavailable, RailError) as exc:
                log.warning("unknown e-wallet create %s not read (%s); no other e-wallet charge "
                            "is made for its order meanwhile", attempt.id, type(exc).__name__,
                            extra={"order_id": order_id, "attempt_id": attempt.id})
        async with self._db.read() as conn:
            return (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).one()

    async def _finish_served(self, order_id: str, attempt: Any) -> None:
        route = Route(rail=Rail(attempt.rail), provider=attempt.provider,
                      channel=attempt.channel or "")
        await self._issuance.finish(order_id, IssueResult(
            served=route, attempt_id=attempt.id, hops=[Hop(route=route.key, outcome="served")]))

    async def on_attempt_unknown(self, event: OutboxEvent) -> None:
        """The first try at resolving an unknown create, straight after it; if the route's
        breaker is open the read is deferred until it closes (the verifier takes it from
        there), so the outbox event is done either way."""
        attempt_id = str(event.payload["attempt_id"])
        async with self._db.read() as conn:
            attempt = (await conn.execute(sa.select(payment_attempts)
                                          .where(payment_attempts.c.id == attempt_id))).one()
        if attempt.state != AttemptState.UNKNOWN.value:
            return
        try:
            await self.resolve_unknown(attempt)
        except RouteUnavailable:
            key = route_of(attempt).key
            async with self._db.transaction() as conn:
                await defer(conn, attempt.id, key, now=self._clock.now(),
                            retry_at=self._reads.retry_at(key))

    async def resolve_unknown(self, attempt: Any) -> bool:
        """Read the provider's status of an ``unknown`` attempt and act on it; True when the
        attempt is to be read again at once (a live orphan just cancelled), not on its rail's
        schedule. Raises ``RouteUnavailable`` when the route's breaker refuses, ``RailError``
        when the read failed."""
        route = route_of(attempt)
        provider = self._providers[attempt.provider]
        status = await self._reads.read(attempt)
        if (status.status is NeutralStatus.NOT_FOUND and attempt.provider_ref is None
                and provider.idempotent_create(route.rail)):
            # Some providers cannot find a resource by our reference (legacy Xendit VA); the
            # create's documented idempotency key makes repeating it safe: it returns the
            # original if one exists. What comes back is a live orphan either way. Where no key
            # is documented (a Xendit e-wallet charge) the adapter never says not found by
            # reference, so nothing is created twice.
            try:
                made = (await self._recreate(attempt, route, provider)).provider_ref
            except OutcomeUnknown as exc:
                if exc.provider_ref is None:
                    raise
                # It exists and must never be used (a Xendit VA not closed and single-use as
                # asked): the same answer comes back on every repeat, so resolved, not retried.
                made = exc.provider_ref
            return await self._supersede_live(attempt, route, provider, made)
        if status.status is NeutralStatus.PENDING:
            return await self._supersede_live(attempt, route, provider, status.provider_ref)
        if status.status is NeutralStatus.NOT_FOUND:
            await self._set_state(attempt.id, AttemptState.FAILED, "never created at provider")
        elif status.status is NeutralStatus.PAID or status.status in REVERSALS:
            await self._settle(attempt, status)
        elif status.status is NeutralStatus.EXPIRED:
            await self._set_state(attempt.id, AttemptState.EXPIRED, "expired at provider")
        else:
            await self._set_state(attempt.id, AttemptState.FAILED, f"provider says {status.status}")
        return False

    async def _recreate(self, attempt: Any, route: Route, provider: PaymentProvider
                        ) -> Instrument:
        async with self._db.read() as conn:
            order = (await conn.execute(sa.select(orders)
                                        .where(orders.c.id == attempt.order_id))).one()
        async with self._guard.guard(route.key):
            return await provider.create(self._issuance.request_for(order, route, attempt.id))

    async def _supersede_live(self, attempt: Any, route: Route, provider: PaymentProvider,
                              provider_ref: str | None) -> bool:
        """A live orphan instrument: cancel it where the provider allows, keep watching it.

        Superseded, never adopted as the order's live attempt even when nothing else serves
        it: its create's answer was lost, so its instructions never reached the customer, and
        a status read does not return them. Superseded still counts as payable
        (``payment_failed.PAYABLE``) until a read sees it closed; once cancelled, that read is
        made due now (not on the rail's schedule, hours away for a VA), so when nothing else is
        left to pay on, the merchant hears ``order.payment_failed`` from its close straight
        away, whether or not the provider notifies the cancel."""
        values: dict[str, Any] = {"provider_ref": provider_ref}
        try:
            async with self._guard.guard(route.key):
                await provider.cancel(attempt.id, provider_ref, route)
            reason = "live orphan from an unknown create; cancelled at provider"
            values["next_check_at"] = self._clock.now()
        except Refused:
            reason = "live orphan from an unknown create; provider cannot cancel it, watched"
        await self._set_state(attempt.id, AttemptState.SUPERSEDED, reason, **values)
        return "next_check_at" in values

    async def _settle(self, attempt: Any, status: ProviderStatus) -> None:
        now = self._clock.now()
        async with self._db.transaction() as conn:
            if status.status in REVERSALS:  # paid, then reversed: the payment and a case
                await apply_reversal(conn, attempt, status, kind="provider_status",
                                     details={"by": "unknown_outcome"}, now=now,
                                     quarantine=self._quarantine, rereads=self._schedule)
                return
            await apply_read_payments(conn, attempt, status, kind="provider_status",
                                      details={"raw_status": status.raw_status}, now=now,
                                      quarantine=self._quarantine, rereads=self._schedule)

    async def interrupted(self, attempt_id: str) -> bool:
        """A ``creating`` attempt whose caller died mid-call becomes ``unknown``; the caller
        (the verifier) resolves it now, so no outbox event is queued. False if it is no longer
        ``creating``."""
        now = self._clock.now()
        async with self._db.transaction() as conn:
            moved = await conn.execute(payment_attempts.update().where(
                payment_attempts.c.id == attempt_id,
                payment_attempts.c.state == AttemptState.CREATING.value,
            ).values(state=AttemptState.UNKNOWN.value, updated_at=now,
                     failure_reason="create interrupted mid-call; verifying"))
        return bool(moved.rowcount)

    async def _mark_unknown(self, attempt_id: str, reason: str) -> None:
        now = self._clock.now()
        async with self._db.transaction() as conn:
            await conn.execute(payment_attempts.update().where(
                payment_attempts.c.id == attempt_id,
                payment_attempts.c.state == AttemptState.CREATING.value,
            ).values(state=AttemptState.UNKNOWN.value, failure_reason=reason, updated_at=now))
            await add_unknown_event(conn, attempt_id, now=now)

    async def _set_state(self, attempt_id: str, state: AttemptState, reason: str,
                         **values: Any) -> None:
        now = self._clock.now()
        async with self._db.transaction() as conn:
            order = await lock_order_of(conn, attempt_id)
            moved = await conn.execute(payment_attempts.update().where(
                payment_attempts.c.id == attempt_id,
                payment_attempts.c.state == AttemptState.UNKNOWN.value,
            ).values(state=state.value, failure_reason=reason, updated_at=now, **values))
            if moved.rowcount and state in (AttemptState.FAILED, AttemptState.EXPIRED):
                await tell_if_nothing_left_to_pay(conn, order, attempt_id=attempt_id,
                                                  reason=reason, now=now)

