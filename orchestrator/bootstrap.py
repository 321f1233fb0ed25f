"""Composition root: builds every long-lived object from settings, once, and hands them out.

Nothing is constructed at import time. The api, the worker, the CLI and the tests all build their
objects here, so they run the same code paths with different settings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import timedelta

import httpx
import redis.asyncio as aioredis

from orchestrator.api.auth import Authenticator
from orchestrator.domain.checkout import CheckoutRules
from orchestrator.domain.clock import Clock, SystemClock
from orchestrator.gameday import CrashAfterCommit, OffsetFileClock
from orchestrator.rails.base import PaymentProvider
from orchestrator.rails.breaker import BreakerRegistry
from orchestrator.rails.guard import BreakerGuard
from orchestrator.rails.midtrans import MidtransProvider
from orchestrator.rails.plan import MANUAL_ROUTE
from orchestrator.rails.ratelimit import Pace, RequestPacer
from orchestrator.rails.router import Router, RouterSettings
from orchestrator.rails.xendit import XenditProvider
from orchestrator.reconciliation.feed import MootaFeedClient
from orchestrator.services.capture import CaptureService
from orchestrator.services.feed_poller import FeedPoller
from orchestrator.services.gateway_jobs import GatewayJobs
from orchestrator.services.issuance import IssuanceService
from orchestrator.services.provider_webhooks import ProviderWebhooks
from orchestrator.services.reconciliation import ReconciliationService
from orchestrator.services.route_controls import RouteControls
from orchestrator.services.settled_reads import SettledReads
from orchestrator.services.status_reads import StatusReads
from orchestrator.services.unreadable_feed_items import UnreadableFeedItems
from orchestrator.services.verification import Verifier
from orchestrator.settings import Settings
from orchestrator.store.database import Database
from orchestrator.store.engine import create_engine
from orchestrator.telemetry import tracing
from orchestrator.telemetry.metrics import Metrics
from orchestrator.telemetry.state import StateSampler
from orchestrator.tls import default_trust
from statuspage.model import components_for
from statuspage.service import LookupLimit, StatusPage, catalog_of


@dataclass(kw_only=True)
class Container:
    settings: Settings
    db: Database
    clock: Clock
    capture: CaptureService
    reconciliation: ReconciliationService
    auth: Authenticator
    metrics: Metrics
    route_controls: RouteControls
    http: httpx.AsyncClient
    redis: aioredis.Redis | None
    breakers: BreakerRegistry
    providers: dict[str, PaymentProvider]
    router: Router
    issuance: IssuanceService
    gateway_jobs: GatewayJobs
    verifier: Verifier
    provider_webhooks: ProviderWebhooks
    settled_reads: SettledReads
    state_sampler: StateSampler
    status_page: StatusPage
    crash_after_commit: CrashAfterCommit | None = None
    """Game days only (``LUNAS_GAMEDAY_EXIT_AFTER_COMMIT``): see orchestrator/gameday.py."""
    unreadable_feed_items: UnreadableFeedItems
    feed_poller: FeedPoller | None = None
    """The Moota mutation-feed poller, when ``LUNAS_MOOTA_URL`` is set (run by the worker)."""
    rng: random.Random = field(default_factory=random.Random)
    _started: bool = False

    async def start(self) -> None:
        """Start what needs a running loop (the breakers' Redis link). Idempotent."""
        if not self._started:
            self._started = True
            await self.breakers.start()

    async def close(self) -> None:
        await self.breakers.close()
        await self.http.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.engine.dispose()


def checkout_rules(settings: Settings) -> CheckoutRules:
    c = settings.checkout
    return CheckoutRules(
        amount_limits=c.amount_limits, default_expires_in=c.default_expires_in,
        min_expires_in=c.min_expires_in, max_expires_in=c.max_expires_in,
        max_metadata_bytes=c.max_metadata_bytes,
    )


def build(settings: Settings, *, clock: Clock | None = None) -> Container:
    if clock is None:
        clock = (OffsetFileClock(settings.gameday.clock_file) if settings.gameday.clock_file
                 else SystemClock())
    db = Database(create_engine(settings.database))
    rng = random.Random()
    metrics = Metrics()
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200,
                                                 max_keepalive_connections=50),
                             verify=default_trust(),
                             event_hooks={"response": [tracing.note_http_status]})
    redis = (aioredis.Redis.from_url(settings.redis.url, socket_timeout=0.25,
                                     socket_connect_timeout=0.25)
             if settings.redis.url else None)
    # A feed polled every minute would need ten failed polls to trip the default policy.
    feed_policy = replace(settings.breaker, minimum_number_of_calls=3)
    breakers = BreakerRegistry(settings.breaker, overrides={"feed:*": feed_policy},
                               redis=redis, key_prefix=settings.redis.key_prefix,
                               metrics=metrics, clock=clock, rng=rng)
    route_controls = RouteControls(db, clock=clock, refresh=timedelta(seconds=2))
    providers = build_providers(settings, http, metrics)
    guard = BreakerGuard(breakers)
    router = Router(providers, guard, route_controls,
                    RouterSettings(capture_budget=settings.providers.capture_budget),
                    clock.now)
    issuance = IssuanceService(db, router, codes=settings.unique_codes, clock=clock,
                               callback_base_url=settings.http.base_url, rng=rng,
                               schedule=settings.verification.schedule, metrics=metrics)
    in_flight = settings.providers.capture_budget + timedelta(seconds=10)
    v = settings.verification
    pacer = RequestPacer({provider: Pace(per_minute=rate, burst=v.burst, headroom=v.headroom)
                          for provider, rate in v.status_reads_per_minute.items() if rate > 0},
                         redis=redis, key_prefix=settings.redis.key_prefix,
                         on_redis_pause=metrics.redis_pauses.labels("request_pacing").inc)
    reads = StatusReads(providers, guard, pacer)
    gateway_jobs = GatewayJobs(db, issuance, providers, guard, clock, reads=reads,
                               in_flight=in_flight, quarantine=settings.unique_codes.quarantine,
                               schedule=settings.verification.schedule, metrics=metrics)
    sp = settings.status_page
    status_page = StatusPage(
        db, clock, lambda: components_for(catalog_of(router.catalog()), MANUAL_ROUTE.key),
        redis=redis, key_prefix=settings.redis.key_prefix, public_url=settings.http.base_url,
        lookup_limit=LookupLimit(per_client=sp.lookups_per_client,
                                 per_order=sp.lookups_per_order, window=sp.lookup_window),
        cache_ttl=sp.cache_ttl,
        on_redis_pause=metrics.redis_pauses.labels("status_page_lookups").inc)
    reconciliation = ReconciliationService(
        db, clock=clock, metrics=metrics, quarantine=settings.unique_codes.quarantine,
        reversal_window=settings.reconciliation.reversal_window)
    unreadable = UnreadableFeedItems(db)
    return Container(
        settings=settings,
        db=db,
        clock=clock,
        capture=CaptureService(db, rules=checkout_rules(settings), codes=settings.unique_codes,
                               clock=clock, metrics=metrics, rng=rng,
                               issuance=issuance if providers else None, in_flight=in_flight),
        reconciliation=reconciliation,
        auth=Authenticator(db),
        metrics=metrics,
        route_controls=route_controls,
        http=http,
        redis=redis,
        breakers=breakers,
        providers=providers,
        router=router,
        issuance=issuance,
        gateway_jobs=gateway_jobs,
        verifier=Verifier(db, reads, guard, gateway_jobs, clock, settings.verification,
                          quarantine=settings.unique_codes.quarantine, in_flight=in_flight,
                          metrics=metrics),
        state_sampler=StateSampler(db, metrics, clock, codes=settings.unique_codes.codes,
                                   router=router, controls=route_controls),
        status_page=status_page,
        crash_after_commit=(CrashAfterCommit(settings.gameday.exit_after_commit)
                            if settings.gameday.exit_after_commit else None),
        provider_webhooks=ProviderWebhooks(
            db, reads, clock,
            midtrans_server_key=settings.providers.midtrans_server_key,
            xendit_callback_token=settings.providers.xendit_callback_token,
            quarantine=settings.unique_codes.quarantine,
            claim_lease=settings.verification.claim, schedule=settings.verification.schedule,
            confirm_wait=settings.verification.confirm_wait, metrics=metrics),
        settled_reads=SettledReads(db, reads, clock, schedule=settings.verification.schedule,
                                   quarantine=settings.unique_codes.quarantine, metrics=metrics),
        unreadable_feed_items=unreadable,
        feed_poller=build_feed_poller(settings, http, reconciliation, unreadable, breakers,
                                      clock, metrics, redis),
        rng=rng,
    )


