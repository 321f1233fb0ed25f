"""Typed, grouped settings: the only place that reads the environment (``LUNAS_*`` variables).

With nothing set, Lunas runs embedded: a SQLite file in the working directory and in-process state.
``Settings.from_env`` validates everything once at start-up and refuses to start in production with
an insecure default.

Every number is read through one reader (``_Env``) that knows its allowed range: a count is at
least 1 and a duration above zero unless its reader says zero means something (``REVERSAL_WINDOW=0``
looks for no reversals), so a new setting is checked without anyone remembering to. A value out of
range is refused naming the variable and the range, never taken as "off" or left to a loop that
spins or a timeout that never waits.
"""

from __future__ import annotations

import builtins
import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TypeVar

from orchestrator.domain.money import MAX_RUPIAH, AmountLimits, UniqueCodeRange
from orchestrator.domain.verification import DEFAULT_SETTLED_READS, VerificationSchedule
from orchestrator.notify.egress import EgressPolicy
from orchestrator.rails.base import Rail
from orchestrator.rails.breaker import BreakerConfig
from orchestrator.reconciliation.matcher import REVERSAL_WINDOW


class SettingsError(ValueError):
    """A setting is missing, malformed or unsafe; the message names the variable."""


ENVIRONMENTS = ("development", "production")
"""``LUNAS_ENV``: anything else is refused, so ``prod`` cannot quietly skip production's checks."""


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    url: str = "sqlite+aiosqlite:///./lunas.db"
    """SQLAlchemy async URL: ``postgresql+asyncpg://...`` in production, SQLite embedded."""
    pool_size: int = 20
    """Connections per process on PostgreSQL (ignored on SQLite)."""

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    url: str | None = None
    """``redis://host:port/db``; unset means in-process state only (the embedded default)."""
    key_prefix: str = "lunas:"
    """Every key Lunas writes starts with this, so tests and tenants can share a server."""


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    """Base URL printed to users; derived from host and port when empty."""
    max_body_bytes: int = 1_048_576
    """Request bodies above this are refused with 413 (uploads get ``max_upload_bytes``)."""
    max_upload_bytes: int = 10_485_760
    worker_metrics_port: int = 0
    """Where ``lunas worker`` serves its own Prometheus metrics (0: not served). Each process
    is its own scrape target; the api's ``/metrics`` also carries the database-sampled state."""
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    """The proxies (addresses or networks) whose ``X-Forwarded-For`` names the client. uvicorn
    reads the header right to left past these, so the client address (logs, the status page's
    per-client lookup limit) is the customer's, not the load balancer's; a client connecting
    from anywhere else cannot claim another address. The default trusts a proxy on this host."""

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class CheckoutSettings:
    amount_limits: AmountLimits = field(
        default_factory=lambda: AmountLimits(minimum=1, maximum=1_000_000_000)
    )
    default_expires_in: timedelta = timedelta(hours=24)
    min_expires_in: timedelta = timedelta(minutes=5)
    max_expires_in: timedelta = timedelta(days=7)
    max_metadata_bytes: int = 4096


@dataclass(frozen=True, kw_only=True)
class UniqueCodeSettings:
    codes: UniqueCodeRange = field(default_factory=lambda: UniqueCodeRange(low=1, high=999))
    quarantine: timedelta = timedelta(hours=1)
    """How long a closed attempt keeps its transfer amount before it returns to the pool, so a
    late transfer of the old amount is recognised as late instead of paying a new order; the
    amount returns only once the WIB day this ends in is over (``expiry.release_cutoff``)."""
    allocation_tries: int = 8


@dataclass(frozen=True, kw_only=True)
class ReconciliationSettings:
    reversal_window: timedelta = REVERSAL_WINDOW
    """``LUNAS_REVERSAL_WINDOW``: how long after a credit that paid an order a debit of its
    amount opens a possible-reversal case (``matcher.REVERSAL_WINDOW``); zero: never."""


HANDLER_SHARE = 0.75
"""The share of the outbox lease one handler call may take (``OutboxSettings.handler_timeout``)."""


@dataclass(frozen=True, kw_only=True)
class OutboxSettings:
    batch_size: int = 50
    """Most events one claim leases; a claim never takes more than the relay has free slots."""
    lease: timedelta = timedelta(seconds=60)
    """A claimed event no one finished is claimable again after this (a killed worker's)."""
    poll_interval: timedelta = timedelta(milliseconds=200)
    backoff: tuple[timedelta, ...] = (
        timedelta(seconds=10), timedelta(seconds=30), timedelta(minutes=2),
        timedelta(minutes=10), timedelta(minutes=30), timedelta(hours=1),
        timedelta(hours=2), timedelta(hours=4), timedelta(hours=8), timedelta(hours=8),
    )
    """Wait before retry n (1-based); one more than its length is the last try, then dead letter.
    The default spans about a day, as merchant webhooks should."""
    concurrency: int = 16
    """``LUNAS_OUTBOX_CONCURRENCY``: handlers one worker runs at once, its relay's slots. The
    relay claims again whenever one is free, so a slow handler holds its slot and no other."""
    merchant_concurrency: int = 4
    """``LUNAS_OUTBOX_MERCHANT_CONCURRENCY``: of those slots, at most this many deliver to one
    merchant's webhook endpoint at once (never more than ``concurrency``). An endpoint that answers
    slowly or not at all (each try lasting up to ``LUNAS_WEBHOOK_TIMEOUT``) then holds this many
    slots, and every other merchant's webhooks and every other job keep the rest."""

    @property
    def handler_timeout(self) -> timedelta:
        """How long one handler call may run: three quarters of the lease, so it ends inside the
        lease with time left to record its outcome (the relay's default)."""
        return self.lease * HANDLER_SHARE


