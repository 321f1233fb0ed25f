"""Gauges of what is waiting, read from the database when Prometheus scrapes.

Backlogs (outbox, verification, review queue) are facts about shared state, not about one
process: counting them in the process that happens to do the work would give each api and worker
replica a different, partial answer. So the api samples them from the system of record at scrape
time (at most once per ``min_interval``), and every replica reports the same truth, which is what
an alert on them needs. Label sets are bounded: routes are configured, reasons are an enum.
"""

from __future__ import annotations

import time
from datetime import datetime

import sqlalchemy as sa

from orchestrator.domain.clock import Clock
from orchestrator.outbox import queries
from orchestrator.rails.base import Rail
from orchestrator.services.status_reads import LIVE
from orchestrator.store.database import Database
from orchestrator.store.tables import orders, outbox, payment_attempts
from orchestrator.telemetry.metrics import Metrics


class StateSampler:
    def __init__(self, db: Database, metrics: Metrics, clock: Clock, *,
                 min_interval: float = 2.0) -> None:
        self._db, self._metrics, self._clock = db, metrics, clock
        self._min_interval = min_interval
        self._sampled_at = float("-inf")

    async def refresh(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._sampled_at < self._min_interval:
            return
        self._sampled_at = time.monotonic()
        now = self._clock.now()
        async with self._db.read() as conn:
            o = outbox.c
            # One query per status, each answered from ix_outbox_status_created.
            backlog, oldest = (await conn.execute(sa.select(
                sa.func.count(), sa.func.min(o.created_at).filter(o.available_at <= now),
            ).where(o.status == queries.PENDING))).one()
            dead = (await conn.execute(sa.select(sa.func.count()).where(
                o.status == queries.DEAD))).scalar_one()
            a = payment_attempts.c
            route = (a.rail + ":" + a.provider + ":" + sa.func.coalesce(a.channel, ""))
            waiting = (await conn.execute(
                sa.select(route.label("route"),
                          sa.func.count().label("n"),
                          sa.func.count().filter(a.deferred_on.is_not(None)).label("deferred"),
                          # A deferred read's next_check_at is the breaker's retry estimate;
                          # it has waited since it was deferred.
                          sa.func.min(sa.case((a.deferred_on.is_not(None), a.last_checked_at),
                                              else_=a.next_check_at)).label("oldest"))
                .where(a.state.in_(LIVE), a.rail != Rail.MANUAL_TRANSFER.value,
                       sa.or_(a.deferred_on.is_not(None), a.next_check_at <= now))
                .group_by(route))).all()
            review = (await conn.execute(
                sa.select(orders.c.review_reason, sa.func.count())
                .where(orders.c.state == "needs_review").group_by(orders.c.review_reason)
            )).all()
            verifying = (await conn.execute(sa.select(sa.func.count()).where(
                orders.c.state == "verifying"))).scalar_one()
        m = self._metrics
        m.outbox_backlog.set(backlog)
        m.outbox_oldest_age.set(_age(now, oldest))
        m.outbox_dead_letters.set(dead)
        for gauge in (m.verification_backlog, m.verification_deferred,
                      m.verification_oldest_age):
            gauge.clear()
        for row in waiting:
            m.verification_backlog.labels(row.route).set(row.n)
            m.verification_deferred.labels(row.route).set(row.deferred)
            m.verification_oldest_age.labels(row.route).set(_age(now, row.oldest))
        m.orders_needs_review.clear()
        for reason, count in review:
            m.orders_needs_review.labels(reason or "unspecified").set(count)
        m.orders_verifying.set(verifying)


def _age(now: datetime, since: datetime | None) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0
