"""Gauges of what is waiting, read from the database when Prometheus scrapes.

Backlogs (outbox, verification, review queue) are facts about shared state, not about one
process: counting them in the process that happens to do the work would give each api and worker
replica a different, partial answer. So the api samples them from the system of record at scrape
time (at most once per ``min_interval``), and every replica reports the same truth, which is what
an alert on them needs. Label sets are bounded: routes are configured (or paused by a person),
reasons are an enum, payout accounts are labelled by their configured id (never the number).
"""

from __future__ import annotations

import time
from datetime import datetime

import sqlalchemy as sa

from orchestrator.domain.clock import Clock
from orchestrator.domain.events import MERCHANT_VISIBLE
from orchestrator.domain.money import UniqueCodeRange
from orchestrator.domain.order import ReviewReason
from orchestrator.outbox import queries
from orchestrator.rails.base import Rail
from orchestrator.rails.plan import MANUAL_ROUTE
from orchestrator.rails.router import Router
from orchestrator.services.route_controls import RouteControls
from orchestrator.services.status_reads import LIVE
from orchestrator.services.unreadable_feed_items import MOOTA, OPEN
from orchestrator.store.database import Database
from orchestrator.store.tables import (
    orders,
    outbox,
    payment_attempts,
    payout_accounts,
    review_cases,
    unreadable_feed_items,
)
from orchestrator.telemetry.metrics import Metrics