MAX_WEBHOOK_SECRET_OVERLAP = timedelta(days=30)
"""The longest a rotated webhook secret may keep signing (the setting, or ``--overlap``): one
replaced because it may have leaked should stop within weeks, not years."""


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    timeout: timedelta = timedelta(seconds=10)
    secret_overlap: timedelta = timedelta(hours=24)
    """After ``lunas merchants rotate-secret``, how long deliveries are still signed under the
    previous secret too (a second ``v1``), so the merchant can deploy the new one meanwhile."""
    allow_private: bool = False
    """``LUNAS_WEBHOOK_ALLOW_PRIVATE``, for production (elsewhere always allowed, for local
    receivers): let webhooks go to a host on loopback, a private network or link-local, for
    merchants reached over a private network. Off, such a host is refused before connecting,
    so a webhook URL cannot make the worker call its own neighbours (``Settings
    .webhooks_reach_private``)."""
    allow_http: bool = False
    """``LUNAS_WEBHOOK_ALLOW_HTTP``, for production (elsewhere always allowed): let webhooks go
    over plain ``http://``. Off, such a URL is refused when set and when delivered: the
    signature proves who sent the order data, it does not hide it."""


@dataclass(frozen=True, kw_only=True)
class SchedulerSettings:
    sweep_interval: timedelta = timedelta(seconds=1)
    """How often a worker looks for orders past their deadline and codes past quarantine."""
    sweep_batch: int = 200
    verification_window: timedelta = timedelta(hours=6)
    """How long an order may wait in ``verifying`` for an unknown attempt to be resolved before it
    goes to a person (``needs_review``) instead, counted from when the sweep put it there (not
    from its deadline: a worker back from a long outage must still have it read first)."""


@dataclass(frozen=True, kw_only=True)
class RetentionSettings:
    """Rows the worker deletes once their work is done and they are this old
    (``services/retention.py``)."""

    interval: timedelta = timedelta(hours=1)
    """How often a worker prunes (``LUNAS_RETENTION_INTERVAL``)."""
    idempotency_keys: timedelta = timedelta(days=7)
    """``LUNAS_RETENTION_IDEMPOTENCY_KEYS``; at least a day (clients' retries must replay)."""
    done_events: timedelta = timedelta(days=30)
    """``LUNAS_RETENTION_DONE_EVENTS``: delivered outbox events; at least a day, and no shorter
    than the code quarantine (``_refuse_done_events_pruned_within_the_quarantine``)."""
    provider_deliveries: timedelta | None = None
    """``LUNAS_RETENTION_PROVIDER_DELIVERIES``; unset keeps every delivery for ever."""
    batch: int = 5_000
    """Rows deleted per transaction."""


@dataclass(frozen=True, kw_only=True)
class VerificationSettings:
    """Status reads of live attempts (``services/verification.py``)."""

    schedule: VerificationSchedule = field(default_factory=VerificationSchedule)
    status_reads_per_minute: Mapping[str, float] = field(
        default_factory=lambda: {"midtrans": 600.0, "xendit": 600.0})
    """Pace of status requests per provider, shared by every process through Redis. Xendit
    documents 600 a minute per endpoint on live keys; Midtrans documents none for status, so the
    same figure is a cautious default."""
    burst: int = 1
    headroom: float = 0.10
    """Fraction of each provider's limit left unused (``rails.ratelimit.Pace.headroom``)."""
    interval: timedelta = timedelta(seconds=0.5)
    """How often a worker looks for due checks and for routes that recovered."""
    batch: int = 200
    concurrency: int = 16
    """Status reads one worker has in flight at once per provider (each waits for its
    provider's paced slot; ``batch`` too is per provider, so one provider's backlog never holds
    up another's reads)."""
    confirm_wait: timedelta = timedelta(seconds=2)
    """How long the status read confirming a signed Midtrans payment notification may wait for
    a slot of the provider's status pace. It runs in a relay slot: under a burst of
    notifications, reads waiting their turn there would hold every slot and starve the other
    jobs. One whose slot is further off hands the attempt to the verifier, brought forward
    (``provider_webhooks._confirm_now``). 0: only a slot free now."""
    claim: timedelta = timedelta(seconds=60)
    """A claimed check not finished by then (worker killed) becomes due again."""