def build_feed_poller(settings: Settings, http: httpx.AsyncClient,
                      reconciliation: ReconciliationService, unreadable: UnreadableFeedItems,
                      breakers: BreakerRegistry, clock: Clock, metrics: Metrics,
                      redis: aioredis.Redis | None) -> FeedPoller | None:
    """The mutation-feed poller, or ``None`` when no feed URL is configured."""
    f = settings.feed
    if not f.moota_url:
        return None
    feed = MootaFeedClient(base_url=f.moota_url, token=f.moota_token, client=http,
                           timeout=f.call_timeout.total_seconds())
    return FeedPoller(feed, reconciliation, unreadable, breakers, clock, metrics,
                      poll_interval=f.poll_interval, stale_after=f.stale_after, redis=redis,
                      key_prefix=settings.redis.key_prefix, max_unreadable=f.max_unreadable)


def build_providers(settings: Settings, http: httpx.AsyncClient,
                    metrics: Metrics | None = None) -> dict[str, PaymentProvider]:
    """Adapters for the gateways that have a URL configured.

    They keep the system clock, not Lunas's (which a game day moves forward): the times they
    send and compare (Midtrans's expiry start, Xendit's expiration dates) are the provider's
    time, and the providers, simulated or real, live on the wall clock."""
    p = settings.providers
    calls = (metrics or Metrics()).provider_call_seconds

    def observe(provider: str, operation: str, outcome: str, seconds: float) -> None:
        calls.labels(provider, operation, outcome).observe(seconds)

    timeout = p.call_timeout.total_seconds()
    base = settings.http.base_url
    providers: dict[str, PaymentProvider] = {}
    if p.midtrans_url:
        providers["midtrans"] = MidtransProvider(
            base_url=p.midtrans_url, server_key=p.midtrans_server_key, client=http,
            timeout=timeout, notification_url=f"{base}/v1/webhooks/midtrans", observe=observe)
    if p.xendit_url:
        providers["xendit"] = XenditProvider(
            base_url=p.xendit_url, secret_key=p.xendit_secret_key, client=http, timeout=timeout,
            callback_url=f"{base}/v1/webhooks/xendit", return_url=f"{base}/status/return",
            observe=observe)
    # Each call in a client span (provider, operation, route, outcome, HTTP status).
    return {name: tracing.TracedProvider(adapter) for name, adapter in providers.items()}
