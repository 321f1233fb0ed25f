"""The relay's SQL, named and kept in one place: claim a batch, then record each event's outcome.

A claim is one statement that picks and flips rows together, so two workers can never both take
an event. A claimed row stays ``pending`` and carries a lease (``lease_owner``,
``lease_expires_at``); it becomes claimable again when the lease expires, which is how a killed
worker's events are picked up. A claim may be capped per merchant (``MerchantCap``): it then
passes over the events of merchants whose lane is full, so they wait unleased (claimable by any
worker with room) instead of holding a slot; on PostgreSQL it reads the first due events and a
window of the merchants' queues (``ix_outbox_merchant_queues``) rather than every due event, so
passing over a full lane costs an index probe, not a read of its backlog, and a claim costs the
same with 40,000 merchants' queues pending as with 400 (``claim_batch``). The same event types
(the merchant webhooks) are
delivered one at a time per order, in outbox order: the claim passes over a webhook while an
earlier one of the same order to the same merchant is still pending (``held_back``), whichever
worker holds it, so the rule holds across workers without any of them remembering anything.

Every outcome write is *fenced*: it only touches the row if ``lease_owner`` and ``attempts`` still
match the claim that ran the handler. A worker whose lease expired and whose event was re-claimed
by another worker (which bumped ``attempts``) therefore changes nothing, even if the new owner is
the same worker id. Callers read ``rowcount`` to learn whether the write landed. An outcome write
is one statement built once plus its parameters (``OutcomeWrite``): the relay writes one per
event, and building a statement per call cost more CPU than running it.

Statuses: ``pending`` (waiting or leased), ``done``, ``dead`` (dead letter, needs a person).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.store.tables import outbox

PENDING = "pending"
DONE = "done"
DEAD = "dead"

LAST_ERROR_MAX = 1000
"""Errors are summaries for a person, not dumps; the column holds 2000."""

PENDING_INLINE: sa.ColumnElement[str] = sa.literal_column(f"'{PENDING}'")
"""In the SQL text, not a parameter: the claim is a prepared statement, and a generic plan can
only use a partial index (``WHERE status = 'pending'``) whose predicate it proves without the
parameters' values; without it, a generic plan reads and sorts every pending event."""


def unindexed(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """``column`` (never NULL) as an expression no index serves. An update of one order's
    queue must probe ``ix_outbox_order_queue``; given ``available_at > :now`` or
    ``merchant_id = :m`` as plain columns, the planner may take ``ix_outbox_pending`` or
    ``ix_outbox_merchant_queues`` instead when its statistics say few events are due later
    (a fresh backlog, not yet analysed): each delivery then read the merchant's whole backlog
    (bench/outbox.py: 125 µs at 1,200 pending, 550 µs at 6,000)."""
    return sa.func.coalesce(column, column)


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
    outbox.c.available_at,
)


@dataclass(frozen=True, kw_only=True)
class MerchantCap:
    """Events of ``event_types`` run in their merchant's lane, which holds at most
    ``per_merchant`` of the claiming relay's handler slots; other events, and ones naming no
    merchant, are not capped."""

    event_types: frozenset[str]
    per_merchant: int
    held: Mapping[str, int] = field(default_factory=dict)
    """Slots each merchant's lane holds in the claiming relay now."""


QueueKey = tuple[str, str]
"""A merchant's queue: its pending events of one type, as ``(merchant_id, event_type)``."""

WALK_PER_EVENT = 8
WALK_MIN = 64
"""A capped claim on PostgreSQL walks ``max(WALK_MIN, WALK_PER_EVENT * limit)`` merchant queues:
~7 µs each (bench/outbox.py), a few hundred µs for the relay's usual claim..."""
WALK_WIDE = 1024
"""...or this many (~7 ms) when the relay's previous claim found fewer events than it asked
for (``claim_batch``'s ``wide``): a relay with little to do spends more of a claim looking.
That is the incident this walk is for (one slow merchant with a backlog, many merchants'
endpoints down, the relay claiming once a poll), and in it a merchant whose due webhooks sit
behind the backlog waits a lap of queues / 1024 claims (40 at 40,000 queues), not / 128; up to
1,024 queues, such a claim sees every queue, as a walk of all did."""
SCAN_PER_EVENT = 4
SCAN_MIN = 64
"""...and reads the first ``max(SCAN_MIN, SCAN_PER_EVENT * limit)`` due events, the front of
``ix_outbox_pending``: enough to see past the events in flight. As many candidates go to the
locking claim, so a claim racing others' passes over what they locked and takes the next."""