@dataclass(frozen=True, kw_only=True)
class ProviderSettings:
    """Payment gateways. An empty URL means the provider is not configured (its routes are not
    offered). The embedded default points them at the local simulators it starts."""

    midtrans_url: str = ""
    midtrans_server_key: str = "SB-Mid-server-lunas-dev"
    xendit_url: str = ""
    xendit_secret_key: str = "xnd_development_lunas"  # noqa: S105 - refused in production
    xendit_callback_token: str = "dev-xendit-callback-token"  # noqa: S105
    call_timeout: timedelta = timedelta(seconds=2)
    """Per provider call; the router also bounds each call by what is left of the budget."""
    capture_budget: timedelta = timedelta(seconds=3)
    """Total time a capture request may spend getting instructions from providers."""
    start_simulators: bool = False
    """Start the chaos/ simulators in-process (``lunas run`` on the embedded default)."""

    @property
    def development_keys(self) -> bool:
        return (self.midtrans_server_key == ProviderSettings.midtrans_server_key
                or self.xendit_secret_key == ProviderSettings.xendit_secret_key
                or self.xendit_callback_token == ProviderSettings.xendit_callback_token)


@dataclass(frozen=True, kw_only=True)
class FeedSettings:
    """The Moota-style mutation feed poller (RAILS.md §3.1). An empty URL turns the poller off
    (the signed push alone feeds the mutation store)."""

    moota_url: str = ""
    """Base URL of the Moota API v2, e.g. ``https://app.moota.co/api/v2``."""
    moota_token: str = ""
    """Personal token sent as ``Authorization: Bearer``."""
    poll_interval: timedelta = timedelta(seconds=60)
    stale_after: timedelta = timedelta(minutes=20)
    """The feed counts as stale when no poll succeeded for this long."""
    call_timeout: timedelta = timedelta(seconds=10)
    max_unreadable: int = 20
    """New unreadable items one poll may set aside for a person (``LUNAS_FEED_MAX_UNREADABLE``).
    More than that is not an odd item but a feed whose format changed: the poll fails and the
    feed goes stale (its alert fires) rather than silently skipping everything."""


@dataclass(frozen=True, kw_only=True)
class TelemetrySettings:
    """Traces and logs (``orchestrator/telemetry``)."""

    otlp_endpoint: str = ""
    """Base URL of an OTLP/HTTP collector (``LUNAS_OTLP_ENDPOINT``, else the standard
    ``OTEL_EXPORTER_OTLP_ENDPOINT``); spans go to ``{endpoint}/v1/traces``. Empty: no exporter,
    and spans are not even recorded (tracing costs next to nothing)."""
    service_name: str = "lunas"
    """``service.name`` of exported spans (``LUNAS_SERVICE_NAME``, else ``OTEL_SERVICE_NAME``)."""
    log_format: str = "json"
    """``json`` (one object per line, for collectors) or ``text``; both are redacted."""
    log_level: str = "INFO"

    @property
    def traces_endpoint(self) -> str:
        """The OTLP/HTTP traces URL, or empty when tracing is off."""
        base = self.otlp_endpoint.rstrip("/")
        if not base or base.endswith("/v1/traces"):
            return base
        return f"{base}/v1/traces"


@dataclass(frozen=True, kw_only=True)
class StatusPageSettings:
    """The public status page (statuspage/): how often the worker evaluates components, how long
    a new status must hold before customers see it, and how often a customer may look up orders."""

    interval: timedelta = timedelta(seconds=15)
    worsen_after: timedelta = timedelta(seconds=60)
    recover_after: timedelta = timedelta(minutes=5)
    success_window: timedelta = timedelta(minutes=5)
    lookups_per_client: int = 10
    lookups_per_order: int = 10
    lookup_window: timedelta = timedelta(minutes=10)
    cache_ttl: timedelta = timedelta(seconds=2)


@dataclass(frozen=True, kw_only=True)
class GameDaySettings:
    """Hooks for ``lunas chaos run`` (orchestrator/gameday.py); refused in production."""

    clock_file: str = ""
    exit_after_commit: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.clock_file or self.exit_after_commit)


DEFAULT_BREAKER = _B = BreakerConfig(slow_call_duration=timedelta(seconds=1),
                                     max_wait_in_open=timedelta(seconds=60))
