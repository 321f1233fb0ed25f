"""Outbox relay: claims due events under a lease, runs their handlers, and records each outcome.

Delivery is at least once: a handler may run again for the same event (a worker killed after the
handler's side effect but before its outcome write; a lease that expired). Handlers must therefore
be idempotent, and downstream consumers deduplicate by ``event_id``.

Slots: a relay runs up to ``concurrency`` handlers at once, each claim taking up to as many
events as slots are free, and claims again as soon as one of them finishes, so a slow handler
holds its own slot and no other; the idle poll only applies when nothing more was claimable.
Events whose handler calls a merchant's own endpoint (``per_merchant`` event types: the merchant
webhooks) run in that merchant's lane, at most ``merchant_concurrency`` at once, so an endpoint
that answers slowly or not at all holds that many slots and every other merchant and job keeps
the rest (``slots.py``; the claim passes over full lanes).

Order: merchants build state machines on their webhooks, so one order's are delivered one at a
time, in outbox order: a webhook is not claimed while an earlier one of its order to the same
merchant is due, in flight or waiting for its retry (``queries.held_back``, in the claim itself so
it holds across workers). A dead-lettered webhook holds nothing back: the order's later ones go,
rather than wait for a person for up to a day. Other events are not ordered.

Timing invariant: a worker never works on an event past its lease. Every handler call is bounded by
``handler_timeout`` (shorter than the lease) and may only *start* while it can still finish, with
the last tenth of the lease left for the outcome write; a claimed event that can no longer start
in time (or is claimed while the relay stops) is handed back untried. Outcome writes are shielded
from cancellation so a worker being stopped still records what its handlers did.

Stopping: ``stop`` ends claiming; handlers in flight finish (within their timeout) and their
outcomes are recorded before ``run`` returns. Cancelling ``run`` cancels them instead: what was
not recorded is claimed again once its lease expires.

Exception tree a handler may raise::

    Exception
     ├── PermanentFailure   retrying cannot help: dead-lettered at once
     └── anything else      a failed try: the RetryPolicy decides (retry later or dead letter)

A timeout counts as a failed try. So does an event type this worker has no handler for: an event
written by a newer version during a rolling deploy, or after a rollback, is retried on the usual
back-off, so a worker that knows it handles it later, and after the last try it is a dead letter
(alerted on, redeliverable), never recorded done unhandled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypedDict

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.domain.clock import Clock
from orchestrator.outbox import queries
from orchestrator.outbox.retry import DeadLetter, Retry, RetryPolicy
from orchestrator.outbox.slots import Slots
from orchestrator.settings import OutboxSettings
from orchestrator.telemetry import tracing
from orchestrator.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_LEASE_USABLE = 0.9
"""Handlers must be finished by this fraction of the lease; the rest is for the outcome write."""
_DB_BACKOFF_FIRST = 1.0
_DB_BACKOFF_MAX = 30.0
_DRAIN_TIMEOUT = 10.0
_WORKER_ID_MAX = 64  # outbox.lease_owner


class PermanentFailure(Exception):
    """Raised by a handler when no retry can succeed; the event is dead-lettered at once."""


@dataclass(frozen=True, kw_only=True)
class OutboxEvent:
    id: int
    event_id: str
    """Stable across retries: what consumers deduplicate on."""
    event_type: str
    aggregate_id: str | None
    merchant_id: str | None
    payload: dict[str, Any]
    attempts: int
    """Tries made including the current one (1 on the first run)."""
    created_at: datetime
    trace_context: dict[str, str] | None = None
    """The context of the span that wrote the event (W3C ``traceparent``); None if untraced."""
    due_at: datetime | None = field(default=None, compare=False)
    """When this try became due, as claimed (``available_at``): the same event whatever it is."""

    @classmethod
    def from_row(cls, row: Row[Any]) -> OutboxEvent:
        m = row._mapping
        return cls(
            id=m["id"],
            event_id=m["event_id"],
            event_type=m["event_type"],
            aggregate_id=m["aggregate_id"],
            merchant_id=m["merchant_id"],
            payload=m["payload"],
            attempts=m["attempts"],
            created_at=m["created_at"],
            trace_context=m.get("trace_context"),
            due_at=m.get("available_at"),
        )


Handler = Callable[[OutboxEvent], Awaitable[None]]


@dataclass(frozen=True)
class _Succeeded:
    """The handler returned."""


@dataclass(frozen=True, kw_only=True)
class _Failed:
    error: str
    permanent: bool
    kind: str
    """The error's type alone: what a trace may carry (messages can hold SQL parameters)."""