@dataclass(frozen=True)
class Claimed:
    rows: list[sa.Row[Any]]
    after: QueueKey | None
    """Where the next claim's walk of the merchant queues starts (after this queue); None: at
    the first, this walk having reached the last."""


@dataclass(frozen=True)
class Claim:
    statement: sa.Update
    params: dict[str, Any]
    walk: tuple[QueueKey | None, int] | None = None
    """PostgreSQL capped claims: the queue the walk starts after, and how many it visits."""

    async def run(self, conn: AsyncConnection) -> list[sa.Row[Any]]:
        """Execute on ``conn``; the rows claimed."""
        return (await self.taking(conn)).rows

    async def taking(self, conn: AsyncConnection) -> Claimed:
        """Execute on ``conn``; the rows claimed, and where the next claim's walk starts.

        The walk's queues are read first, in a statement of their own: it is the one way to
        learn where the walk ended when the claim takes nothing (an UPDATE returns only the
        rows it changed), and a relay that did not learn it would walk the same queues again."""
        if self.walk is None:
            return Claimed(list((await conn.execute(self.statement, self.params)).all()), None)
        after, size = self.walk
        merchant, event_type = after or ("", "")
        queues = [(r[0], r[1]) for r in await conn.execute(_QUEUE_WALK, {
            "w_merchant": merchant, "w_event_type": event_type, "w_size": size})]
        rows = (await conn.execute(self.statement, {
            **self.params, "b_queue_merchants": [m for m, _ in queues],
            "b_queue_types": [t for _, t in queues]})).all()
        return Claimed(list(rows), queues[-1] if len(queues) >= size else None)


def claim_batch(
    dialect_name: str,
    *,
    worker_id: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    cap: MerchantCap | None = None,
    after: QueueKey | None = None,
    wide: bool = False,
) -> Claim:
    """Lease up to ``limit`` due events to ``worker_id``, those due longest first, and count the
    try; returns the rows.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets concurrent claimers pass each other's rows instead
    of queueing; the predicate sits in the locking subquery so a row another worker claimed and
    committed meanwhile is re-checked and dropped. SQLite has no row locks and serialises writers,
    so the same statement without the locking clause is already exclusive there.

    With a ``cap``, full lanes and webhooks held back behind an earlier one of their order are
    left out before the limit (so a long backlog of one merchant cannot fill every claim), and of
    the first ``limit`` events left, a lane gets those it has room for: its others stay unleased
    for a later claim. SQLite (the embedded default, small outboxes) scans the due events in
    order. On PostgreSQL the events considered (``_QUEUE_HEADS``) are

    - the first due events (``ix_outbox_pending``, a bounded read): the oldest, wherever they
      are, so an event that comes due among 40,000 waiting queues is taken by the next claim;
    - the first due events of a window of merchant queues, the walk, taken in key order after
      ``after`` (where the previous claim's walk ended: ``Claimed.after``) and wrapping round:
      a merchant whose due events sit behind an older backlog of others' (which fills the first
      read) is still seen, within one lap of ``queues / window`` claims (a ``wide`` window,
      ``WALK_WIDE``, when the relay's last claim found less than it asked). Walking every queue
      on every claim cost ~7 µs a queue, 0.3 s a claim at 40,000; a walk that always started
      at the first queue would never reach the last ones;
    - the first due jobs of each type naming no merchant (a handful of types);

    so a full lane's backlog is never read, whatever its length, and the claim's cost follows
    ``limit``, not the number of queues.
    """
    params: dict[str, Any] = {"b_now": now, "b_owner": worker_id, "b_expires": now + lease,
                              "b_limit": limit}
    locking = dialect_name != "sqlite"
    if cap is None or not cap.event_types:
        return Claim(_claim_statement(locking=locking, capped=False), params)
    most = cap.per_merchant
    capped = {
        **params, "b_types": sorted(cap.event_types), "b_most": most,
        "b_full": sorted(m for m, n in cap.held.items() if n >= most),
        # The places in its queue a lane has no room for: with 3 of 4 held, its 2nd to 4th.
        "b_no_room": [(m, nth) for m, n in sorted(cap.held.items()) if 0 < n < most
                      for nth in range(most - n + 1, most + 1)],
    }
    if not locking:
        return Claim(_claim_statement(locking=False, capped=True), capped)
    return Claim(_claim_statement(locking=True, capped=True),
                 {**capped, "b_scan": max(SCAN_MIN, SCAN_PER_EVENT * limit)},
                 walk=(after, max(WALK_WIDE if wide else WALK_MIN, WALK_PER_EVENT * limit)))


