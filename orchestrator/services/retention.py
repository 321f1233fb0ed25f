"""Retention: delete the rows whose work is done once they are old enough to be of no more use.

Without it three tables grow by a row or more per order, for ever:

* ``idempotency_keys``: a stored reply replays a capture retried with the same key. Clients retry
  within minutes; after ``idempotency_keys`` (7 days) a retry with an old key captures anew, and
  the merchant order id (unique per merchant, kept for ever) still refuses a second order,
  naming the first.
* ``outbox`` rows ``done``: an event delivered, or a job run, created more than ``done_events``
  ago (its age counts from creation: an event is done within a day of it, or dead). The facts
  they carried stay in orders, attempts, evidence and the audit log. Pending and dead events
  are never deleted (dead ones wait for a person).
* ``provider_deliveries``: every webhook as received. Kept for ever unless configured, because
  a raw delivery can settle a dispute with a provider long after; only handled ones (an
  ``outcome``) are ever deleted, so a delivery whose job is still queued is never lost. A
  provider re-sending a pruned delivery has it stored and applied anew, which changes nothing:
  evidence is unique per payment (``evidence.unique_key``).

Each table is pruned in batches of ``batch`` rows, each its own short transaction, so a prune
never holds many locks or a long transaction. On PostgreSQL the batch skips rows another worker's
prune holds (``SKIP LOCKED``): any number of workers may prune at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator.domain.clock import Clock
from orchestrator.outbox.queries import DONE
from orchestrator.settings import RetentionSettings
from orchestrator.store.database import Database
from orchestrator.store.tables import idempotency_keys, outbox, provider_deliveries
from orchestrator.telemetry.metrics import Metrics

log = logging.getLogger("lunas.retention")


def _prunable(table: str, now: datetime, settings: RetentionSettings
              ) -> tuple[sa.Table, Any, list[sa.Column[Any]]] | None:
    """The table, the condition on its prunable rows, and its key columns."""
    if table == "idempotency_keys":
        k = idempotency_keys.c
        return (idempotency_keys, k.created_at < now - settings.idempotency_keys,
                [k.merchant_id, k.key])
    if table == "outbox":
        o = outbox.c
        return outbox, sa.and_(o.status == DONE, o.created_at < now - settings.done_events), [o.id]
    if settings.provider_deliveries is None:
        return None
    d = provider_deliveries.c
    return (provider_deliveries, sa.and_(d.outcome.is_not(None),
                                         d.received_at < now - settings.provider_deliveries),
            [d.id])


TABLES = ("idempotency_keys", "outbox", "provider_deliveries")


async def prune(db: Database, *, now: datetime, settings: RetentionSettings,
                on_pruned: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Delete every prunable row older than its retention; returns rows deleted per table."""
    deleted: dict[str, int] = {}
    for name in TABLES:
        found = _prunable(name, now, settings)
        if found is None:
            continue
        table, condition, key = found
        deleted[name] = 0
        while True:
            async with db.transaction() as conn:
                chosen = (sa.select(*key).where(condition).limit(settings.batch)
                          .with_for_update(skip_locked=True))
                target = key[0].in_(chosen) if len(key) == 1 else sa.tuple_(*key).in_(chosen)
                result = await conn.execute(table.delete().where(target))
            count = int(result.rowcount or 0)
            deleted[name] += count
            if on_pruned is not None and count:
                on_pruned(name, count)
            if count < settings.batch:
                break
    return deleted


async def prune_forever(db: Database, clock: Clock, metrics: Metrics,
                        settings: RetentionSettings, stop: asyncio.Event) -> None:
    """Prune every ``settings.interval``, starting at once; a failed prune is logged and tried
    again at the next interval."""
    def count(table: str, rows: int) -> None:
        metrics.rows_pruned.labels(table).inc(rows)

    while not stop.is_set():
        try:
            deleted = await prune(db, now=clock.now(), settings=settings, on_pruned=count)
            if any(deleted.values()):
                log.info("retention pruned %s", deleted)
        except Exception:  # the loop must outlive a database blip
            log.exception("retention prune failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.interval.total_seconds())
