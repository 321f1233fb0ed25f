"""The verifier: reads the status of live gateway attempts on their schedule, defers what an open
breaker refuses, and releases a route's deferred reads the moment its breaker closes.

One worker loop (``run``):

0. ``forget_closed`` (each tick) — clear the schedule of attempts finished by another path.
1. ``release_recovered`` (each tick) — for every route some attempt is deferred on: breaker
   closed → every deferred read of the route is due now; half-open → only as many as the
   breaker admits trial calls, so the trials are real status reads; open → nothing.
2. claim due reads (``FOR UPDATE SKIP LOCKED``, moving ``next_check_at`` a claim lease ahead
   so a killed worker's claims come back by themselves) and read them with bounded concurrency,
   per provider, topping the claimed set up as reads finish. Each read waits for its
   provider's paced slot (``StatusReads``), so a released backlog drains at the configured rate
   and no faster, whatever the number of workers, and holds up no other provider's reads.
3. Each outcome is applied in its own transaction, conditional on the attempt's state:

   ======================  ===================================================================
   provider says           the attempt
   ======================  ===================================================================
   paid                    settled (evidence key shared with webhooks: never twice)
   pending, order open     next check on the rail's schedule
   pending, order past     expired, and its cancel requested (the order then expires once no
   its deadline            attempt is left unverified)
   expired / failed        expired / failed (only from a live state; never backwards)
   breaker open            deferred on the route
   429 (throttled)         tried again at its Retry-After (at least ``retry_after_failure``, at
                           most ``THROTTLE_PAUSE``'s bound); neutral for the breaker, and the
                           provider's reads pause until then in every worker (status_reads.py)
   unreadable answer       tried again with growing gaps (``retry_after_failure`` doubled per
   (unknown status, odd    unreadable read in a row, at most ``UNREADABLE_MAX_GAP``); neutral
   field type)             for the breaker; ``last_check`` says what could not be read. The
                           attempt stays live, so its order cannot expire unread: past its
                           deadline it waits in ``verifying`` and goes to a person when the
                           verification window runs out, as behind a provider that is down
   read failed             tried again after ``retry_after_failure``
   ======================  ===================================================================

An ``unknown`` attempt (a create whose outcome was lost) is resolved by ``GatewayJobs``, which
knows how to tell an orphan from nothing; the verifier only decides when. A ``creating`` attempt
older than any create may run (``in_flight``) was left by a process that died mid-call — a
capture, or a customer switching method on an open order, which no outbox event covers: it is
claimed when due, made ``unknown`` and resolved the same way (rule 3).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.domain import events
from orchestrator.domain.clock import Clock
from orchestrator.domain.order import AttemptState, OrderState
from orchestrator.domain.verification import VerificationSchedule, unreadable_gap
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import NeutralStatus, ProviderStatus, Rail
from orchestrator.rails.breaker import BreakerState
from orchestrator.rails.errors import RailError, Throttled, Unreadable
from orchestrator.rails.guard import BreakerGuard
from orchestrator.rails.router import RouteUnavailable
from orchestrator.services.expiry import PROVIDER_UNAVAILABLE, payment_pending_event_id
from orchestrator.services.gateway_jobs import GatewayJobs
from orchestrator.services.order_view import event_payload, pending_verification
from orchestrator.services.payment_failed import lock_order_of, tell_if_nothing_left_to_pay
from orchestrator.services.reversals import REVERSALS, apply_reversal
from orchestrator.services.settlement import apply_read_payments
from orchestrator.services.status_reads import (
    LIVE,
    ReadAbandoned,
    StatusReads,
    defer,
    route_of,
    throttle_pause,
)
from orchestrator.settings import VerificationSettings
from orchestrator.store.database import Database
from orchestrator.store.tables import orders, payment_attempts
from orchestrator.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_CLOSED = (AttemptState.PAID.value, AttemptState.EXPIRED.value, AttemptState.FAILED.value)
"""Attempts no status read can change. Not merely "not live": a ``creating`` attempt is about to
be, and keeps the schedule it was created with."""

_PAST_DEADLINE = (OrderState.VERIFYING.value, OrderState.EXPIRED.value,
                  OrderState.CANCELLED.value)
"""Order states in which a still-pending instrument should stop being payable."""


_UNREADABLE = "unreadable answer"
_IN_A_ROW = re.compile(r"^unreadable answer \((\d+) in a row\)")


def unreadable_in_a_row(last_check: str | None) -> int:
    """How many reads in a row before this one were unreadable, as ``last_check`` records."""
    found = _IN_A_ROW.match(last_check or "")
    return int(found.group(1)) if found else 0


_a = payment_attempts.c
# Built once, executed with parameters (see services/settlement.py for why).
_RENEW_CLAIM = payment_attempts.update().where(
    _a.id == sa.bindparam("b_id"), _a.next_check_at == sa.bindparam("b_claimed_until"),
    _a.deferred_on.is_(None), _a.state.in_(LIVE))
_MARK_CHECKED = payment_attempts.update().where(_a.id == sa.bindparam("b_id")).values(
    checks=_a.checks + 1)
"""Plus what the parameters SET (next_check_at, last_checked_at, last_check)."""


class _Claimed:
    """A claimed attempt row, with the claim's deadline (attribute access as on the row)."""

    def __init__(self, row: Any, claimed_until: datetime) -> None:
        self._row, self.claimed_until = row, claimed_until

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