@functools.cache
def _claim_statement(*, locking: bool, capped: bool) -> sa.Update:
    """Built once per kind: a relay claims as often as a slot frees, and building the statement
    cost more CPU than running it."""
    due = (
        outbox.c.status == PENDING_INLINE,
        outbox.c.available_at <= sa.bindparam("b_now"),
        sa.or_(outbox.c.lease_expires_at.is_(None),
               outbox.c.lease_expires_at < sa.bindparam("b_now")),
    )
    lane_types: sa.BindParameter[Any] = sa.bindparam("b_types", expanding=True)
    lane = sa.case((outbox.c.event_type.in_(lane_types), outbox.c.merchant_id))
    picked = (sa.select(outbox.c.id, outbox.c.available_at, lane.label("lane")) if capped
              else sa.select(outbox.c.id))
    if capped:
        picked = picked.where(
            sa.or_(lane.is_(None), lane.not_in(sa.bindparam("b_full", expanding=True))),
            ~held_back(lane_types))
        if locking:  # PostgreSQL: only the queues' heads; the predicate is checked again
            picked = picked.where(outbox.c.id.in_(_QUEUE_HEADS))  # on the locked rows
    # Longest due first, in the order of ix_outbox_pending: the scan stops at the limit instead
    # of sorting every due event, which matters now that a relay claims per free slot.
    picked = (picked.where(*due).order_by(outbox.c.available_at, outbox.c.id)
              .limit(sa.bindparam("b_limit", type_=sa.Integer)))
    if locking:
        picked = picked.with_for_update(skip_locked=True)
    if capped:
        window = picked.subquery("due")
        nth = sa.func.row_number().over(partition_by=window.c.lane,
                                        order_by=(window.c.available_at, window.c.id))
        queued = sa.select(window.c.id, window.c.lane, nth.label("nth")).subquery("queued")
        picked = sa.select(queued.c.id).where(sa.or_(queued.c.lane.is_(None), sa.and_(
            queued.c.nth <= sa.bindparam("b_most", type_=sa.Integer),
            sa.tuple_(queued.c.lane, queued.c.nth).not_in(
                sa.bindparam("b_no_room", expanding=True)))))
    return (
        sa.update(outbox)
        .where(outbox.c.id.in_(picked.scalar_subquery()))
        .values(
            lease_owner=sa.bindparam("b_owner"),
            lease_expires_at=sa.bindparam("b_expires"),
            attempts=outbox.c.attempts + 1,
        )
        .returning(*CLAIMED_COLUMNS)
    )


_QUEUE_WALK = sa.text("""
WITH RECURSIVE queues AS (
  (SELECT 1 AS n, merchant_id, event_type FROM outbox
   WHERE status = 'pending' AND merchant_id IS NOT NULL
     AND (merchant_id, event_type) > (:w_merchant, :w_event_type)
   ORDER BY merchant_id, event_type LIMIT 1)
  UNION ALL
  SELECT q.n + 1, later.merchant_id, later.event_type FROM queues q CROSS JOIN LATERAL (
    SELECT o.merchant_id, o.event_type FROM outbox o
    WHERE o.status = 'pending' AND (o.merchant_id, o.event_type) > (q.merchant_id, q.event_type)
    ORDER BY o.merchant_id, o.event_type LIMIT 1) later
  WHERE q.n < :w_size
)
SELECT merchant_id, event_type FROM queues ORDER BY n
""").bindparams(sa.bindparam("w_merchant", type_=sa.String),
                sa.bindparam("w_event_type", type_=sa.String),
                sa.bindparam("w_size", type_=sa.Integer))