"""The breaker policy of ``Settings()`` and of an environment that sets no LUNAS_BREAKER_*:
BreakerConfig's own defaults but for a slow call, which must be well inside the capture budget
to count, and the longest open wait, a minute, so a recovered provider is tried again soon."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    environment: str = "development"
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    checkout: CheckoutSettings = field(default_factory=CheckoutSettings)
    unique_codes: UniqueCodeSettings = field(default_factory=UniqueCodeSettings)
    reconciliation: ReconciliationSettings = field(default_factory=ReconciliationSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    providers: ProviderSettings = field(default_factory=ProviderSettings)
    feed: FeedSettings = field(default_factory=FeedSettings)
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    status_page: StatusPageSettings = field(default_factory=StatusPageSettings)
    gameday: GameDaySettings = field(default_factory=GameDaySettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    breaker: BreakerConfig = field(default_factory=lambda: DEFAULT_BREAKER)
    """Per-route breaker policy (``DEFAULT_BREAKER`` unless LUNAS_BREAKER_* say otherwise)."""
    # The development default; production refuses to start with it (refuse_insecure_production).
    mutation_push_secret: str = "dev-moota-secret"  # noqa: S105
    worker_id: str = ""
    """Lease owner written on claimed outbox rows; empty means ``<hostname>-<pid>``."""
    """HMAC secret of the Moota-style mutation push (``Signature`` header)."""

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def webhooks_reach_private(self) -> bool:
        """Whether merchant webhooks may go to non-public addresses: outside production always
        (the demo's and tests' receivers listen on 127.0.0.1), in production only when
        ``LUNAS_WEBHOOK_ALLOW_PRIVATE`` says so."""
        return not self.is_production or self.webhooks.allow_private

    @property
    def webhook_egress(self) -> EgressPolicy:
        """Where merchant webhooks may go: checked when a URL is set and on every try."""
        return EgressPolicy(public_only=not self.webhooks_reach_private,
                            https_only=self.is_production and not self.webhooks.allow_http)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        try:
            return cls._from_env(_Env(os.environ if env is None else env))
        except ValueError as exc:  # a value object refused its arguments: name the problem
            if isinstance(exc, SettingsError):
                raise
            raise SettingsError(f"invalid settings: {exc}") from exc

    @classmethod
    def _from_env(cls, e: _Env) -> Settings:
        low = e.int("LUNAS_UNIQUE_CODE_LOW", 1, _Range(low=0))
        high = e.int("LUNAS_UNIQUE_CODE_HIGH", 999, _Range(low=0))
        _ordered("LUNAS_UNIQUE_CODE_LOW", low, "LUNAS_UNIQUE_CODE_HIGH", high)
        minimum = e.int("LUNAS_MIN_AMOUNT", 1, _Range(low=1, high=MAX_RUPIAH))
        maximum = e.int("LUNAS_MAX_AMOUNT", 1_000_000_000, _Range(low=1, high=MAX_RUPIAH))
        _ordered("LUNAS_MIN_AMOUNT", minimum, "LUNAS_MAX_AMOUNT", maximum)
        wait_open = e.seconds("LUNAS_BREAKER_WAIT_OPEN", _B.wait_in_open.total_seconds())
        max_wait_open = e.seconds("LUNAS_BREAKER_MAX_WAIT_OPEN",
                                  _B.max_wait_in_open.total_seconds())
        _ordered("LUNAS_BREAKER_WAIT_OPEN", wait_open.total_seconds(),
                 "LUNAS_BREAKER_MAX_WAIT_OPEN", max_wait_open.total_seconds())
        expires = CheckoutSettings()
        settings = cls(
            environment=_choice(e.str("LUNAS_ENV", "development").strip().lower(), "LUNAS_ENV",
                                ENVIRONMENTS),
            database=DatabaseSettings(
                url=_database_url(e.str("LUNAS_DATABASE_URL", "") or DatabaseSettings.url,
                                  "LUNAS_DATABASE_URL"),
                pool_size=e.int("LUNAS_DATABASE_POOL_SIZE", 20),
            ),
            redis=RedisSettings(
                url=_redis_url(e.str("LUNAS_REDIS_URL", ""), "LUNAS_REDIS_URL"),
                key_prefix=e.str("LUNAS_REDIS_PREFIX", "lunas:"),
            ),
            http=HttpSettings(
                host=e.str("LUNAS_HOST", "127.0.0.1"),
                port=e.int("LUNAS_PORT", 8000, _PORT),
                public_url=e.str("LUNAS_PUBLIC_URL", ""),
                max_body_bytes=e.int("LUNAS_MAX_BODY_BYTES", 1_048_576),
                max_upload_bytes=e.int("LUNAS_MAX_UPLOAD_BYTES", 10_485_760),
                worker_metrics_port=e.int("LUNAS_WORKER_METRICS_PORT", 0,
                                          _Range(low=0, high=_PORT.high)),
                trusted_proxies=_networks(e.str("LUNAS_TRUSTED_PROXIES", "127.0.0.1,::1"),
                                          "LUNAS_TRUSTED_PROXIES"),
            ),
            checkout=CheckoutSettings(
                amount_limits=AmountLimits(minimum=minimum, maximum=maximum),
                # The range a merchant may ask for: the default is an order that did not ask.
                default_expires_in=e.seconds("LUNAS_DEFAULT_EXPIRES_IN", 86_400, _Range(
                    low=expires.min_expires_in.total_seconds(),
                    high=expires.max_expires_in.total_seconds())),
            ),
            unique_codes=UniqueCodeSettings(
                codes=UniqueCodeRange(low=low, high=high),
                quarantine=e.seconds("LUNAS_UNIQUE_CODE_QUARANTINE", 3_600),
            ),
            reconciliation=ReconciliationSettings(
                reversal_window=e.seconds("LUNAS_REVERSAL_WINDOW",
                                          REVERSAL_WINDOW.total_seconds(), _ZERO_OR_MORE),
            ),
            outbox=OutboxSettings(
                batch_size=e.int("LUNAS_OUTBOX_BATCH", 50),
                lease=e.seconds("LUNAS_OUTBOX_LEASE", 60),
                poll_interval=e.seconds("LUNAS_OUTBOX_POLL", 0.2),
                backoff=e.seconds_list("LUNAS_OUTBOX_BACKOFF") or OutboxSettings().backoff,
                concurrency=e.int("LUNAS_OUTBOX_CONCURRENCY", 16),
                merchant_concurrency=e.int("LUNAS_OUTBOX_MERCHANT_CONCURRENCY", 4),
            ),
            webhooks=WebhookSettings(
                timeout=e.seconds("LUNAS_WEBHOOK_TIMEOUT", 10),
                # 0 drops the previous secret at once (one that leaked).
                secret_overlap=e.seconds("LUNAS_WEBHOOK_SECRET_OVERLAP", 86_400, _Range(
                    low=0, high=MAX_WEBHOOK_SECRET_OVERLAP.total_seconds())),
                allow_private=e.flag("LUNAS_WEBHOOK_ALLOW_PRIVATE"),
                allow_http=e.flag("LUNAS_WEBHOOK_ALLOW_HTTP"),
            ),
            scheduler=SchedulerSettings(
                sweep_interval=e.seconds("LUNAS_SWEEP_INTERVAL", 1),
                verification_window=e.seconds("LUNAS_VERIFICATION_WINDOW", 6 * 3600),
            ),
            providers=ProviderSettings(
                midtrans_url=e.str("LUNAS_MIDTRANS_URL", ""),
                midtrans_server_key=e.str("LUNAS_MIDTRANS_SERVER_KEY",
                                          ProviderSettings.midtrans_server_key),
                xendit_url=e.str("LUNAS_XENDIT_URL", ""),
                xendit_secret_key=e.str("LUNAS_XENDIT_SECRET_KEY",
                                        ProviderSettings.xendit_secret_key),
                xendit_callback_token=e.str("LUNAS_XENDIT_CALLBACK_TOKEN",
                                            ProviderSettings.xendit_callback_token),
                call_timeout=e.seconds("LUNAS_PROVIDER_TIMEOUT", 2),
                capture_budget=e.seconds("LUNAS_CAPTURE_BUDGET", 3),
                start_simulators=e.flag("LUNAS_SIMULATORS"),
            ),
            feed=FeedSettings(
                moota_url=e.str("LUNAS_MOOTA_URL", "").rstrip("/"),
                moota_token=e.str("LUNAS_MOOTA_TOKEN", ""),
                poll_interval=e.seconds("LUNAS_FEED_POLL_INTERVAL", 60),
                stale_after=e.seconds("LUNAS_FEED_STALE_AFTER", 20 * 60),
                max_unreadable=e.int("LUNAS_FEED_MAX_UNREADABLE", 20, _Range(low=0)),
            ),
            verification=VerificationSettings(
                schedule=VerificationSchedule.with_gaps(
                    {rail: e.seconds_list(f"LUNAS_VERIFY_SCHEDULE_{rail.name}")
                     for rail in (Rail.VA, Rail.QRIS, Rail.EWALLET)},
                    retry_after_failure=e.seconds("LUNAS_VERIFY_RETRY_AFTER", 30),
                    # Set but empty: a paid attempt is never read again (unset: the default).
                    settled_reads=(() if e.blank("LUNAS_SETTLED_RECHECKS") else
                                   e.seconds_list("LUNAS_SETTLED_RECHECKS")
                                   or DEFAULT_SETTLED_READS)),
                status_reads_per_minute={
                    provider: e.float(f"LUNAS_STATUS_READS_PER_MINUTE_{provider.upper()}", 600.0,
                                      _Range(low=0, low_open=True))
                    for provider in ("midtrans", "xendit")},
                burst=e.int("LUNAS_STATUS_READS_BURST", 1),
                headroom=e.float("LUNAS_STATUS_READS_HEADROOM", 0.10,
                                 _Range(low=0, high=1, high_open=True)),
                interval=e.seconds("LUNAS_VERIFY_INTERVAL", 0.5),
                concurrency=e.int("LUNAS_VERIFY_CONCURRENCY", 16),
                # Longer would hold a relay slot for most of a handler's timeout.
                confirm_wait=e.seconds("LUNAS_CONFIRM_READ_WAIT", 2, _Range(low=0, high=30)),
            ),
            telemetry=TelemetrySettings(
                otlp_endpoint=(e.str("LUNAS_OTLP_ENDPOINT", "")
                               or e.str("OTEL_EXPORTER_OTLP_ENDPOINT", "")).strip(),
                service_name=(e.str("LUNAS_SERVICE_NAME", "")
                              or e.str("OTEL_SERVICE_NAME", "") or "lunas").strip(),
                log_format=_choice(e.str("LUNAS_LOG_FORMAT", "json").strip().lower(),
                                   "LUNAS_LOG_FORMAT", ("json", "text")),
                log_level=_choice(e.str("LUNAS_LOG_LEVEL", "INFO").strip().upper(),
                                  "LUNAS_LOG_LEVEL",
                                  ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
            ),
            status_page=StatusPageSettings(
                interval=e.seconds("LUNAS_STATUS_INTERVAL", 15),
                worsen_after=e.seconds("LUNAS_STATUS_WORSEN_AFTER", 60, _ZERO_OR_MORE),
                recover_after=e.seconds("LUNAS_STATUS_RECOVER_AFTER", 300, _ZERO_OR_MORE),
                success_window=e.seconds("LUNAS_STATUS_SUCCESS_WINDOW", 300),
                lookups_per_client=e.int("LUNAS_STATUS_LOOKUPS_PER_CLIENT", 10),
                lookups_per_order=e.int("LUNAS_STATUS_LOOKUPS_PER_ORDER", 10),
                lookup_window=e.seconds("LUNAS_STATUS_LOOKUP_WINDOW", 600),
                cache_ttl=e.seconds("LUNAS_STATUS_CACHE_TTL", 2, _ZERO_OR_MORE),
            ),
            retention=RetentionSettings(
                # A pause of a loop: shorter would make it spin.
                interval=e.seconds("LUNAS_RETENTION_INTERVAL", 3600, _Range(low=1)),
                idempotency_keys=e.seconds("LUNAS_RETENTION_IDEMPOTENCY_KEYS", 7 * 86400,
                                           _A_DAY_OR_MORE),
                done_events=e.seconds("LUNAS_RETENTION_DONE_EVENTS", 30 * 86400, _A_DAY_OR_MORE),
                provider_deliveries=(
                    None if not e.str("LUNAS_RETENTION_PROVIDER_DELIVERIES", "") else
                    e.seconds("LUNAS_RETENTION_PROVIDER_DELIVERIES", 0, _A_DAY_OR_MORE)),
            ),
            gameday=GameDaySettings(
                clock_file=e.str("LUNAS_GAMEDAY_CLOCK_FILE", ""),
                exit_after_commit=e.int("LUNAS_GAMEDAY_EXIT_AFTER_COMMIT", 0, _Range(low=0)),
            ),
            mutation_push_secret=e.str("LUNAS_MUTATION_PUSH_SECRET", "dev-moota-secret"),
            worker_id=e.str("LUNAS_WORKER_ID", "").strip(),
            breaker=replace(
                _B,
                failure_rate_threshold=e.float("LUNAS_BREAKER_FAILURE_RATE",
                                               _B.failure_rate_threshold,
                                               _Range(low=0, low_open=True, high=1)),
                slow_call_duration=e.seconds("LUNAS_BREAKER_SLOW_CALL",
                                             _B.slow_call_duration.total_seconds()),
                sliding_window=e.seconds("LUNAS_BREAKER_WINDOW",
                                         _B.sliding_window.total_seconds()),
                minimum_number_of_calls=e.int("LUNAS_BREAKER_MIN_CALLS",
                                              _B.minimum_number_of_calls),
                permitted_calls_in_half_open=e.int("LUNAS_BREAKER_HALF_OPEN_CALLS",
                                                   _B.permitted_calls_in_half_open),
                wait_in_open=wait_open,
                max_wait_in_open=max_wait_open,
            ),
        )
        _refuse_a_webhook_timeout_outside_the_lease(settings)
        _refuse_done_events_pruned_within_the_quarantine(settings)
        settings.refuse_insecure_production()
        return settings

    def refuse_insecure_production(self) -> None:
        if not self.is_production:
            return
        if self.gameday.enabled:
            raise SettingsError("LUNAS_GAMEDAY_* hooks are for game days, never production")
        if self.mutation_push_secret == "dev-moota-secret":  # noqa: S105
            raise SettingsError("LUNAS_MUTATION_PUSH_SECRET is the development default")
        if self.database.is_sqlite:
            raise SettingsError("LUNAS_DATABASE_URL must point at PostgreSQL in production")
        p = self.providers
        if (p.midtrans_url or p.xendit_url) and p.development_keys:
            raise SettingsError("LUNAS_MIDTRANS_SERVER_KEY / LUNAS_XENDIT_SECRET_KEY / "
                                "LUNAS_XENDIT_CALLBACK_TOKEN are development defaults")
        if p.start_simulators:
            raise SettingsError("LUNAS_SIMULATORS must be off in production")
        if self.feed.moota_url and not self.feed.moota_token:
            raise SettingsError("LUNAS_MOOTA_URL is set but LUNAS_MOOTA_TOKEN is empty")

    def refuse_unscraped_production_worker(self) -> None:
        """For ``lunas worker`` only (the api serves its own ``/metrics``; ``lunas run`` serves
        the worker's metrics through the api's): a production worker without a metrics port is
        scraped by nobody, so its breakers and the feed's freshness are invisible and
        LunasMutationFeedStale can never fire."""
        if self.is_production and not self.http.worker_metrics_port:
            raise SettingsError("LUNAS_WORKER_METRICS_PORT must be set for `lunas worker` in "
                                "production: without it nobody scrapes the worker's breakers "
                                "or the mutation feed's freshness")


def _refuse_a_webhook_timeout_outside_the_lease(settings: Settings) -> None:
    """A merchant webhook try must end by its own timeout inside the relay's handler timeout
    (three quarters of the outbox lease; the last quarter is the margin for the endpoint lookup,
    a late start and the outcome write). A webhook timeout at or past it is a promise the relay
    does not keep: it cancels the try at its own, shorter, timeout, so merchants get less time
    than configured and the event's error reads "handler timed out" instead of the webhook's."""
    webhook = settings.webhooks.timeout.total_seconds()
    lease = settings.outbox.lease.total_seconds()
    handler = settings.outbox.handler_timeout.total_seconds()
    if webhook >= handler:
        raise SettingsError(
            f"LUNAS_WEBHOOK_TIMEOUT ({_shown(webhook)} s) must be shorter than "
            f"{HANDLER_SHARE:g} × LUNAS_OUTBOX_LEASE ({HANDLER_SHARE:g} × {_shown(lease)} s = "
            f"{_shown(handler)} s): a webhook try must end inside the outbox lease with time left "
            f"to record its outcome. Raise LUNAS_OUTBOX_LEASE above "
            f"{_shown(round(webhook / HANDLER_SHARE, 2))} s or lower the webhook timeout")


def _refuse_done_events_pruned_within_the_quarantine(settings: Settings) -> None:
    """Jobs about a closed attempt run until the code quarantine of its closing ends: the watch
    of an instrument its provider would not cancel, its cancel tried again, its read after the
    cancel. Each is started at most once by a fixed event id (``gateway_jobs``: ``watch_``,
    ``refused_``, ``recheck_``), which refuses a second start only while the first row is kept.
    Pruned sooner, a cancel refused after a long outage starts a second watch of the same
    instrument beside the first (tests/integration/test_fixed_job_ids.py); kept as long, the
    id comes free only once the watch is over, when starting it again does nothing."""
    done = settings.retention.done_events.total_seconds()
    quarantine = settings.unique_codes.quarantine.total_seconds()
    if done < quarantine:
        raise SettingsError(
            f"LUNAS_RETENTION_DONE_EVENTS ({_shown(done)} s) must not be shorter than "
            f"LUNAS_UNIQUE_CODE_QUARANTINE ({_shown(quarantine)} s): a closed attempt's watch "
            "is started once by a job id that retention would free while the watch still runs")


@dataclass(frozen=True, kw_only=True)
class _Range:
    """The values a numeric setting may take; an open end excludes the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None and not (self.low_open
                                                                   or self.high_open):
            return f"from {_shown(self.low)} to {_shown(self.high)}"
        parts = []
        if self.low is not None:
            parts.append(f"{'above' if self.low_open else 'at least'} {_shown(self.low)}")
        if self.high is not None:
            parts.append(f"{'below' if self.high_open else 'at most'} {_shown(self.high)}")
        return " and ".join(parts)


