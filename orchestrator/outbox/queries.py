"""The relay's SQL, named and kept in one place: claim a batch, then record each event's outcome.

A claim is one statement that picks and flips rows together, so two workers can never both take
an event. A claimed row stays ``pending`` and carries a lease (``lease_owner``,
``lease_expires_at``); it becomes claimable again when the lease expires, which is how a killed
worker's events are picked up.

Every outcome write is *fenced*: it only touches the row if ``lease_owner`` and ``attempts`` still
match the claim that ran the handler. A worker whose lease expired and whose event was re-claimed
by another worker (which bumped ``attempts``) therefore changes nothing, even if the new owner is
the same worker id. Callers read ``rowcount`` to learn whether the write landed.

Statuses: ``pending`` (waiting or leased), ``done``, ``dead`` (dead letter, needs a person).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from orchestrator.store.tables import outbox

PENDING = "pending"
DONE = "done"
DEAD = "dead"

LAST_ERROR_MAX = 1000
"""Errors are summaries for a person, not dumps; the column holds 2000."""

CLAIMED_COLUMNS = (
    outbox.c.id,
    outbox.c.event_id,
    outbox.c.event_type,
    outbox.c.aggregate_id,
    outbox.c.merchant_id,
    outbox.c.payload,
    outbox.c.attempts,
    outbox.c.created_at,
    outbox.c.trace_context,
)


def claim_batch(
    dialect_name: str, *, worker_id: str, now: datetime, lease: timedelta, limit: int
) -> sa.Update:
    """Lease up to ``limit`` due events to ``worker_id`` and count the try; returns the rows.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets concurrent claimers pass each other's rows instead
    of queueing; the predicate sits in the locking subquery so a row another worker claimed and
    committed meanwhile is re-checked and dropped. SQLite has no row locks and serialises writers,
    so the same statement without the locking clause is already exclusive there.
    """
    claimable = (
        sa.select(outbox.c.id)
        .where(
            outbox.c.status == PENDING,
            outbox.c.available_at <= now,
            sa.or_(outbox.c.lease_expires_at.is_(None), outbox.c.lease_expires_at < now),
        )
        .order_by(outbox.c.id)
        .limit(limit)
    )
    if dialect_name != "sqlite":
        claimable = claimable.with_for_update(skip_locked=True)
    return (
        sa.update(outbox)
        .where(outbox.c.id.in_(claimable.scalar_subquery()))
        .values(
            lease_owner=worker_id,
            lease_expires_at=now + lease,
            attempts=outbox.c.attempts + 1,
        )
        .returning(*CLAIMED_COLUMNS)
    )


def _fenced(row_id: int, worker_id: str, attempts: int) -> sa.Update:
    return sa.update(outbox).where(
        outbox.c.id == row_id,
        outbox.c.status == PENDING,
        outbox.c.lease_owner == worker_id,
        outbox.c.attempts == attempts,
    )


def mark_done(row_id: int, *, worker_id: str, attempts: int, now: datetime) -> sa.Update:
    return _fenced(row_id, worker_id, attempts).values(
        status=DONE, processed_at=now, lease_owner=None, lease_expires_at=None
    )


def mark_retry(
    row_id: int, *, worker_id: str, attempts: int, available_at: datetime, error: str
) -> sa.Update:
    return _fenced(row_id, worker_id, attempts).values(
        available_at=available_at,
        lease_owner=None,
        lease_expires_at=None,
        last_error=truncate_error(error),
    )


def mark_dead(
    row_id: int, *, worker_id: str, attempts: int, now: datetime, error: str
) -> sa.Update:
    """Dead-letter the event; ``processed_at`` is when the relay gave up on it."""
    return _fenced(row_id, worker_id, attempts).values(
        status=DEAD,
        processed_at=now,
        lease_owner=None,
        lease_expires_at=None,
        last_error=truncate_error(error),
    )


def release(row_id: int, *, worker_id: str, attempts: int) -> sa.Update:
    """Hand back a claimed event that was never started, without spending one of its tries."""
    return _fenced(row_id, worker_id, attempts).values(
        lease_owner=None, lease_expires_at=None, attempts=outbox.c.attempts - 1
    )


def truncate_error(error: str) -> str:
    if len(error) <= LAST_ERROR_MAX:
        return error
    return error[: LAST_ERROR_MAX - 1] + "…"