"""The next ``w_size`` merchant queues after ``(w_merchant, w_event_type)`` in key order, by a
skip scan of ``ix_outbox_merchant_queues``: one probe each, and nothing read of their backlogs."""

_QUEUE_HEADS = sa.text("""
WITH RECURSIVE queues AS (
  SELECT q.merchant_id, q.event_type
  FROM unnest(CAST(:b_queue_merchants AS VARCHAR[]), CAST(:b_queue_types AS VARCHAR[]))
    AS q(merchant_id, event_type)
), jobs AS (
  (SELECT event_type FROM outbox WHERE status = 'pending' AND merchant_id IS NULL
   ORDER BY event_type LIMIT 1)
  UNION ALL
  SELECT later.event_type FROM jobs j CROSS JOIN LATERAL (
    SELECT o.event_type FROM outbox o
    WHERE o.status = 'pending' AND o.merchant_id IS NULL AND o.event_type > j.event_type
    ORDER BY o.event_type LIMIT 1) later
), heads AS (
  SELECT head.id, head.available_at FROM queues q CROSS JOIN LATERAL (
    SELECT o.id, o.available_at FROM outbox o
    WHERE o.status = 'pending' AND o.merchant_id = q.merchant_id
      AND o.event_type = q.event_type AND o.available_at <= :b_now
      AND (o.lease_expires_at IS NULL OR o.lease_expires_at < :b_now)
      AND NOT (o.event_type IN :b_types AND EXISTS (
        SELECT 1 FROM outbox ahead WHERE ahead.aggregate_id = o.aggregate_id
          AND ahead.status = 'pending' AND ahead.id < o.id
          AND ahead.merchant_id = o.merchant_id AND ahead.event_type IN :b_types))
    ORDER BY o.available_at, o.id LIMIT :b_most) head
  WHERE q.event_type IN :b_types AND q.merchant_id NOT IN :b_full
  UNION ALL
  SELECT head.id, head.available_at FROM queues q CROSS JOIN LATERAL (
    SELECT o.id, o.available_at FROM outbox o
    WHERE o.status = 'pending' AND o.merchant_id = q.merchant_id
      AND o.event_type = q.event_type AND o.available_at <= :b_now
      AND (o.lease_expires_at IS NULL OR o.lease_expires_at < :b_now)
    ORDER BY o.available_at, o.id LIMIT :b_limit) head
  WHERE q.event_type NOT IN :b_types
  UNION ALL
  SELECT head.id, head.available_at FROM jobs j CROSS JOIN LATERAL (
    SELECT o.id, o.available_at FROM outbox o
    WHERE o.status = 'pending' AND o.merchant_id IS NULL AND o.event_type = j.event_type
      AND o.available_at <= :b_now
      AND (o.lease_expires_at IS NULL OR o.lease_expires_at < :b_now)
    ORDER BY o.available_at, o.id LIMIT :b_limit) head
  UNION ALL
  SELECT first.id, first.available_at FROM (
    SELECT s.id, s.available_at, row_number() OVER (
      PARTITION BY s.merchant_id, s.event_type ORDER BY s.available_at, s.id) AS nth,
      s.merchant_id IS NOT NULL AND s.event_type IN :b_types AS laned
    FROM (SELECT o.id, o.available_at, o.merchant_id, o.event_type, o.aggregate_id
          FROM outbox o
          WHERE o.status = 'pending' AND o.available_at <= :b_now
            AND (o.lease_expires_at IS NULL OR o.lease_expires_at < :b_now)
          ORDER BY o.available_at, o.id LIMIT :b_scan) s
    WHERE s.merchant_id IS NULL OR s.event_type NOT IN :b_types
      OR (s.merchant_id NOT IN :b_full AND NOT EXISTS (
        SELECT 1 FROM outbox ahead WHERE ahead.aggregate_id = s.aggregate_id
          AND ahead.status = 'pending' AND ahead.id < s.id
          AND ahead.merchant_id = s.merchant_id AND ahead.event_type IN :b_types))) first
  WHERE first.nth <= :b_most OR NOT first.laned
)
SELECT id FROM (SELECT DISTINCT id, available_at FROM heads) h
ORDER BY available_at, id LIMIT :b_scan
""").bindparams(sa.bindparam("b_types", expanding=True, type_=sa.String),
                sa.bindparam("b_full", expanding=True, type_=sa.String),
                sa.bindparam("b_now", type_=outbox.c.available_at.type),
                sa.bindparam("b_most", type_=sa.Integer),
                sa.bindparam("b_limit", type_=sa.Integer),
                sa.bindparam("b_scan", type_=sa.Integer),
                sa.bindparam("b_queue_merchants", type_=ARRAY(sa.String)),
                sa.bindparam("b_queue_types", type_=ARRAY(sa.String))).columns(outbox.c.id)