def _shown(value: float) -> str:
    """``3153600000``, ``0.5``: never ``3.1536e+09`` in a message an operator reads."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


_N = TypeVar("_N", int, float)
_MAX_SECONDS = 100 * 365 * 86_400
"""The longest duration any setting takes (a century; more overflows ``timedelta``)."""
_AT_LEAST_ONE = _Range(low=1)
"""Counts: a batch, a pool, a concurrency of zero would do nothing, and quietly."""
_POSITIVE_SECONDS = _Range(low=0, low_open=True, high=_MAX_SECONDS)
"""Intervals, timeouts and windows: zero would spin a loop or give up before trying."""
_ZERO_OR_MORE = _Range(low=0, high=_MAX_SECONDS)
"""For the durations whose zero means something (no reversal window, no dwell, no cache)."""
_A_DAY_OR_MORE = _Range(low=86_400, high=_MAX_SECONDS)
"""Retentions: shorter would delete what is still in use (a client's retry within the hour, an
event the relay is about to mark done, a delivery still being handled)."""
_PORT = _Range(low=1, high=65_535)


def _ordered(low_name: str, low: float, high_name: str, high: float) -> None:
    """Two settings that bound a range between them."""
    if low > high:
        raise SettingsError(f"{low_name} ({_shown(low)}) must not be above {high_name} "
                            f"({_shown(high)})")


def _choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


_ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg",
                  "postgresql+asyncpg": "postgresql+asyncpg",
                  "sqlite": "sqlite+aiosqlite", "sqlite+aiosqlite": "sqlite+aiosqlite"}
"""The schemes Lunas runs on, to the async driver each means: Lunas ships asyncpg and aiosqlite
only, so ``postgresql://`` (as psql and libpq write it, ``postgres://`` as some hosts do) and
``sqlite:///`` can mean nothing else here."""
_DATABASE_URL_FORMS = ("postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (or "
                       "postgresql+asyncpg://...) or sqlite:///FILE (or sqlite+aiosqlite:///FILE)")