class StateSampler:
    def __init__(self, db: Database, metrics: Metrics, clock: Clock, *,
                 min_interval: float = 2.0, codes: UniqueCodeRange | None = None,
                 router: Router | None = None, controls: RouteControls | None = None) -> None:
        self._db, self._metrics, self._clock = db, metrics, clock
        self._min_interval = min_interval
        self._codes, self._router, self._controls = codes, router, controls
        self._sampled_at = float("-inf")

    async def refresh(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._sampled_at < self._min_interval:
            return
        self._sampled_at = time.monotonic()
        now = self._clock.now()
        async with self._db.read() as conn:
            o = outbox.c
            # The age is how long the oldest claimable event (due, no live lease, not a
            # webhook waiting for an earlier one of its order: what queries.claim_batch would
            # take) has waited for a worker, counted from available_at, not created_at: an
            # event retried for a day against a merchant endpoint that is down would otherwise
            # report its whole life each time it is due, and page as if the workers were stuck.
            # Due apart from scheduled: a week of settled reads queued ahead, or retries
            # backing off, are not work waiting for a worker.
            due = o.available_at <= now
            backlog, scheduled = (await conn.execute(sa.select(
                sa.func.count().filter(due), sa.func.count().filter(~due)).where(
                o.status == queries.PENDING))).one()
            oldest = (await conn.execute(_OLDEST_CLAIMABLE, {"now": now})).scalar()
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
            cases = (await conn.execute(  # ix_review_cases_open_reason
                sa.select(review_cases.c.reason, sa.func.count().label("n"),
                          sa.func.min(review_cases.c.created_at).label("oldest"))
                .where(review_cases.c.state == "open").group_by(review_cases.c.reason))).all()
            u = unreadable_feed_items.c
            unreadable: dict[str, int] = {row.feed: row.n for row in await conn.execute(
                sa.select(u.feed, sa.func.count().label("n")).where(u.state == OPEN)
                .group_by(u.feed))}  # answered from ix_unreadable_feed_items_state
        m = self._metrics
        m.outbox_backlog.set(backlog)
        m.outbox_scheduled.set(scheduled)
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
        m.review_cases_open.clear()
        m.review_cases_oldest_age.clear()
        # Every reason always present, so "no case open" is a 0 an alert can read, not a
        # missing series (reasons are an enum: a bounded label set).
        for reason in ReviewReason:
            m.review_cases_open.labels(reason.value).set(0)
            m.review_cases_oldest_age.labels(reason.value).set(0)
        for row in cases:
            m.review_cases_open.labels(row.reason).set(row.n)
            m.review_cases_oldest_age.labels(row.reason).set(_age(now, row.oldest))
        m.feed_items_unreadable.clear()
        for feed, count in {MOOTA: 0, **unreadable}.items():
            m.feed_items_unreadable.labels(feed).set(count)
        if self._codes is not None:
            await self._sample_code_pools()
        if self._controls is not None:
            await self._sample_route_controls(now)
        # Last, so any failure above leaves it behind: the api's /metrics swallows sampler
        # errors (a database outage must not hide the other metrics) and LunasStateSamplerStale
        # reads this to tell frozen gauges from fresh ones.
        m.state_sampled.set(now.timestamp())

    async def _sample_code_pools(self) -> None:
        """Per payout account: held amounts, and how full the busiest amount's code range is.

        An order of amount ``A`` may use ``A + low .. A + high`` on an account, so an account
        is as close to refusing captures as its densest run of held transfer amounts one code
        range wide: counted with a window over the held-amount index, in one pass.
        """
        assert self._codes is not None
        a, pa = payment_attempts.c, payout_accounts.c
        span = self._codes.high - self._codes.low
        held = sa.select(
            a.payout_bank, a.payout_account_number,
            sa.func.count().over(partition_by=(a.payout_bank, a.payout_account_number),
                                 order_by=a.transfer_amount, range_=(0, span)).label("run"),
        ).where(a.holds_code).subquery()
        account_id = (sa.select(sa.func.min(pa.id))
                      .where(pa.bank == held.c.payout_bank,
                             pa.account_number == held.c.payout_account_number)
                      .scalar_subquery())
        async with self._db.read() as conn:
            pools = (await conn.execute(
                sa.select(account_id.label("account"), sa.func.count().label("held"),
                          sa.func.max(held.c.run).label("densest"))
                .group_by(held.c.payout_bank, held.c.payout_account_number))).all()
        m = self._metrics
        m.unique_code_pool_used.clear()
        m.unique_codes_held.clear()
        for row in pools:
            account = row.account or "unconfigured"  # an account removed while codes are held
            m.unique_code_pool_used.labels(account).set(row.densest / (span + 1))
            m.unique_codes_held.labels(account).set(row.held)

    async def _sample_route_controls(self, now: datetime) -> None:
        """Each route this process offers (and any a person paused): paused, in maintenance."""
        assert self._controls is not None
        paused = await self._controls.paused(now)
        windows = await self._controls.windows(now=now)
        routes = {MANUAL_ROUTE.key, *paused}
        if self._router is not None:
            routes |= {f"{rail.value}:{provider}:{channel}"
                       for provider, by_rail in self._router.catalog().items()
                       for rail, channels in by_rail.items() for channel in channels}
        gauge = self._metrics.route_blocked
        gauge.clear()
        for route in sorted(routes):
            # Manual transfer cannot be blocked (rails/router.py): a leftover pause is not one.
            gateway = route != MANUAL_ROUTE.key
            gauge.labels(route, "paused").set(1 if gateway and route in paused else 0)
            gauge.labels(route, "maintenance").set(
                1 if gateway and any(w.covers(route, now) for w in windows) else 0)


_OLDEST_CLAIMABLE = (
    sa.select(outbox.c.available_at)
    .where(outbox.c.status == queries.PENDING_INLINE,
           outbox.c.available_at <= sa.bindparam("now"),
           sa.or_(outbox.c.lease_expires_at.is_(None),
                  outbox.c.lease_expires_at < sa.bindparam("now")),
           ~queries.held_back(sorted(MERCHANT_VISIBLE)))
    .order_by(outbox.c.available_at, outbox.c.id).limit(1)
)
"""In ix_outbox_pending's order, so it stops at the first claimable event instead of testing
every pending one (a statement import leaves a million) for an earlier webhook of its order."""


def _age(now: datetime, since: datetime | None) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0