"""The PostgreSQL capped claim's candidates (see ``claim_batch``): the first ``b_scan`` due
events (a full lane's, and webhooks held back, left out; ``b_most`` of a queue), the first due
events of the walk's queues (``b_queue_merchants``, ``b_queue_types``; a full lane's queue is
not read at all) and of each type of job naming no merchant. At most ``b_most`` of a lane's
queue are candidates, ``b_limit`` of any other. Through ``ix_outbox_pending`` alone a claim
read a full lane's whole due backlog to pass over it (half a second per claim behind a million
``order.paid`` of one merchant); through every queue's head, every queue (0.3 s at 40,000). The
claim then locks (and re-checks) the earliest ``b_limit`` of them it can. Candidates are read
without locking, so there are ``b_scan`` of them (4 claims' worth), not ``b_limit``: a claim
racing another met the same first ``b_limit``, all locked by the other, and took none; its
relay, slots free, then slept a poll while the backlog waited (several workers, each
collision)."""


def held_back(webhook_types: Collection[str] | sa.BindParameter[Any]) -> sa.ColumnElement[bool]:
    """The event is a merchant webhook and an earlier one (by outbox id) of the same order to the
    same merchant is still to be delivered: due, leased or waiting for its retry (``pending``).
    Such an event is not claimable. Done and dead ones hold nothing back, so a dead letter lets
    the order's later webhooks go. One probe of ``ix_outbox_order_queue`` per event tested."""
    ahead = outbox.alias("ahead")
    return sa.and_(outbox.c.event_type.in_(webhook_types), sa.exists().where(
        ahead.c.aggregate_id == outbox.c.aggregate_id,
        ahead.c.status == PENDING_INLINE,
        ahead.c.id < outbox.c.id,
        ahead.c.merchant_id == outbox.c.merchant_id,
        ahead.c.event_type.in_(webhook_types),
    ))


_FENCED = sa.update(outbox).where(
    outbox.c.id == sa.bindparam("b_id"),
    outbox.c.status == PENDING,
    outbox.c.lease_owner == sa.bindparam("b_owner"),
    outbox.c.attempts == sa.bindparam("b_attempts"),
)
"""SET comes from the parameters' column keys."""
_FENCED_RELEASE = _FENCED.values(attempts=outbox.c.attempts - 1)
_FENCED_RETRY = _FENCED.values(available_at=sa.case(
    (outbox.c.available_at > sa.bindparam("b_due", type_=outbox.c.available_at.type),
     outbox.c.available_at),
    else_=sa.bindparam("b_retry_at", type_=outbox.c.available_at.type)))


@dataclass(frozen=True)
class OutcomeWrite:
    statement: sa.Update
    params: dict[str, Any]

    async def run(self, conn: AsyncConnection) -> int:
        """Execute on ``conn``; the number of rows written (0: the lease was lost)."""
        return int((await conn.execute(self.statement, self.params)).rowcount)


def _fenced(row_id: int, worker_id: str, attempts: int, **values: Any) -> OutcomeWrite:
    return OutcomeWrite(_FENCED, {"b_id": row_id, "b_owner": worker_id, "b_attempts": attempts,
                                  "lease_owner": None, "lease_expires_at": None, **values})