def _database_url(raw: str, name: str) -> str:
    """``raw`` with its scheme rewritten to the async driver, or refused naming the accepted
    forms. The message never repeats the URL: it may carry a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = raw.strip()
    try:
        scheme = make_url(text).drivername
    except ArgumentError:
        raise SettingsError(f"{name} is not a database URL; write {_DATABASE_URL_FORMS}") from None
    if scheme not in _ASYNC_DRIVERS:
        raise SettingsError(f"{name} names {scheme}, which Lunas cannot use; write "
                            f"{_DATABASE_URL_FORMS}")
    # Only the scheme changes: re-rendering the URL could re-quote a password.
    return _ASYNC_DRIVERS[scheme] + text[len(scheme):]


def _redis_url(raw: str, name: str) -> str | None:
    """A URL redis-py can connect by, checked now rather than at the first Redis call."""
    from redis.connection import parse_url

    url = raw.strip()
    if not url:
        return None
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:  # its messages name the problem, never the URL (or its password)
        raise SettingsError(f"{name}: {exc}; e.g. redis://127.0.0.1:6379/0") from None
    return url


def _networks(raw: str, name: str) -> tuple[str, ...]:
    """A comma-separated list of IP addresses or networks, each checked now."""
    specs = tuple(s.strip() for s in raw.split(",") if s.strip())
    for spec in specs:
        try:
            # Strict, as uvicorn reads it: "10.0.0.1/8" (host bits set) would be taken there as a
            # name that never matches, and the balancer silently not trusted.
            ipaddress.ip_network(spec)
        except ValueError:
            raise SettingsError(f"{name}: {spec!r} is not an IP address or network (write "
                                f"a network by its base address, e.g. 10.0.0.0/8)") from None
    return specs


class _Env:
    """Reads one variable each, refusing a value outside its ``_Range`` by name. Unset or empty
    means the default (but for ``LUNAS_SETTLED_RECHECKS``, where empty means never: ``blank``)."""

    # Its method names shadow the builtins inside the class body, hence ``builtins.str``.
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def str(self, name: builtins.str, default: builtins.str) -> builtins.str:
        return self._env.get(name, default)

    def flag(self, name: builtins.str) -> bool:
        """Off unless set; a value that is neither on nor off is refused, not taken as off."""
        raw = self._env.get(name, "").strip().lower()
        if raw in ("", "0", "false", "no", "off"):
            return False
        if raw in ("1", "true", "yes", "on"):
            return True
        raise SettingsError(f"{name} must be 1, true, yes or on (0, false, no or off: off), "
                            f"got {raw!r}")

    def blank(self, name: builtins.str) -> bool:
        """Set, to nothing: for the one setting where that means "never", not the default."""
        raw = self._env.get(name)
        return raw is not None and not raw.strip()

    def _raw(self, name: builtins.str) -> builtins.str | None:
        raw = self._env.get(name)
        return None if raw is None or not raw.strip() else raw

    def int(self, name: builtins.str, default: builtins.int,
            allowed: _Range = _AT_LEAST_ONE) -> builtins.int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = builtins.int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number {allowed}, got {raw!r}") from None
        return _within(name, raw, value, allowed, "a whole number")

    def float(self, name: builtins.str, default: builtins.float,
              allowed: _Range) -> builtins.float:
        raw = self._raw(name)
        return default if raw is None else _number(name, raw, allowed, "a number")

    def seconds(self, name: builtins.str, default: builtins.float,
                allowed: _Range = _POSITIVE_SECONDS) -> timedelta:
        raw = self._raw(name)
        return timedelta(seconds=default if raw is None else
                         _number(name, raw, allowed, "a number of seconds"))

    def seconds_list(self, name: builtins.str,
                     allowed: _Range = _POSITIVE_SECONDS) -> tuple[timedelta, ...]:
        """Comma-separated seconds, each in ``allowed``; empty when unset."""
        raw = self._raw(name) or ""
        parts = [part for part in raw.split(",") if part.strip()]
        if raw.strip() and not parts:  # "," is a typo, not a wish for the default
            raise SettingsError(f"{name} must be seconds separated by commas, got {raw!r}")
        return tuple(timedelta(seconds=_number(name, part, allowed, "seconds separated by "
                                               "commas, each")) for part in parts)


def _number(name: str, raw: str, allowed: _Range, kind: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {kind} {allowed}, got {raw!r}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be {kind} {allowed}, got {raw!r}")
    return _within(name, raw, value, allowed, kind)


def _within(name: str, raw: str, value: _N, allowed: _Range, kind: str) -> _N:
    if value not in allowed:
        raise SettingsError(f"{name} must be {kind} {allowed}, got {raw!r}")
    return value