_Outcome = _Succeeded | _Failed


class _OrderLane(TypedDict):
    """Which of an order's later webhooks an outcome holds back or releases."""

    order_id: str
    merchant_id: str
    webhook_types: Collection[str]


class Relay:
    """One worker's relay loop. Run any number of them, in any number of processes."""

    def __init__(
        self,
        engine: AsyncEngine,
        handlers: Mapping[str, Handler],
        settings: OutboxSettings,
        worker_id: str,
        clock: Clock,
        *,
        retry: RetryPolicy | None = None,
        handler_timeout: timedelta | None = None,
        per_merchant: Collection[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        """``per_merchant``: the event types whose handler calls the merchant's own endpoint;
        each merchant's run at most ``settings.merchant_concurrency`` at once here."""
        if not 0 < len(worker_id) <= _WORKER_ID_MAX:
            raise ValueError(f"worker_id must be 1..{_WORKER_ID_MAX} characters")
        if min(settings.concurrency, settings.merchant_concurrency, settings.batch_size) < 1:
            raise ValueError("outbox concurrency (also per merchant) and batch size must be >= 1")
        lease_s = settings.lease.total_seconds()
        timeout = handler_timeout or settings.handler_timeout
        if not 0 < timeout.total_seconds() < lease_s * _LEASE_USABLE:
            raise ValueError("handler_timeout must be positive and well inside the lease")
        self._engine = engine
        self._handlers = dict(handlers)
        self._settings = settings
        self._worker_id = worker_id
        self._clock = clock
        self._retry = retry or RetryPolicy.from_settings(settings)
        self._handler_timeout_s = timeout.total_seconds()
        self._latest_start_s = lease_s * _LEASE_USABLE - self._handler_timeout_s
        self._per_merchant = frozenset(per_merchant)
        self._per_lane = min(settings.merchant_concurrency, settings.concurrency)
        self._metrics = metrics
        self._writes: set[asyncio.Task[None]] = set()
        self._stop: asyncio.Event | None = None
        self._walk_after: queries.QueueKey | None = None
        """Where this relay's next claim walks the merchant queues from (``claim_batch``): each
        claim goes on where the last one stopped, so every queue is seen once a lap."""
        self._walk_wide = True
        """Whether the next claim walks a wide window: the last one found less than it asked."""

    @property
    def worker_id(self) -> str:
        return self._worker_id

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set, claiming whenever a slot is free; then let the handlers in
        flight finish and record them. Database errors are logged and waited out."""
        self._stop = stop
        slots = Slots(self._settings.concurrency, self._per_lane)
        try:
            async with asyncio.TaskGroup() as handlers:
                await self._claim_while_running(stop, slots, handlers)
        finally:
            await self._drain_writes()

    async def _claim_while_running(
        self, stop: asyncio.Event, slots: Slots, handlers: asyncio.TaskGroup
    ) -> None:
        failures = 0
        while not stop.is_set():
            mark = slots.openings
            if not slots.free:
                await _until_first(stop.wait(), slots.opened_since(mark))
                continue
            try:
                started, more = await self._claim_into(slots, handlers)
            except Exception:
                # A database outage must not kill the worker: back off and try again.
                failures += 1
                delay = min(_DB_BACKOFF_FIRST * 2 ** (failures - 1), _DB_BACKOFF_MAX)
                log.exception(
                    "outbox relay claim failed; backing off",
                    extra={"worker_id": self._worker_id, "backoff_s": delay},
                )
                await _sleep_unless(stop, delay)
                continue
            failures = 0
            if not (started and more):
                # Nothing due, or only events of full lanes, or the claim took every event it
                # could (claiming again at once would only find nothing): poll, or claim again
                # as soon as a full lane gives a slot back.
                await _until_first(stop.wait(), slots.opened_since(mark), asyncio.sleep(
                    self._settings.poll_interval.total_seconds()))

    async def run_once(self) -> int:
        """Claim what this relay's slots take at once (up to the batch size), handle those and
        record their outcomes; returns how many were handled. ``run`` without the overlap: for
        tests and tools that drain step by step."""
        slots = Slots(self._settings.concurrency, self._per_lane)
        async with asyncio.TaskGroup() as handlers:
            started, _ = await self._claim_into(slots, handlers)
        return sum(task.result() for task in started)

    async def _claim_into(
        self, slots: Slots, handlers: asyncio.TaskGroup
    ) -> tuple[list[asyncio.Task[bool]], bool]:
        """Claim events for the free slots and start a handler on each; returns those tasks, and
        whether more may be claimable at once.

        A claim takes every claimable event of its window (the first due ones and the heads of
        the merchant queues its walk visits, full lanes and held-back webhooks left out), except
        that a lane gets only the room it has. So only a claim that filled its limit, or gave
        some lane all its room (and may have passed over that lane's others, hiding events
        behind them), may have left claimable events in its window; after any other, claiming
        again at once finds nothing there, and costs a statement. Queues beyond its walk wait
        for the next claims, a poll apart, each walking a wide window from where this one
        stopped (``queries.WALK_WIDE``): a lap of queues / WALK_WIDE polls, bounded, rather
        than back-to-back claims over queues with nothing due.
        """
        start_by = asyncio.get_running_loop().time() + self._latest_start_s
        limit, held = min(slots.free, self._settings.batch_size), slots.held()
        events = await self._claim(limit, held)
        started, lanes = [], Counter[str]()
        for event in events:
            lane = self._lane(event)
            slots.take(lane)
            self._gauge(slots)
            started.append(handlers.create_task(self._in_slot(event, lane, slots, start_by)))
            if lane is not None:
                lanes[lane] += 1
        filled = any(n >= slots.per_lane - held.get(lane, 0) for lane, n in lanes.items())
        return started, len(events) >= limit or filled

    def _lane(self, event: OutboxEvent) -> str | None:
        return event.merchant_id if event.event_type in self._per_merchant else None

    async def _claim(self, limit: int, held: dict[str, int]) -> list[OutboxEvent]:
        claim = queries.claim_batch(
            self._engine.dialect.name,
            worker_id=self._worker_id,
            now=self._clock.now(),
            lease=self._settings.lease,
            limit=limit,
            cap=queries.MerchantCap(event_types=self._per_merchant,
                                    per_merchant=self._per_lane, held=held),
            after=self._walk_after,
            wide=self._walk_wide,
        )
        async with self._engine.begin() as conn:
            claimed = await claim.taking(conn)
        self._walk_after, self._walk_wide = claimed.after, len(claimed.rows) < limit
        return sorted((OutboxEvent.from_row(r) for r in claimed.rows), key=lambda e: e.id)

    async def _in_slot(
        self, event: OutboxEvent, lane: str | None, slots: Slots, start_by: float
    ) -> bool:
        """Handle ``event`` and record its outcome, then free its slot. Never raises an
        ``Exception``: a failed outcome write is logged, and the lease brings the event back."""
        try:
            return await self._process(event, start_by)
        except Exception as exc:
            log.error(
                "outbox outcome not recorded: %s", _describe(exc), extra=self._log_fields(event)
            )
            return False
        finally:
            slots.give(lane)
            self._gauge(slots)

    def _gauge(self, slots: Slots) -> None:
        if self._metrics is not None:
            self._metrics.outbox_in_flight.set(slots.in_flight)
            self._metrics.outbox_merchants_at_cap.set(len(slots.full_lanes()))

    async def _process(self, event: OutboxEvent, start_by: float) -> bool:
        stopping = self._stop is not None and self._stop.is_set()
        if stopping or asyncio.get_running_loop().time() > start_by:
            await self._shielded(self._write(event, queries.release(
                event.id, worker_id=self._worker_id, attempts=event.attempts
            )))
            return False
        with tracing.handling(event.event_type, event.trace_context,
                              _span_attributes(event)) as span:
            outcome = await self._attempt(event)
            if isinstance(outcome, _Failed):
                tracing.fail(span, outcome.kind)
            await self._shielded(self._record(event, outcome))
        return True

    async def _attempt(self, event: OutboxEvent) -> _Outcome:
        handler = self._handlers.get(event.event_type)
        if handler is None:
            return _Failed(error=f"no handler for {event.event_type} in this worker",
                           permanent=False, kind="NoHandler")
        deadline = asyncio.timeout(self._handler_timeout_s)
        try:
            async with deadline:
                await handler(event)
        except PermanentFailure as exc:
            return _Failed(error=_describe(exc), permanent=True, kind=type(exc).__name__)
        except Exception as exc:
            if deadline.expired():
                return _Failed(error=f"handler timed out after {self._handler_timeout_s:g}s",
                               permanent=False, kind="TimeoutError")
            return _Failed(error=_describe(exc), permanent=False, kind=type(exc).__name__)
        return _Succeeded()

    async def _record(self, event: OutboxEvent, outcome: _Outcome) -> None:
        now = self._clock.now()
        fields = self._log_fields(event)
        owner, tries = self._worker_id, event.attempts
        if isinstance(outcome, _Succeeded):
            await self._write(event, queries.mark_done(
                event.id, worker_id=owner, attempts=tries, now=now
            ), *self._release_behind(event, now))
            return
        decision = DeadLetter() if outcome.permanent else self._retry.decide(tries, now)
        fields["error"] = outcome.error
        if isinstance(decision, Retry):
            fields["retry_at"] = decision.at.isoformat()
            log.warning("outbox event failed; will retry", extra=fields)
            lane = self._order_lane(event)
            await self._write(event, queries.mark_retry(
                event.id, worker_id=owner, attempts=tries, available_at=decision.at,
                error=outcome.error, due_when_claimed=event.due_at if lane else None,
            ), *self._hold_behind(event, decision.at))
        else:
            log.error("outbox event dead-lettered", extra=fields)
            await self._write(event, queries.mark_dead(
                event.id, worker_id=owner, attempts=tries, now=now, error=outcome.error
            ), *self._release_behind(event, now))

    def _hold_behind(self, event: OutboxEvent, until: datetime) -> list[queries.OutcomeWrite]:
        """A webhook to be retried at ``until``: the order's later webhooks wait for it
        (``queries.hold_behind``); nothing for an event that is not an order's webhook."""
        lane = self._order_lane(event)
        return [] if lane is None else [queries.hold_behind(event.id, **lane, until=until)]

    def _release_behind(self, event: OutboxEvent, now: datetime) -> list[queries.OutcomeWrite]:
        """A webhook done or dead-lettered: the order's later webhooks may go from ``now``
        (``queries.release_behind``); nothing for an event that is not an order's webhook."""
        lane = self._order_lane(event)
        return [] if lane is None else [queries.release_behind(event.id, **lane, now=now)]

    def _order_lane(self, event: OutboxEvent) -> _OrderLane | None:
        """The order, merchant and webhook types of an order's webhook, whose outcome orders
        its later ones; None for any other event."""
        if (event.event_type not in self._per_merchant or event.merchant_id is None
                or event.aggregate_id is None):
            return None
        return _OrderLane(order_id=event.aggregate_id, merchant_id=event.merchant_id,
                          webhook_types=self._per_merchant)

    async def _write(self, event: OutboxEvent, write: queries.OutcomeWrite,
                     *then: queries.OutcomeWrite) -> None:
        """The outcome, fenced by the lease; ``then`` in the same transaction, only if it was
        ours to write."""
        async with self._engine.begin() as conn:
            written = await write.run(conn)
            if written:
                for more in then:
                    await more.run(conn)
        if written == 0:
            # Our lease expired and someone else owns the event now: their result stands.
            log.warning("outbox lease lost; outcome discarded", extra=self._log_fields(event))

    async def _shielded(self, write: Coroutine[Any, Any, None]) -> None:
        """Run an outcome write to completion even if the caller is cancelled meanwhile."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._forget_write)
        await asyncio.shield(task)

    def _forget_write(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Also reported by the awaiting caller unless it was cancelled; the lease covers it.
            log.debug("outbox outcome write failed", exc_info=task.exception())

    async def _drain_writes(self) -> None:
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=_DRAIN_TIMEOUT)

    def _log_fields(self, event: OutboxEvent) -> dict[str, Any]:
        return {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "attempts": event.attempts,
            "worker_id": self._worker_id,
            **_aggregate_field(event),
        }


def _aggregate_field(event: OutboxEvent) -> dict[str, str]:
    """The event's subject under the name logs search by (ids carry their kind as a prefix)."""
    subject = event.aggregate_id or ""
    if subject.startswith("ord_"):
        return {"order_id": subject}
    if subject.startswith("att_"):
        return {"attempt_id": subject}
    return {"aggregate_id": subject} if subject else {}


def _span_attributes(event: OutboxEvent) -> dict[str, str | int]:
    return {"lunas.event_type": event.event_type, "lunas.event_id": event.event_id,
            "lunas.attempts": event.attempts,
            **{f"lunas.{k}": v for k, v in _aggregate_field(event).items()}}


def _describe(exc: BaseException) -> str:
    """A one-line summary for ``last_error`` and logs; handlers keep secrets out of messages."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _until_first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Return when the first of ``waits`` does; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