def mark_done(row_id: int, *, worker_id: str, attempts: int, now: datetime) -> OutcomeWrite:
    return _fenced(row_id, worker_id, attempts, status=DONE, processed_at=now)


def mark_retry(
    row_id: int, *, worker_id: str, attempts: int, available_at: datetime, error: str,
    due_when_claimed: datetime | None = None,
) -> OutcomeWrite:
    """Try again at ``available_at``. ``due_when_claimed`` (an order's webhook: the row's
    ``available_at`` as claimed): unless a webhook of its order was written while this try ran,
    which moves it later (``writer``: the news the merchant waits for behind it), and the retry
    is then due at that moment instead. Read from the row in the fenced UPDATE itself, which
    waits for a writer's uncommitted mark, so no webhook written meanwhile is missed."""
    if due_when_claimed is None:
        return _fenced(row_id, worker_id, attempts, available_at=available_at,
                       last_error=truncate_error(error))
    return OutcomeWrite(_FENCED_RETRY, {
        "b_id": row_id, "b_owner": worker_id, "b_attempts": attempts, "lease_owner": None,
        "lease_expires_at": None, "last_error": truncate_error(error),
        "b_due": due_when_claimed, "b_retry_at": available_at})


def mark_dead(
    row_id: int, *, worker_id: str, attempts: int, now: datetime, error: str
) -> OutcomeWrite:
    """Dead-letter the event; ``processed_at`` is when the relay gave up on it."""
    return _fenced(row_id, worker_id, attempts, status=DEAD, processed_at=now,
                   last_error=truncate_error(error))


_BEHIND = sa.update(outbox).where(
    outbox.c.aggregate_id == sa.bindparam("h_order"),
    unindexed(outbox.c.merchant_id) == sa.bindparam("h_merchant"),
    outbox.c.id > sa.bindparam("h_id"),
    outbox.c.status == PENDING_INLINE,
    outbox.c.event_type.in_(sa.bindparam("h_types", expanding=True)),
    outbox.c.lease_owner.is_(None),
)
_HOLD_BEHIND = _BEHIND.values(available_at=sa.case(
    (outbox.c.available_at < sa.bindparam("h_until"), sa.bindparam("h_until")),
    else_=outbox.c.available_at))
_RELEASE_BEHIND = _BEHIND.where(
    outbox.c.attempts == 0, unindexed(outbox.c.available_at) > sa.bindparam("h_until"),
).values(available_at=sa.bindparam("h_until"))


def hold_behind(row_id: int, *, order_id: str, merchant_id: str, webhook_types: Collection[str],
                until: datetime) -> OutcomeWrite:
    """An order's webhook failed and is tried again at ``until``: its order's later webhooks wait
    as long (``held_back`` would pass over them anyway). Left due, each would sit at the front of
    its merchant's queue and be read and passed over by every claim and every sample of the
    outbox's age until then: a merchant endpoint down for hours made claims walk every held
    webhook (seams review: 100,000 held, 0.5 s a claim)."""
    return OutcomeWrite(_HOLD_BEHIND, {"h_order": order_id, "h_merchant": merchant_id,
                                       "h_id": row_id, "h_types": sorted(webhook_types),
                                       "h_until": until})


def release_behind(row_id: int, *, order_id: str, merchant_id: str,
                   webhook_types: Collection[str], now: datetime) -> OutcomeWrite:
    """An order's webhook was delivered or dead-lettered: its later webhooks that waited for it
    (never tried: ``attempts`` 0) are due now."""
    return OutcomeWrite(_RELEASE_BEHIND, {"h_order": order_id, "h_merchant": merchant_id,
                                          "h_id": row_id, "h_types": sorted(webhook_types),
                                          "h_until": now})


def release(row_id: int, *, worker_id: str, attempts: int) -> OutcomeWrite:
    """Hand back a claimed event that was never started, without spending one of its tries."""
    return OutcomeWrite(_FENCED_RELEASE, {"b_id": row_id, "b_owner": worker_id,
                                          "b_attempts": attempts, "lease_owner": None,
                                          "lease_expires_at": None})


def truncate_error(error: str) -> str:
    if len(error) <= LAST_ERROR_MAX:
        return error
    return error[: LAST_ERROR_MAX - 1] + "…"
