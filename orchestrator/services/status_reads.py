"""Every read of a provider's status for one of our attempts goes through here.

Two rules meet in one place so no caller can forget either:

- **Paced.** Status requests to a provider draw from its shared token bucket (``RequestPacer``)
  *before* the breaker admits the call, so waiting for a slot is never timed as a slow call.
  A caller that must not wait long (a relay handler confirming a payment notification, whose
  relay slot other jobs need) passes ``within``: no slot that soon raises ``PaceBusy`` with
  nothing reserved and nothing sent, and the caller hands the read to the verifier.
- **Deferred, not failed.** When the route's breaker refuses, the caller gets ``RouteUnavailable``
  and records the attempt as deferred on that route (``defer``); the verifier makes every deferred
  attempt of a route due at once when its breaker closes again.

Two answers are neither success nor failure for the breaker (``permit.neutral()``):

- **Throttled is not down.** A 429 says the provider is up and wants fewer requests: it must not
  fail a healthy route over for checkouts. Every process stops reading that provider until its
  ``Retry-After`` (``RequestPacer.pause``, bounded by ``THROTTLE_PAUSE``), and the caller gets
  ``Throttled`` with the seconds to wait, to reschedule the attempt's read. A read that finds
  the provider paused is not sent, and raises the same.
- **Unreadable is not down either.** An answer Lunas cannot read (``Unreadable``: an unknown
  status such as Midtrans ``chargeback``, a field of an unexpected type, an adapter bug) says the
  provider answered and our reading failed: one odd transaction must not keep a route's breaker
  failing. The verifier retries it with growing gaps (``services/verification.py``).

The verifier reads live attempts only. An attempt Lunas closed (expired, failed) is read by an
``attempt.verify`` outbox job (``queue_closed_read``; ``provider_webhooks.on_attempt_verify``):
asked for by a delivery nobody can verify, read once after an expired instrument's cancel, or
watched through the code quarantine because its provider would not cancel the instrument
(``gateway_jobs.on_cancel_requested``). A paid attempt is read a few more times by
``attempt.settled_read`` jobs (``queue_settled_read``; ``services/settled_reads.py``), for the
reversal whose notification was lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.order import AttemptState
from orchestrator.domain.verification import unreadable_gap
from orchestrator.outbox.writer import PendingEvent, add_events
from orchestrator.rails.base import (
    MoreRequestsNeeded,
    PaymentProvider,
    ProviderStatus,
    Rail,
    Route,
)
from orchestrator.rails.errors import RailError, Throttled, Unreadable
from orchestrator.rails.guard import BreakerGuard
from orchestrator.rails.ratelimit import PaceBusy, RequestPacer
from orchestrator.rails.router import RouteUnavailable
from orchestrator.store.tables import payment_attempts

LIVE = (AttemptState.ACTIVE.value, AttemptState.SUPERSEDED.value, AttemptState.UNKNOWN.value)
"""Attempts whose money may still move, so whose status is worth reading."""


THROTTLE_PAUSE = (timedelta(seconds=1), timedelta(minutes=5))
"""Bounds of a provider-wide pause after a 429: a missing or tiny ``Retry-After`` still stops the
stampede for a second; an absurd one (or Xendit's reset of a long window) pauses 5 minutes at
most, after which one read finds out again."""


def throttle_pause(retry_after: float | None) -> float:
    """Seconds every process stops reading a provider that answered 429 with ``retry_after``."""
    low, high = (b.total_seconds() for b in THROTTLE_PAUSE)
    return min(max(retry_after or 0.0, low), high)


def wait_to_retry(exc: Exception, *, base: timedelta, tries: int, retry_at: datetime | None,
                  now: datetime) -> timedelta:
    """How long until a provider call that failed with ``exc`` (the ``tries``-th failure in a
    row) is worth making again: until the breaker's ``retry_at``, after a 429's pause, when
    the provider's pace has the slot it would have had (``PaceBusy``), else with gaps doubling
    from ``base`` up to ``UNREADABLE_MAX_GAP``; never less than ``base``."""
    if isinstance(exc, RouteUnavailable):
        return max(base, retry_at - now) if retry_at is not None else base
    if isinstance(exc, Throttled):
        return max(timedelta(seconds=throttle_pause(exc.retry_after)), base)
    if isinstance(exc, PaceBusy):  # the provider is fine, its pace booked: no doubling
        return max(timedelta(seconds=exc.wait), base)
    return unreadable_gap(base, tries)


class ReadAbandoned(Exception):
    """The read was no longer wanted when its slot came (its claim passed to another worker)."""


CLOSED_UNPAID = (AttemptState.EXPIRED.value, AttemptState.FAILED.value)
"""Attempts Lunas closed unpaid: the verifier reads them no more, yet money may still land on
them (rule 4)."""
READ_QUEUED = "status read queued"
"""How a closed attempt's ``last_check`` starts while an ``attempt.verify`` read of it is queued
(its ``last_checked_at`` then says when it is due); deliveries that ask meanwhile count on it."""


async def queue_closed_read(conn: AsyncConnection, attempt_id: str, *, due: datetime,
                            now: datetime, why: str, delivery_id: object = None,
                            watch_until: datetime | None = None, watch_reads: int = 0,
                            unreadable: int = 0, event_id: str | None = None) -> None:
    """Queue one ``attempt.verify`` read of a closed attempt at ``due``, and say so on the
    attempt. ``watch_until``: while before it, a pending answer queues the next read on the
    rail's schedule (an instrument the provider would not cancel); ``unreadable``: answers in a
    row that could not be read, for the next gap; ``event_id``: a read that happens once."""
    await conn.execute(payment_attempts.update().where(payment_attempts.c.id == attempt_id)
                       .values(last_checked_at=due, last_check=f"{READ_QUEUED}: {why}"[:200]))
    await add_events(conn, [PendingEvent(
        event_type=events.ATTEMPT_VERIFY, aggregate_id=attempt_id, merchant_id=None,
        payload={"attempt_id": attempt_id, "delivery_id": delivery_id,
                 "watch_until": watch_until.isoformat() if watch_until else None,
                 "watch_reads": watch_reads, "unreadable": unreadable},
        available_at=due, event_id=event_id)], now=now)


def settled_read_event_id(attempt_id: str, read: int, tries: int) -> str:
    """Fixed per attempt, read and try: the payment's first read queued twice, or a handler run
    twice (the relay delivers at least once), writes one id, and the outbox keeps one job, so
    a chain of reads never forks."""
    return f"sr{read}.{tries}_{attempt_id.removeprefix('att_')}"[:40]


def settled_read(attempt_id: str, *, read: int, due: datetime, tries: int = 0,
                 unreadable: int = 0) -> PendingEvent:
    """The ``read``-th read of a paid attempt (``services/settled_reads.py``), due at ``due``;
    ``tries``: reads of it that got no answer so far; ``unreadable``: answers in a row that
    could not be read."""
    return PendingEvent(
        event_type=events.ATTEMPT_SETTLED_READ, aggregate_id=attempt_id, merchant_id=None,
        payload={"attempt_id": attempt_id, "read": read, "tries": tries,
                 "unreadable": unreadable},
        available_at=due, event_id=settled_read_event_id(attempt_id, read, tries))


async def queue_settled_read(conn: AsyncConnection, attempt_id: str, *, read: int,
                             due: datetime, now: datetime, tries: int = 0,
                             unreadable: int = 0) -> None:
    """Queue ``settled_read`` in the caller's transaction."""
    await add_events(conn, [settled_read(attempt_id, read=read, due=due, tries=tries,
                                         unreadable=unreadable)], now=now)


def paid_evidence_key(provider: str, attempt_id: str, nth: int = 1) -> str:
    """The ``nth`` payment on an attempt: a webhook and a status read of the same payment share
    this key, so they never count as two payments (rule 2). An instrument takes one payment
    (a Midtrans order_id, a closed single-use Xendit VA, a dynamic QR, a one-time charge), so
    nearly always ``nth`` is 1, its key unchanged. A Xendit VA paid twice all the same is two
    payments: the callback's ``payment_id`` has no counterpart in the Transactions API a read
    lists them from, so a callback pays as the first and, if that was recorded, asks for a read
    that lists them all (``provider_webhooks._settle``), whose payments recorded already are
    told by amount (``settlement._keys_of``)."""
    base = f"{provider}:status:{attempt_id}:paid"
    return base if nth == 1 else f"{base}:{nth}"


def route_of(attempt: Any) -> Route:
    return Route(rail=Rail(attempt.rail), provider=attempt.provider,
                 channel=attempt.channel or "")


class StatusReads:
    def __init__(self, providers: Mapping[str, PaymentProvider], guard: BreakerGuard,
                 pacer: RequestPacer) -> None:
        self._providers, self._guard, self._pacer = providers, guard, pacer

    def retry_at(self, route_key: str) -> datetime | None:
        return self._guard.retry_at(route_key)

    async def read(self, attempt: Any,
                   still_wanted: Callable[[], Awaitable[bool]] | None = None, *,
                   within: float | None = None) -> ProviderStatus:
        """The provider's word on ``attempt``; ``RouteUnavailable`` when its breaker refuses,
        a ``RailError`` when the read itself failed, ``ReadAbandoned`` when ``still_wanted``
        (asked once the paced slot is ours, since the wait may be long) says no, ``PaceBusy``
        when ``within`` seconds bring no slot of the provider's pace (nothing was sent)."""
        route = route_of(attempt)
        self._refuse_if_open(route)
        provider = self._providers[attempt.provider]
        allowed = provider.status_requests(attempt.provider_ref, route)
        while True:
            await self._not_paused(attempt.provider)
            if not await self._pacer.acquire(attempt.provider, allowed,
                                             before_send=still_wanted, within=within):
                raise ReadAbandoned(attempt.id)
            await self._not_paused(attempt.provider)  # another read may have been told 429
            try:
                return await self._send(provider, attempt, route, allowed)
            except MoreRequestsNeeded as more:
                if more.requests <= allowed:  # an adapter asking for what it had: a bug
                    raise Unreadable(f"asked for {more.requests} requests with {allowed}",
                                     provider=attempt.provider, operation="status") from more
                # The first read's slots are spent; the read is made again in full, paced
                # (a PaceBusy now comes after one request was sent: rare, and harmless).
                # ``still_wanted`` said yes once (a verifier's claim renewed then holds), and
                # asked again it would find its own renewal and say no.
                allowed, still_wanted = more.requests, None
                self._refuse_if_open(route)  # the neutral first pass gave back a trial slot

    def _refuse_if_open(self, route: Route) -> None:
        """Spend no paced slot on a call that cannot go: in half-open, every read beyond the
        round's trials would otherwise take a slot of the provider's shared pace and then be
        refused, delaying the reads that can go (seams review)."""
        if self._guard.refuses_now(route.key):
            raise RouteUnavailable(route.key)

    async def _send(self, provider: PaymentProvider, attempt: Any, route: Route,
                    allowed: int) -> ProviderStatus:
        async with self._guard.guard(route.key) as call:
            try:
                return await provider.status(
                    attempt.id, attempt.provider_ref, route, requests_allowed=allowed,
                    payment_known=attempt.state == AttemptState.PAID.value,
                    expires_at=attempt.expires_at)
            except MoreRequestsNeeded:
                call.neutral()  # the provider answered: it is not failing
                raise
            except Throttled as exc:
                call.neutral()  # the provider is up: it wants fewer requests, not a failover
                pause = throttle_pause(exc.retry_after)
                await self._pacer.pause(attempt.provider, pause)
                exc.retry_after = pause
                raise
            except RailError:
                raise
            except Exception as exc:  # an adapter that could not read the answer
                raise Unreadable(f"{type(exc).__name__}: {exc}", provider=attempt.provider,
                                 operation="status") from exc

    async def _not_paused(self, provider: str) -> None:
        left = await self._pacer.paused_for(provider)
        if left > 0:
            raise Throttled(f"reads paused {left:.0f} s after a 429", provider=provider,
                            operation="status", retry_after=left)


async def defer(conn: AsyncConnection, attempt_id: str, route_key: str, *, now: datetime,
                retry_at: datetime | None) -> bool:
    """Park a live attempt's verification until ``route_key`` recovers. ``retry_at`` (when the
    breaker next lets a trial through, if known) is kept as the expected next check, for people;
    the verifier ignores it and releases on the breaker's state. False if the attempt is no
    longer live or was deferred already."""
    moved = await conn.execute(payment_attempts.update().where(
        payment_attempts.c.id == attempt_id, payment_attempts.c.state.in_(LIVE),
        payment_attempts.c.deferred_on.is_(None),
    ).values(deferred_on=route_key, next_check_at=retry_at or now, last_checked_at=now,
             last_check=f"deferred: {route_key} unavailable"))
    return bool(moved.rowcount)
