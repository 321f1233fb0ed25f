"""The worker: the outbox relay, the scheduled sweeps (deadlines, code quarantine), the verifier
(status reads of live attempts), retention (old finished rows) and, when configured, the
mutation-feed poller.

Any number of workers may run; they share the outbox through leases and the sweeps through
``SKIP LOCKED``. On SQLite (embedded) one worker runs inside the api process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import datetime

import httpx

from orchestrator import heap
from orchestrator.bootstrap import Container
from orchestrator.domain.events import MERCHANT_VISIBLE
from orchestrator.notify.delivery import MerchantWebhookHandler, merchant_webhook_handlers
from orchestrator.notify.egress import webhook_client
from orchestrator.outbox.relay import Handler, Relay
from orchestrator.rails.guard import BreakerGuard
from orchestrator.rails.plan import MANUAL_ROUTE
from orchestrator.services.expiry import (
    expire_due_orders,
    release_quarantined_codes,
    settle_verifying_orders,
)
from orchestrator.services.feed_poller import FeedPoller
from orchestrator.services.retention import prune_forever
from statuspage.model import Dwell
from statuspage.recorder import RecorderSettings, StatusRecorder
from statuspage.service import catalog_of

log = logging.getLogger("lunas.worker")


class LiveSourceHealth:
    """``SourceHealth`` from this worker's breakers and mutation-feed poller."""

    def __init__(self, guard: BreakerGuard, feed: FeedPoller | None) -> None:
        self._guard, self._feed = guard, feed

    def route_unavailable(self, route_key: str) -> bool:
        return self._guard.is_open(route_key)

    def retry_at(self, route_key: str) -> datetime | None:
        return self._guard.retry_at(route_key)

    def feed_stale(self, now: datetime) -> bool:
        return self._feed is not None and self._feed.stale(now)

    def feed_caught_up(self, deadline: datetime) -> bool:
        if self._feed is None:
            return True
        last_ok = self._feed.last_ok
        return last_ok is not None and last_ok >= deadline

    def next_feed_poll(self, now: datetime) -> datetime | None:
        return None if self._feed is None else now + self._feed.poll_interval


class LiveStatusSources:
    """``statuspage.recorder.Sources`` from this worker's router, breakers, controls and feed."""

    def __init__(self, container: Container) -> None:
        self._c = container

    def catalog(self) -> dict[str, dict[str, tuple[str, ...]]]:
        return catalog_of(self._c.router.catalog())

    def breaker_state(self, route_key: str) -> str:
        return self._c.breakers.get(route_key).state.value

    async def paused(self, now: datetime) -> dict[str, str]:
        return await self._c.route_controls.paused(now)

    async def maintenance_patterns(self, now: datetime) -> list[str]:
        return [w.route_pattern for w in await self._c.route_controls.windows(now=now)
                if w.starts_at <= now]

    def feed_stale(self, now: datetime) -> bool:
        feed = self._c.feed_poller
        return feed is not None and feed.stale(now)


def status_recorder(container: Container) -> StatusRecorder:
    sp = container.settings.status_page
    return StatusRecorder(
        container.db, LiveStatusSources(container), container.clock,
        manual_route=MANUAL_ROUTE.key,
        settings=RecorderSettings(
            interval=sp.interval, success_window=sp.success_window,
            dwell=Dwell(worsen_after=sp.worsen_after, recover_after=sp.recover_after)))


async def sweep_once(container: Container, health: LiveSourceHealth) -> bool:
    """One pass of the deadline sweep; True when a full batch of orders was due (more may be)."""
    settings = container.settings
    now = container.clock.now()
    expired = await expire_due_orders(
        container.db, now=now, quarantine=settings.unique_codes.quarantine,
        batch=settings.scheduler.sweep_batch, health=health,
        claim_lease=settings.verification.claim,
    )
    await settle_verifying_orders(
        container.db, now=now, quarantine=settings.unique_codes.quarantine,
        window=settings.scheduler.verification_window,
        batch=settings.scheduler.sweep_batch, health=health)
    await release_quarantined_codes(container.db, now=now)
    return expired == settings.scheduler.sweep_batch


async def sweep_forever(container: Container, stop: asyncio.Event) -> None:
    """Expire orders past their deadline and release codes past quarantine, every interval."""
    interval = container.settings.scheduler.sweep_interval.total_seconds()
    health = LiveSourceHealth(BreakerGuard(container.breakers), container.feed_poller)
    while not stop.is_set():
        try:
            if await sweep_once(container, health):
                continue  # more are due: no pause
        except Exception:  # the sweep must outlive a database blip; the next pass retries
            log.exception("sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


def relay_handlers(container: Container, http: httpx.AsyncClient) -> dict[str, Handler]:
    """Every outbox event type a worker handles. One map, so no relay process can miss one (an
    event with no handler is retried, then dead-lettered: a worker of an older version leaves it
    to the newer ones)."""
    webhooks = MerchantWebhookHandler(
        container.db.engine, http, container.settings.webhooks.timeout,
        egress=container.settings.webhook_egress)
    return {**merchant_webhook_handlers(webhooks), **container.gateway_jobs.handlers(),
            **container.provider_webhooks.handlers(), **container.settled_reads.handlers(),
            **container.reconciliation.handlers()}


async def run_relay(container: Container, stop: asyncio.Event) -> None:
    await container.start()
    worker_id = default_worker_id(container.settings.worker_id)
    async with webhook_client(container.settings.webhooks.timeout) as http:
        # Merchant webhooks run in their merchant's lane: a slow endpoint holds its share of
        # the relay's slots, never all of them.
        relay = Relay(container.db.engine, relay_handlers(container, http),
                      container.settings.outbox, worker_id, container.clock,
                      per_merchant=MERCHANT_VISIBLE, metrics=container.metrics)
        log.info("outbox relay started", extra={"worker_id": relay.worker_id})
        await relay.run(stop)


async def run_worker(container: Container, stop: asyncio.Event, *,
                     freeze_startup_heap: bool = False) -> None:
    """``freeze_startup_heap`` for a process that runs only the worker (``lunas worker``)."""
    if freeze_startup_heap:
        await container.start()
        heap.freeze_startup_heap()
    loops = [run_relay(container, stop), sweep_forever(container, stop),
             container.verifier.run(stop), status_recorder(container).run(stop),
             prune_forever(container.db, container.clock, container.metrics,
                           container.settings.retention, stop)]
    if container.feed_poller is not None:  # LUNAS_MOOTA_URL is set
        loops.append(container.feed_poller.run(stop))
    await asyncio.gather(*loops)


def default_worker_id(configured: str = "") -> str:
    """``LUNAS_WORKER_ID`` (``Settings.worker_id``) if set, else ``<hostname>-<pid>``, trimmed to
    fit ``lease_owner``."""
    given = configured.strip()
    if given:
        return given[:_WORKER_ID_MAX]
    suffix = f"-{os.getpid()}"
    return socket.gethostname()[: _WORKER_ID_MAX - len(suffix)] + suffix


_WORKER_ID_MAX = 64  # outbox.lease_owner
