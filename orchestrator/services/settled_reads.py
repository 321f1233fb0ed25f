"""Paid attempts read again, for the refund or chargeback whose notification was lost.

Lunas hears of a reversal at the provider through its notification (``provider_webhooks``). If
that notification is lost (dropped, our endpoint down past the provider's retries), nothing else
reads a paid attempt again, and Lunas would say for ever that the money is with the merchant. So
an attempt paid on a rail whose payments a provider can take back (QRIS, e-wallet:
``REVERSIBLE_RAILS``) is read again after the gaps of the schedule's ``settled_reads``
(``VerificationSchedule.next_settled_read``: by default a day and a week after its payment),
each read an ``attempt.settled_read`` outbox job queued in the transaction before it: the
first in the payment's own (``settlement._mark_attempt_paid``), so no payment misses it.
Attempts paid before this was deployed are not read: only a payment queues the first read, and
no migration backfills them (a week of payments, all due at once, is a burst no schedule
chose; a person who wants them read can look them up at the provider).

=========================  ========================================================================
the provider says          what happens
=========================  ========================================================================
paid                       nothing: the next read is queued (none after the last gap); a
                           payment it lists that Lunas has not seen (a Xendit VA or QR paid
                           twice, the callback lost) is applied (``apply_read_payments``)
refunded, charged back     the reversal is recorded once and opens a review case with its
                           ``review_case.opened`` (``services.reversals``), in the transaction that
                           queues the next read; a repeat finds it recorded and opens nothing
anything else (pending,    nothing moves: no edge leaves ``paid``. Logged and counted
expired, failed, unknown)  (``contradicts``: LunasSettledReadContradicts files a ticket) for a
                           person to look at; the next read is queued
no answer (breaker open,   the same read again later, never failed (the relay would retry it into
429, pace busy, failed)    the outage and dead-letter it): after the breaker's retry time or the
                           429's pause, and at gaps doubling per try from ``retry_after_failure``
                           up to ``UNREADABLE_MAX_GAP``, since nothing about it is urgent
unreadable answer          the same, until ``UNREADABLE_GIVE_UP`` in a row: dead-lettered with the
                           reason, for a person (every dead letter is counted and alerted on)
=========================  ========================================================================

Once, never twice: the relay claims each job under a lease (``FOR UPDATE SKIP LOCKED``), so two
workers never run one read; each job's ``event_id`` is fixed per attempt, read and try
(``status_reads.settled_read_event_id``), so a handler run twice (delivery is at least once: a
worker killed between its commit and the relay's outcome write) never forks the chain. It may
then read once more, which records nothing new.

The pace. A read draws on the provider's shared status pace like every other, but takes only a
slot free now (``within=0``). The pacer has no priorities: callers reserve slots in turn. The
verifier, with a backlog (a recovery drain, a flash sale's pending orders), keeps the pace booked
up to its ``max_wait`` ahead, so these reads find no free slot, reserve nothing, and wait with
growing gaps (30 s, 1 min, ... 30 min) until the drain is over: they never take a slot from a
read of an order still waiting on its payment, and a drain delays them by its own length at
most, plus the gap they were waiting out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain import events
from orchestrator.domain.clock import Clock
from orchestrator.domain.order import AttemptState
from orchestrator.domain.verification import VerificationSchedule, unreadable_gap
from orchestrator.outbox.relay import OutboxEvent, PermanentFailure
from orchestrator.rails.base import NeutralStatus, ProviderStatus, Rail
from orchestrator.rails.errors import RailError, Throttled, Unreadable
from orchestrator.rails.ratelimit import PaceBusy
from orchestrator.rails.router import RouteUnavailable
from orchestrator.services.reversals import REVERSALS, apply_reversal
from orchestrator.services.settlement import apply_read_payments
from orchestrator.services.status_reads import (
    StatusReads,
    queue_settled_read,
    route_of,
    wait_to_retry,
)
from orchestrator.store.database import Database
from orchestrator.store.tables import payment_attempts
from orchestrator.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

UNREADABLE_GIVE_UP = 4
"""Unreadable answers in a row after which a paid attempt's read is dead-lettered for a person
(about 4 minutes of tries at the default 30 s ``retry_after_failure``): the adapter needs
fixing, and reading every 30 minutes for ever would only log warnings nobody acts on."""
_ONLY_A_FREE_SLOT = 0.0
"""The pace bound of these reads: a slot nobody has booked (see the module docstring)."""


@dataclass(frozen=True, kw_only=True)
class _Job:
    """One ``attempt.settled_read`` job, as ``status_reads.queue_settled_read`` wrote it."""

    attempt_id: str
    read: int
    """Which read of the attempt this is (1: the first after its payment)."""
    tries: int
    """Tries of this read that got no answer so far."""
    unreadable: int

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> _Job:
        return cls(attempt_id=str(payload["attempt_id"]), read=int(payload["read"]),
                   tries=int(payload.get("tries") or 0),
                   unreadable=int(payload.get("unreadable") or 0))


class SettledReads:
    def __init__(self, db: Database, reads: StatusReads, clock: Clock, *,
                 schedule: VerificationSchedule, quarantine: timedelta,
                 metrics: Metrics | None = None) -> None:
        self._db, self._reads, self._clock = db, reads, clock
        self._schedule, self._quarantine = schedule, quarantine
        self._counted = (metrics or Metrics()).settled_reads

    def handlers(self) -> dict[str, Any]:
        return {events.ATTEMPT_SETTLED_READ: self.on_settled_read}

    async def on_settled_read(self, event: OutboxEvent) -> None:
        job = _Job.of(event.payload)
        async with self._db.read() as conn:
            attempt = (await conn.execute(sa.select(payment_attempts).where(
                payment_attempts.c.id == job.attempt_id))).one_or_none()
        # Paid is final for an attempt; a read the schedule no longer has (the setting was
        # shortened, or emptied: never) is left alone, as the operator asked.
        if (attempt is None or attempt.state != AttemptState.PAID.value
                or self._schedule.next_settled_read(Rail(attempt.rail), reads_done=job.read - 1,
                                                    last=self._clock.now()) is None):
            return
        try:
            status = await self._reads.read(attempt, within=_ONLY_A_FREE_SLOT)
        except Unreadable as exc:
            in_a_row = job.unreadable + 1
            if in_a_row >= UNREADABLE_GIVE_UP:
                self._counted.labels(attempt.provider, "given_up").inc()
                await self._note(attempt, f"read {job.read} given up: unreadable {in_a_row} "
                                          f"times in a row: {exc.detail}")
                raise PermanentFailure(
                    f"status answer for paid attempt {attempt.id} unreadable {in_a_row} times "
                    f"in a row: {exc.detail}; look its payment up at {attempt.provider} for a "
                    "refund or chargeback, fix the adapter, then redeliver this job") from exc
            await self._again(replace(job, unreadable=in_a_row), attempt, exc, "unreadable")
            return
        except (RouteUnavailable, Throttled, PaceBusy, RailError) as exc:
            outcome = ("deferred" if isinstance(exc, RouteUnavailable)
                       else "throttled" if isinstance(exc, Throttled)
                       else "pace_busy" if isinstance(exc, PaceBusy) else "read_failed")
            await self._again(job, attempt, exc, outcome)
            return
        await self._answered(job, attempt, status)

    async def _answered(self, job: _Job, attempt: Any, status: ProviderStatus) -> None:
        """Apply what the provider said and queue the next read, in one transaction."""
        now = self._clock.now()
        said = status.raw_status or status.status.value
        async with self._db.transaction() as conn:
            if status.status in REVERSALS:
                case_id = await apply_reversal(
                    conn, attempt, status, kind="provider_status",
                    details={"by": "settled_read", "read": job.read}, now=now,
                    quarantine=self._quarantine)
                outcome = "reversal" if case_id else "reversal_known"
                note = f"{said}: review case {case_id}" if case_id else f"{said}: recorded"
            elif status.status is NeutralStatus.PAID:
                outcome, note = "no_change", f"{said}: no change"
                if len(status.payments) > 1:
                    # Each payment a read lists is evidence of its own: a second one on an
                    # instrument Xendit did not close, its callback lost, is found by this
                    # read only (the verifier reads a paid attempt no more), rule 4.
                    result = await apply_read_payments(
                        conn, attempt, status, kind="provider_status",
                        details={"raw_status": status.raw_status, "by": "settled_read",
                                 "read": job.read}, now=now, quarantine=self._quarantine)
                    if result.applied:
                        note = (f"{said}: {len(status.payments)} payments listed, one not "
                                f"seen before: {result.verdict}, order {result.order_state}")
            else:  # the provider contradicts a payment it confirmed: a person should know
                outcome, note = "contradicts", f"{said} for a paid attempt: nothing moved"
                log.warning("paid attempt %s read again: %s says %s; left paid", attempt.id,
                            attempt.provider, said,
                            extra={"attempt_id": attempt.id, "order_id": attempt.order_id})
            nxt = self._schedule.next_settled_read(Rail(attempt.rail), reads_done=job.read,
                                                   last=now)
            if nxt is not None:
                await queue_settled_read(conn, attempt.id, read=job.read + 1, due=nxt, now=now)
            await _note(conn, attempt.id, now, f"settled read {job.read}: {note}"
                        + (f"; next {nxt.isoformat()}" if nxt else "; the last"))
        self._counted.labels(attempt.provider, outcome).inc()
        if outcome == "reversal":
            log.warning("payment reversed at provider, found by a settled read (%s)", said,
                        extra={"attempt_id": attempt.id, "order_id": attempt.order_id})

    async def _again(self, job: _Job, attempt: Any, exc: Exception, outcome: str) -> None:
        """The same read later: no answer is not an answer, so nothing else changes."""
        now = self._clock.now()
        tries = job.tries + 1
        base = self._schedule.retry_after_failure
        wait = max(wait_to_retry(exc, base=base, tries=tries, now=now,
                                 retry_at=self._reads.retry_at(route_of(attempt).key)),
                   unreadable_gap(base, tries))
        async with self._db.transaction() as conn:
            await queue_settled_read(conn, attempt.id, read=job.read, due=now + wait, now=now,
                                     tries=tries, unreadable=job.unreadable)
            await _note(conn, attempt.id, now, f"settled read {job.read}: {outcome}, again in "
                                               f"{wait.total_seconds():.0f} s")
        self._counted.labels(attempt.provider, outcome).inc()

    async def _note(self, attempt: Any, note: str) -> None:
        async with self._db.transaction() as conn:
            await _note(conn, attempt.id, self._clock.now(), note)


async def _note(conn: AsyncConnection, attempt_id: str, now: datetime, note: str) -> None:
    """Say on the paid attempt what its latest read found (nothing else reads these columns of a
    paid attempt: the verifier's schedule is for live ones)."""
    await conn.execute(payment_attempts.update().where(
        payment_attempts.c.id == attempt_id,
        payment_attempts.c.state == AttemptState.PAID.value).values(
            last_checked_at=now, last_check=note[:200]))
