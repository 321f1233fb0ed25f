"""The Moota mutation-feed poller: reads ``GET /mutation`` behind its own breaker and feeds the
same deduplicated mutation store as the signed push (``ReconciliationService.ingest_feed``).

One poll reads every page of the window ``[watermark day - 1, today]`` (WIB calendar days; the
extra day covers mutations the bank posts late and the WIB/UTC day edge), then stores and matches
them. Re-reading a mutation is harmless: its fingerprint is ``fingerprint_moota(mutation_id)``,
shared with the push, so it is stored once whichever path saw it first.

An item the feed lists but Lunas cannot read is set aside for a person (``UnreadableFeedItems``)
and the poll goes on: before, one such item failed its page on every poll and the feed went
stale for good. More than ``max_unreadable`` new ones in one poll fail the poll instead (a
format change is an outage, not an odd item). A later readable listing of the same mutation
closes its item.

The freshness watermark is the time of the last successful poll. It lives in the process and,
when Redis is configured, in ``<prefix>feed:moota:last_ok`` so a restarted worker resumes its
window instead of starting over (no table: the feed is re-readable, so losing the watermark only
widens the next window to ``initial_lookback``). ``stale(now)`` says when the feed cannot be
trusted to have reported a transfer (no success within ``stale_after``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import date, datetime, timedelta

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from orchestrator.domain.clock import WIB, Clock
from orchestrator.rails.breaker import BreakerRegistry
from orchestrator.rails.errors import Unavailable
from orchestrator.reconciliation.feed import OPERATION, PROVIDER, MootaFeedClient
from orchestrator.reconciliation.moota import MootaMutation, UnreadableItem
from orchestrator.services.reconciliation import ImportReport, ReconciliationService
from orchestrator.services.unreadable_feed_items import MOOTA, UnreadableFeedItems
from orchestrator.telemetry.metrics import Metrics

log = logging.getLogger("lunas.feed")

ROUTE_KEY = "feed:moota:mutations"
FEED_NAME = MOOTA
MAX_PAGES = 1_000
"""A guard against a feed whose ``last_page`` never ends; far above any real day's volume. A
window listing more is read a day at a time; a day listing more fails the poll (its end
unread), never passes for a whole read."""
INGEST_CHUNK = 500
"""Mutations stored per transaction, so one huge window does not hold one huge transaction."""


class FeedPoller:
    def __init__(self, feed: MootaFeedClient, reconciliation: ReconciliationService,
                 unreadable: UnreadableFeedItems, breakers: BreakerRegistry, clock: Clock,
                 metrics: Metrics, *, poll_interval: timedelta, stale_after: timedelta,
                 redis: aioredis.Redis | None = None, key_prefix: str = "lunas:",
                 initial_lookback: timedelta = timedelta(days=7),
                 max_unreadable: int = 20) -> None:
        self._feed, self._reconciliation, self._breakers = feed, reconciliation, breakers
        self._unreadable, self.max_unreadable = unreadable, max_unreadable
        self.max_pages = MAX_PAGES
        self._clock, self._metrics, self._redis = clock, metrics, redis
        self.poll_interval, self.stale_after = poll_interval, stale_after
        self._initial_lookback = initial_lookback
        self._redis_key = f"{key_prefix}feed:moota:last_ok"
        self._since = clock.now()
        self._last_ok: datetime | None = None
        self._loaded = False

    @property
    def last_ok(self) -> datetime | None:
        """When the last poll succeeded (aware UTC), or ``None`` if none has yet."""
        return self._last_ok

    def stale(self, now: datetime) -> bool:
        """True when no poll succeeded within ``stale_after``. Before the first success the clock
        runs from when this poller was built, so a fresh worker is not stale at once."""
        return now - (self._last_ok or self._since) >= self.stale_after

    def window(self, now: datetime) -> tuple[date, date]:
        today = now.astimezone(WIB).date()
        if self._last_ok is None:
            return (now - self._initial_lookback).astimezone(WIB).date(), today
        return self._last_ok.astimezone(WIB).date() - timedelta(days=1), today

    async def poll(self) -> ImportReport:
        """One poll. Raises ``BreakerOpen`` when the feed's breaker refuses, or the ``RailError``
        the feed answered; the watermark then stays where it was, so the next poll re-reads."""
        await self._load_watermark()
        started = self._clock.now()
        start, end = self.window(started)
        async with self._breakers.get(ROUTE_KEY).guard():
            items, unreadable = await self._fetch_all(start, end)
        # Only items not set aside before count: the window lists those again every poll, and
        # counting them would fail every poll once enough had gathered, for good.
        new = await self._unreadable.unseen(FEED_NAME, unreadable)
        if len(new) > self.max_unreadable:
            raise Unavailable(
                f"{len(new)} of {len(items) + len(unreadable)} listed items are new and "
                f"unreadable (first: {new[0].problem}); more than {self.max_unreadable} means "
                "the feed's format changed", provider=PROVIDER, operation=OPERATION)
        await self._unreadable.keep(FEED_NAME, new, now=started)
        report = ImportReport(parsed=len(items), unreadable=len(unreadable))
        # Credits before debits: a debit is looked at as a possible reversal when it is stored,
        # against the credits matched by then. Moota lists newest first, so a debit comes
        # before the credit it takes back; in an earlier chunk, it is found only when the
        # credit is matched after it (ReconciliationService._debits_stored_before).
        items = sorted(items, key=lambda m: m.direction != "CR")
        for offset in range(0, len(items), INGEST_CHUNK):
            part = await self._reconciliation.ingest_feed(items[offset:offset + INGEST_CHUNK])
            for name in ("new", "duplicate", "matched", "ambiguous", "unmatched",
                         "ignored_debits", "needs_review", "possible_reversals", "unreadable"):
                setattr(report, name, getattr(report, name) + getattr(part, name))
        await self._unreadable.close_read(FEED_NAME, now=started)
        await self._record_success(started)
        return report

    async def start(self) -> None:
        """Load the watermark and export the feed's freshness before the first poll.

        The gauge was set only by a successful poll, so a worker restarted while the feed was
        broken exported no ``lunas_feed_last_success_timestamp_seconds`` at all and
        LunasMutationFeedStale could never fire. It now starts where ``stale()`` starts: the
        watermark loaded from Redis, or without one, when this poller was built."""
        await self._load_watermark()
        self._export_freshness()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every ``poll_interval`` until ``stop``; a failed poll is logged and retried on the
        next tick (an open breaker makes that tick cheap)."""
        await self.start()
        interval = self.poll_interval.total_seconds()
        while not stop.is_set():
            try:
                report = await self.poll()
                if report.new:
                    log.info("feed poll stored %d new mutations (%d matched)", report.new,
                             report.matched)
            except Exception as exc:  # the loop must outlive a feed or database outage
                log.warning("feed poll failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def _fetch_all(self, start: date, end: date
                         ) -> tuple[list[MootaMutation], list[UnreadableItem]]:
        """Every item of the window: at once, or, when it lists more than ``max_pages`` (a first
        poll's week of lookback, a long outage, on a busy account), a day at a time. A day that
        alone lists more fails the poll (``Unavailable``): read in part and counted a success,
        the watermark would move on past its oldest items, which Moota lists last."""
        whole = await self._fetch(start, end)
        if whole is not None:
            return whole
        days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
        parts = [await self._fetch(day, day) for day in days] if len(days) > 1 else [None]
        if any(part is None for part in parts):
            raise Unavailable(f"a day of {start}..{end} lists more than {self.max_pages} pages, "
                              "more than one poll reads", provider=PROVIDER, operation=OPERATION)
        return ([i for part in parts if part for i in part[0]],
                [u for part in parts if part for u in part[1]])

    async def _fetch(self, start: date, end: date
                     ) -> tuple[list[MootaMutation], list[UnreadableItem]] | None:
        """Every item listed from ``start`` to ``end``; None if they span more than
        ``max_pages`` pages."""
        items: list[MootaMutation] = []
        unreadable: list[UnreadableItem] = []
        page = 1
        while True:
            got = await self._feed.list_mutations(start, end, page)
            items.extend(got.items)
            unreadable.extend(got.unreadable)
            if page >= got.last_page or not (got.items or got.unreadable):
                return items, unreadable
            if page >= self.max_pages:
                return None
            page += 1

    def _export_freshness(self) -> None:
        """The gauge says what ``stale()`` reads: the last success, else the poller's start."""
        since = self._last_ok or self._since
        self._metrics.feed_last_success.labels(FEED_NAME).set(since.timestamp())

    async def _record_success(self, at: datetime) -> None:
        self._last_ok = at
        self._export_freshness()
        if self._redis is None:
            return
        try:
            await self._redis.set(self._redis_key, at.isoformat())
        except (RedisError, OSError) as exc:
            log.warning("could not store the feed watermark in Redis: %s", exc)

    async def _load_watermark(self) -> None:
        if self._loaded or self._redis is None:
            self._loaded = True
            return
        try:
            raw = await self._redis.get(self._redis_key)
        except (RedisError, OSError) as exc:
            log.warning("could not read the feed watermark from Redis: %s", exc)
            return  # try again next poll
        self._loaded = True
        if raw is None:
            return
        try:
            stored = datetime.fromisoformat(raw.decode() if isinstance(raw, bytes) else str(raw))
        except ValueError:
            return
        if stored.tzinfo is not None and (self._last_ok is None or stored > self._last_ok):
            self._last_ok = stored
            self._export_freshness()