_SCHEDULED_PROVIDERS = sa.text("""
WITH RECURSIVE p(provider) AS (
  SELECT min(provider) FROM payment_attempts
  WHERE next_check_at IS NOT NULL AND deferred_on IS NULL
  UNION ALL
  SELECT (SELECT min(a.provider) FROM payment_attempts a
          WHERE a.provider > p.provider AND a.next_check_at IS NOT NULL
            AND a.deferred_on IS NULL)
  FROM p WHERE p.provider IS NOT NULL
)
SELECT provider FROM p WHERE provider IS NOT NULL""")
"""The providers with an undeferred read scheduled, one probe of
``ix_payment_attempts_due_by_provider`` each (a loose index scan): a ``DISTINCT`` over the due
reads read a whole recovery backlog every tick."""


class Verifier:
    def __init__(self, db: Database, reads: StatusReads, guard: BreakerGuard,
                 jobs: GatewayJobs, clock: Clock, settings: VerificationSettings, *,
                 quarantine: timedelta, in_flight: timedelta,
                 metrics: Metrics | None = None) -> None:
        self._db, self._reads, self._guard, self._jobs = db, reads, guard, jobs
        self._metrics = metrics or Metrics()
        self._clock, self._settings, self._quarantine = clock, settings, quarantine
        self._in_flight = in_flight
        self._schedule: VerificationSchedule = settings.schedule

    async def run(self, stop: asyncio.Event) -> None:
        """Keep up to ``batch`` reads claimed and ``concurrency`` of them running per provider,
        topping up as they finish, so a released backlog flows at the pace without a pause
        between batches.

        Per provider, because each read waits for its own provider's paced slot: with one batch
        and one set of slots, a provider's backlog (back from an outage, its pace slow) held
        every claim and every slot waiting on that pace, and another provider's reads, due
        meanwhile and with a pace standing idle, waited for the whole drain (review,
        ``test_a_backlog_on_one_provider_never_holds_up_the_reads_of_another``)."""
        interval = self._settings.interval.total_seconds()
        gates: dict[str, asyncio.Semaphore] = {}
        running: set[asyncio.Task[None]] = set()
        busy: collections.Counter[str] = collections.Counter()  # claimed and unfinished
        # Our own claims still waiting for a paced slot are never claimed again by us (a new
        # claim would move next_check_at and make the waiting read give itself up).
        in_flight: dict[asyncio.Task[None], str] = {}
        last_housekeeping = 0.0
        scheduled_providers: list[str] = []  # looked up once a tick, not after every finished read
        loop = asyncio.get_running_loop()

        def finished(task: asyncio.Task[None], provider: str) -> None:
            running.discard(task)
            in_flight.pop(task, None)
            busy[provider] -= 1

        try:
            while not stop.is_set():
                claimed: list[Any] = []
                try:
                    if loop.time() - last_housekeeping >= interval:
                        last_housekeeping = loop.time()
                        await self.forget_closed()
                        await self.release_recovered()
                        scheduled_providers = await self._scheduled_providers()
                    claimed = await self._claim_per_provider(
                        scheduled_providers, busy, exclude=set(in_flight.values()))
                except Exception:  # the loop must outlive a database blip; the next tick retries
                    log.exception("verification pass failed")
                for attempt in claimed:
                    provider = str(attempt.provider)
                    gate = gates.setdefault(provider,
                                            asyncio.Semaphore(self._settings.concurrency))
                    task = asyncio.create_task(self._guarded(attempt, gate))
                    in_flight[task] = attempt.id
                    running.add(task)
                    busy[provider] += 1
                    task.add_done_callback(functools.partial(finished, provider=provider))
                waiter = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({waiter, *running} if claimed or running else {waiter},
                                       timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        finally:
            if running:  # claims not finished come back by themselves after the claim lease
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)

    async def _claim_per_provider(self, providers: list[str], busy: collections.Counter[str],
                                  exclude: set[str]) -> list[Any]:
        """Claim due reads of ``providers`` with room: up to ``batch`` unfinished each, topped
        up once more than a quarter of its batch is free."""
        batch = self._settings.batch
        claimed: list[Any] = []
        for provider in providers:
            room = batch - busy[provider]
            if room > batch // 4:
                claimed += await self._claim(room, provider, exclude=exclude)
        return claimed

    async def _scheduled_providers(self) -> list[str]:
        """The providers with a read scheduled (``_SCHEDULED_PROVIDERS``); each one's claim then
        takes what of it is due, an index probe when nothing is."""
        async with self._db.read() as conn:
            return list((await conn.execute(_SCHEDULED_PROVIDERS)).scalars().all())

    async def _guarded(self, attempt: Any, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                await self.check(attempt)
            except Exception:  # one attempt's trouble must not stop the others
                log.exception("verification of %s failed", attempt.id,
                              extra={"attempt_id": attempt.id,
                                     "order_id": getattr(attempt, "order_id", None)})

    # -- release --------------------------------------------------------------------------

    async def forget_closed(self) -> int:
        """Clear the schedule of attempts that left the live states by any path (webhook,
        expiry, cancel), so the due-index holds live attempts only and stays small."""
        a = payment_attempts.c
        async with self._db.transaction() as conn:
            moved = await conn.execute(payment_attempts.update().where(
                sa.or_(a.next_check_at.is_not(None), a.deferred_on.is_not(None)),
                a.state.in_(_CLOSED)).values(next_check_at=None, deferred_on=None))
        return int(moved.rowcount)

    async def release_recovered(self) -> int:
        """Make deferred reads due on every route whose breaker admits calls again."""
        a = payment_attempts.c
        async with self._db.read() as conn:
            routes = (await conn.execute(sa.select(a.deferred_on).where(
                a.deferred_on.is_not(None)).distinct())).scalars().all()
        released = 0
        now = self._clock.now()
        for route_key in routes:
            if not self._guard.settled(route_key):
                continue  # a breaker new here reads "closed" until it has synced: next tick
            state = self._guard.state(route_key)
            if state in (BreakerState.CLOSED, BreakerState.FORCED_CLOSED):
                limit = None
            elif state is BreakerState.HALF_OPEN:
                limit = max(1, self._guard.registry.get(route_key).config
                            .permitted_calls_in_half_open)
            else:
                continue
            chosen = sa.select(a.id).where(a.deferred_on == route_key).order_by(
                a.last_checked_at, a.id)
            if limit is not None:
                chosen = chosen.limit(limit)
            async with self._db.transaction() as conn:
                moved = await conn.execute(payment_attempts.update().where(
                    a.id.in_(chosen.scalar_subquery()), a.deferred_on == route_key,
                ).values(deferred_on=None, next_check_at=now))
            released += moved.rowcount
            if moved.rowcount:
                self._metrics.verification_released.labels(route_key).inc(moved.rowcount)
                log.info("released %d deferred status reads on %s (breaker %s)",
                         moved.rowcount, route_key, state.value)
        return released

    # -- checks ---------------------------------------------------------------------------

    async def _claim(self, limit: int, provider: str, exclude: set[str] | None = None
                     ) -> list[Any]:
        """``provider``'s due reads, each marked with ``claimed_until``:
        the ``next_check_at`` this claim wrote, which is how the read later knows the claim is
        still its own."""
        a = payment_attempts.c
        now = self._clock.now()
        until = now + self._settings.claim
        async with self._db.transaction() as conn:
            rows = (await conn.execute(
                sa.select(payment_attempts, orders.c.state.label("order_state"))
                .join(orders, orders.c.id == a.order_id)
                .where(a.provider == provider, a.next_check_at <= now, a.deferred_on.is_(None),
                       sa.or_(a.state.in_(LIVE), sa.and_(
                           a.state == AttemptState.CREATING.value,
                           a.created_at < now - self._in_flight)),
                       a.rail != Rail.MANUAL_TRANSFER.value,
                       *([a.id.not_in(sorted(exclude))] if exclude else []))
                .order_by(a.next_check_at).limit(limit)
                .with_for_update(of=payment_attempts, skip_locked=True)
            )).all()
            if rows:
                await conn.execute(payment_attempts.update().where(
                    a.id.in_([r.id for r in rows])).values(next_check_at=until))
        return [_Claimed(row, until) for row in rows]

    async def _still_mine(self, claimed: Any) -> bool:
        """Renew the claim once the read's paced slot has come; False if the claim ran out
        meanwhile and another worker took the read (it will make it: do not read twice)."""
        async with self._db.transaction() as conn:
            renewed = await conn.execute(_RENEW_CLAIM, {
                "b_id": claimed.id, "b_claimed_until": claimed.claimed_until,
                "next_check_at": self._clock.now() + self._settings.claim})
        return bool(renewed.rowcount)

    async def check(self, attempt: Any) -> None:
        route_key = route_of(attempt).key
        counted = self._metrics.verification_reads
        try:
            if attempt.state == AttemptState.CREATING.value:
                if not await self._jobs.interrupted(attempt.id):
                    return  # its create finished after all (claimed as it did)
                counted.labels(attempt.provider, "interrupted_create").inc()
            if attempt.state in (AttemptState.UNKNOWN.value, AttemptState.CREATING.value):
                read_now = await self._jobs.resolve_unknown(attempt)
                await self._record(attempt, "resolved the unknown create", reschedule=not read_now,
                                   retry_in=timedelta(0) if read_now else None)
                counted.labels(attempt.provider, "resolved").inc()
                return
            status = await self._reads.read(
                attempt, (lambda: self._still_mine(attempt))
                if isinstance(attempt, _Claimed) else None)
        except ReadAbandoned:
            counted.labels(attempt.provider, "abandoned").inc()
            return
        except RouteUnavailable:
            await self._defer(attempt, route_key)
            counted.labels(attempt.provider, "deferred").inc()
            return
        except Throttled as exc:
            wait = max(timedelta(seconds=throttle_pause(exc.retry_after)),
                       self._schedule.retry_after_failure)
            await self._record(attempt, f"throttled (429): next read in "
                               f"{wait.total_seconds():.0f} s", retry_in=wait)
            counted.labels(attempt.provider, "throttled").inc()
            return
        except Unreadable as exc:
            in_a_row = unreadable_in_a_row(attempt.last_check) + 1
            wait = unreadable_gap(self._schedule.retry_after_failure, in_a_row)
            await self._record(attempt, f"{_UNREADABLE} ({in_a_row} in a row): {exc.detail}",
                               retry_in=wait)
            counted.labels(attempt.provider, "unreadable").inc()
            log.warning("status answer for %s unreadable (%d in a row), next read in %.0f s: %s",
                        attempt.id, in_a_row, wait.total_seconds(), exc.detail,
                        extra={"attempt_id": attempt.id, "order_id": attempt.order_id})
            return
        except RailError as exc:
            await self._record(attempt, f"read failed: {type(exc).__name__}", retry=True)
            counted.labels(attempt.provider, "read_failed").inc()
            return
        await self._apply(attempt, status)
        outcome = "failed" if status.status is NeutralStatus.NOT_FOUND else status.status.value
        counted.labels(attempt.provider, outcome).inc()

    async def _defer(self, attempt: Any, route_key: str) -> None:
        """Park the read; if the order is past its deadline, tell the merchant honestly that the
        payment is waiting for the provider, with the expected next check."""
        now = self._clock.now()
        retry_at = self._reads.retry_at(route_key)
        async with self._db.transaction() as conn:
            # An order past its deadline may hear ``order.payment_pending``: lock it first (and
            # so before the attempt, as settlement does). Unlocked, the expiry sweep could move
            # it to ``needs_review`` and commit its event between this read and this commit, and
            # the merchant would hear "pending" after "needs review": one order's webhooks go
            # out in outbox order, which is commit order only under the order's lock (seams
            # review, test_seams_review.py). Locked whatever state the claim saw: an order
            # claimed while awaiting payment may have passed its deadline since, the sweep
            # moving it to ``verifying`` before this read was deferred (so not announcing it),
            # and the merchant would never hear it (CI run, test_verification_races.py).
            order = await lock_order_of(conn, attempt.id)
            newly = await defer(conn, attempt.id, route_key, now=now, retry_at=retry_at)
            if not newly or order is None or order.state != OrderState.VERIFYING.value:
                return
            await add_events(conn, [PendingEvent(
                event_type=events.ORDER_PAYMENT_PENDING, aggregate_id=order.id,
                merchant_id=order.merchant_id, event_id=payment_pending_event_id(order.id),
                payload={**event_payload(order), "verification": pending_verification(
                    PROVIDER_UNAVAILABLE, [route_key], max(retry_at or now, now))})], now=now)

    async def _apply(self, attempt: Any, status: ProviderStatus) -> None:
        now = self._clock.now()
        if status.status is NeutralStatus.PAID:
            async with self._db.transaction() as conn:
                result = await apply_read_payments(
                    conn, attempt, status, kind="provider_status",
                    details={"raw_status": status.raw_status, "by": "verification"},
                    now=now, quarantine=self._quarantine, rereads=self._schedule)
                await self._mark(conn, attempt.id, now, f"paid: {result.verdict}"
                                 if result.applied else "paid: already applied")
            return
        if status.status in REVERSALS:
            # Paid, then reversed, and Lunas never saw the payment: both are facts (rule 4).
            async with self._db.transaction() as conn:
                case_id = await apply_reversal(conn, attempt, status, kind="provider_status",
                                               details={"by": "verification"}, now=now,
                                               quarantine=self._quarantine, rereads=self._schedule)
                await self._mark(conn, attempt.id, now, f"{status.raw_status}: review case "
                                 f"{case_id}" if case_id else f"{status.raw_status}: recorded")
            return
        if status.status is NeutralStatus.PENDING:
            if attempt.order_state in _PAST_DEADLINE or attempt.expires_at <= now:
                await self._close(attempt, AttemptState.EXPIRED, "unpaid at the deadline",
                                  cancel=True)
            else:
                await self._record(attempt, f"pending: {status.raw_status}"[:200],
                                   reschedule=True)
            return
        if status.status is NeutralStatus.EXPIRED:
            await self._close(attempt, AttemptState.EXPIRED, "expired at provider")
        else:  # FAILED, NOT_FOUND: no money can move on it
            await self._close(attempt, AttemptState.FAILED, f"provider says {status.status}")

    async def _close(self, attempt: Any, state: AttemptState, reason: str, *,
                     cancel: bool = False) -> None:
        now = self._clock.now()
        async with self._db.transaction() as conn:
            order = await lock_order_of(conn, attempt.id)
            moved = await conn.execute(payment_attempts.update().where(
                payment_attempts.c.id == attempt.id,
                payment_attempts.c.state.in_((AttemptState.ACTIVE.value,
                                              AttemptState.SUPERSEDED.value)),
            ).values(state=state.value, failure_reason=reason, updated_at=now, closed_at=now,
                     next_check_at=None, checks=payment_attempts.c.checks + 1,
                     last_checked_at=now, last_check=reason))
            if moved.rowcount and cancel:
                await add_events(conn, [PendingEvent(
                    event_type=events.ATTEMPT_CANCEL_REQUESTED, aggregate_id=attempt.id,
                    merchant_id=None, payload={"attempt_id": attempt.id})], now=now)
            if moved.rowcount:
                await tell_if_nothing_left_to_pay(conn, order, attempt_id=attempt.id,
                                                  reason=reason, now=now)

    async def _record(self, attempt: Any, outcome: str, *, reschedule: bool = False,
                      retry: bool = False, retry_in: timedelta | None = None) -> None:
        now = self._clock.now()
        a = payment_attempts.c
        values: dict[str, Any] = {"checks": a.checks + 1, "last_checked_at": now,
                                  "last_check": outcome[:200]}
        if retry_in is not None:
            values["next_check_at"] = now + retry_in
        elif retry:
            values["next_check_at"] = now + self._schedule.retry_after_failure
        elif reschedule:
            nxt = self._schedule.next_check(Rail(attempt.rail), checks_done=attempt.checks + 1,
                                            last=now)
            # Never past the instrument's own deadline: the read that lets an order past its
            # deadline expire (or settle) must not wait for the next gap, hours away for a VA.
            if nxt is not None:
                nxt = min(nxt, max(now, attempt.expires_at))
            values["next_check_at"] = nxt
        async with self._db.transaction() as conn:
            await conn.execute(payment_attempts.update().where(
                a.id == attempt.id, a.state.in_(LIVE), a.deferred_on.is_(None)).values(**values))

    @staticmethod
    async def _mark(conn: Any, attempt_id: str, now: datetime, outcome: str) -> None:
        await conn.execute(_MARK_CHECKED, {"b_id": attempt_id, "next_check_at": None,
                                           "last_checked_at": now, "last_check": outcome[:200]})
