"""Typed, grouped settings: the only place that reads the environment (``LUNAS_*`` variables).

With nothing set, Lunas runs embedded: a SQLite file in the working directory and in-process state.
``Settings.from_env`` validates everything once at start-up and refuses to start in production with
an insecure default.
"""

from __future__ import annotations

import builtins
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from orchestrator.domain.money import AmountLimits, UniqueCodeRange
from orchestrator.domain.verification import VerificationSchedule
from orchestrator.rails.base import Rail
from orchestrator.rails.breaker import BreakerConfig
from orchestrator.reconciliation.matcher import REVERSAL_WINDOW


class SettingsError(ValueError):
    """A setting is missing, malformed or unsafe; the message names the variable."""


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
    late transfer of the old amount is recognised as late instead of paying a new order."""
    allocation_tries: int = 8


@dataclass(frozen=True, kw_only=True)
class ReconciliationSettings:
    reversal_window: timedelta = REVERSAL_WINDOW
    """``LUNAS_REVERSAL_WINDOW``: how long after a credit that paid an order a debit of its
    amount opens a possible-reversal case (``matcher.REVERSAL_WINDOW``); zero: never."""


@dataclass(frozen=True, kw_only=True)
class OutboxSettings:
    batch_size: int = 50
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
    """Events of one claimed batch handled at once by a worker."""


MAX_WEBHOOK_SECRET_OVERLAP = timedelta(days=30)
"""The longest a rotated webhook secret may keep signing (the setting, or ``--overlap``): one
replaced because it may have leaked should stop within weeks, not years."""


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    timeout: timedelta = timedelta(seconds=10)
    secret_overlap: timedelta = timedelta(hours=24)
    """After ``lunas merchants rotate-secret``, how long deliveries are still signed under the
    previous secret too (a second ``v1``), so the merchant can deploy the new one meanwhile."""


@dataclass(frozen=True, kw_only=True)
class SchedulerSettings:
    sweep_interval: timedelta = timedelta(seconds=1)
    """How often a worker looks for orders past their deadline and codes past quarantine."""
    sweep_batch: int = 200
    verification_window: timedelta = timedelta(hours=6)
    """How long past its deadline an order may wait in ``verifying`` for an unknown attempt to be
    resolved before it goes to a person (``needs_review``) instead."""


@dataclass(frozen=True, kw_only=True)
class RetentionSettings:
    """Rows the worker deletes once their work is done and they are this old
    (``services/retention.py``)."""

    interval: timedelta = timedelta(hours=1)
    """How often a worker prunes (``LUNAS_RETENTION_INTERVAL``)."""
    idempotency_keys: timedelta = timedelta(days=7)
    """``LUNAS_RETENTION_IDEMPOTENCY_KEYS``; at least a day (clients' retries must replay)."""
    done_events: timedelta = timedelta(days=30)
    """``LUNAS_RETENTION_DONE_EVENTS``: delivered outbox events; at least a day."""
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
    """Status reads one worker has in flight at once (each waits for its paced slot)."""
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
    breaker: BreakerConfig = field(default_factory=lambda: BreakerConfig(
        slow_call_duration=timedelta(seconds=1)))
    """Per-route breaker policy. A slow call must be well inside the capture budget to count."""
    # The development default; production refuses to start with it (refuse_insecure_production).
    mutation_push_secret: str = "dev-moota-secret"  # noqa: S105
    worker_id: str = ""
    """Lease owner written on claimed outbox rows; empty means ``<hostname>-<pid>``."""
    """HMAC secret of the Moota-style mutation push (``Signature`` header)."""

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

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
        low, high = e.int("LUNAS_UNIQUE_CODE_LOW", 1), e.int("LUNAS_UNIQUE_CODE_HIGH", 999)
        if not 0 <= low <= high:
            raise SettingsError(f"LUNAS_UNIQUE_CODE_LOW..HIGH must be a range, got {low}..{high}")
        settings = cls(
            environment=e.str("LUNAS_ENV", "development"),
            database=DatabaseSettings(
                url=e.str("LUNAS_DATABASE_URL", DatabaseSettings.url),
                pool_size=e.int("LUNAS_DATABASE_POOL_SIZE", 20),
            ),
            redis=RedisSettings(
                url=e.str("LUNAS_REDIS_URL", "") or None,
                key_prefix=e.str("LUNAS_REDIS_PREFIX", "lunas:"),
            ),
            http=HttpSettings(
                host=e.str("LUNAS_HOST", "127.0.0.1"),
                port=e.int("LUNAS_PORT", 8000),
                public_url=e.str("LUNAS_PUBLIC_URL", ""),
                max_body_bytes=e.int("LUNAS_MAX_BODY_BYTES", 1_048_576),
                max_upload_bytes=e.int("LUNAS_MAX_UPLOAD_BYTES", 10_485_760),
                worker_metrics_port=e.int("LUNAS_WORKER_METRICS_PORT", 0),
                trusted_proxies=_networks(e.str("LUNAS_TRUSTED_PROXIES", "127.0.0.1,::1"),
                                          "LUNAS_TRUSTED_PROXIES"),
            ),
            checkout=CheckoutSettings(
                amount_limits=AmountLimits(
                    minimum=e.int("LUNAS_MIN_AMOUNT", 1),
                    maximum=e.int("LUNAS_MAX_AMOUNT", 1_000_000_000),
                ),
                default_expires_in=e.seconds("LUNAS_DEFAULT_EXPIRES_IN", 86_400),
            ),
            unique_codes=UniqueCodeSettings(
                codes=UniqueCodeRange(low=low, high=high),
                quarantine=e.seconds("LUNAS_UNIQUE_CODE_QUARANTINE", 3_600),
            ),
            reconciliation=ReconciliationSettings(
                reversal_window=e.seconds("LUNAS_REVERSAL_WINDOW",
                                          REVERSAL_WINDOW.total_seconds()),
            ),
            outbox=OutboxSettings(
                batch_size=e.int("LUNAS_OUTBOX_BATCH", 50),
                lease=e.seconds("LUNAS_OUTBOX_LEASE", 60),
                poll_interval=e.seconds("LUNAS_OUTBOX_POLL", 0.2),
                backoff=tuple(
                    timedelta(seconds=float(s))
                    for s in e.str("LUNAS_OUTBOX_BACKOFF", "").split(",") if s.strip()
                ) or OutboxSettings().backoff,
            ),
            webhooks=WebhookSettings(
                timeout=e.seconds("LUNAS_WEBHOOK_TIMEOUT", 10),
                secret_overlap=_at_most_a_month(e.seconds("LUNAS_WEBHOOK_SECRET_OVERLAP",
                                                          86_400),
                                                "LUNAS_WEBHOOK_SECRET_OVERLAP"),
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
                start_simulators=e.str("LUNAS_SIMULATORS", "") in ("1", "true", "yes"),
            ),
            feed=FeedSettings(
                moota_url=e.str("LUNAS_MOOTA_URL", "").rstrip("/"),
                moota_token=e.str("LUNAS_MOOTA_TOKEN", ""),
                poll_interval=e.seconds("LUNAS_FEED_POLL_INTERVAL", 60),
                stale_after=e.seconds("LUNAS_FEED_STALE_AFTER", 20 * 60),
                max_unreadable=_at_least(e.int("LUNAS_FEED_MAX_UNREADABLE", 20), 0,
                                         "LUNAS_FEED_MAX_UNREADABLE"),
            ),
            verification=VerificationSettings(
                schedule=VerificationSchedule.from_text(
                    {rail: e.str(f"LUNAS_VERIFY_SCHEDULE_{rail.name}", "")
                     for rail in (Rail.VA, Rail.QRIS, Rail.EWALLET)},
                    retry_after_failure=e.seconds("LUNAS_VERIFY_RETRY_AFTER", 30)),
                status_reads_per_minute={
                    provider: e.float(f"LUNAS_STATUS_READS_PER_MINUTE_{provider.upper()}", 600.0)
                    for provider in ("midtrans", "xendit")},
                burst=e.int("LUNAS_STATUS_READS_BURST", 1),
                headroom=e.float("LUNAS_STATUS_READS_HEADROOM", 0.10),
                interval=e.seconds("LUNAS_VERIFY_INTERVAL", 0.5),
                concurrency=e.int("LUNAS_VERIFY_CONCURRENCY", 16),
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
                worsen_after=e.seconds("LUNAS_STATUS_WORSEN_AFTER", 60),
                recover_after=e.seconds("LUNAS_STATUS_RECOVER_AFTER", 300),
                success_window=e.seconds("LUNAS_STATUS_SUCCESS_WINDOW", 300),
                lookups_per_client=e.int("LUNAS_STATUS_LOOKUPS_PER_CLIENT", 10),
                lookups_per_order=e.int("LUNAS_STATUS_LOOKUPS_PER_ORDER", 10),
                lookup_window=e.seconds("LUNAS_STATUS_LOOKUP_WINDOW", 600),
                cache_ttl=e.seconds("LUNAS_STATUS_CACHE_TTL", 2),
            ),
            retention=RetentionSettings(
                interval=_at_least_a_second(e.seconds("LUNAS_RETENTION_INTERVAL", 3600),
                                            "LUNAS_RETENTION_INTERVAL"),
                idempotency_keys=_at_least_a_day(
                    e.seconds("LUNAS_RETENTION_IDEMPOTENCY_KEYS", 7 * 86400),
                    "LUNAS_RETENTION_IDEMPOTENCY_KEYS"),
                done_events=_at_least_a_day(e.seconds("LUNAS_RETENTION_DONE_EVENTS", 30 * 86400),
                                            "LUNAS_RETENTION_DONE_EVENTS"),
                provider_deliveries=(
                    None if not e.str("LUNAS_RETENTION_PROVIDER_DELIVERIES", "") else
                    _at_least_a_day(e.seconds("LUNAS_RETENTION_PROVIDER_DELIVERIES", 0),
                                    "LUNAS_RETENTION_PROVIDER_DELIVERIES")),
            ),
            gameday=GameDaySettings(
                clock_file=e.str("LUNAS_GAMEDAY_CLOCK_FILE", ""),
                exit_after_commit=e.int("LUNAS_GAMEDAY_EXIT_AFTER_COMMIT", 0),
            ),
            mutation_push_secret=e.str("LUNAS_MUTATION_PUSH_SECRET", "dev-moota-secret"),
            worker_id=e.str("LUNAS_WORKER_ID", "").strip(),
            breaker=BreakerConfig(
                failure_rate_threshold=e.float("LUNAS_BREAKER_FAILURE_RATE", 0.5),
                slow_call_duration=e.seconds("LUNAS_BREAKER_SLOW_CALL", 1),
                sliding_window=e.seconds("LUNAS_BREAKER_WINDOW", 30),
                minimum_number_of_calls=e.int("LUNAS_BREAKER_MIN_CALLS", 10),
                permitted_calls_in_half_open=e.int("LUNAS_BREAKER_HALF_OPEN_CALLS", 3),
                wait_in_open=e.seconds("LUNAS_BREAKER_WAIT_OPEN", 30),
                max_wait_in_open=e.seconds("LUNAS_BREAKER_MAX_WAIT_OPEN", 60),
            ),
        )
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


def _at_least(value: int, minimum: int, name: str) -> int:
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _at_least_a_second(value: timedelta, name: str) -> timedelta:
    """For the pause of a loop: zero would make it spin."""
    return _seconds_at_least(value, timedelta(seconds=1), name)


def _at_least_a_day(value: timedelta, name: str) -> timedelta:
    """A retention shorter than a day would delete what is still in use: a client's retry within
    the hour, an event the relay is about to mark done, a delivery still being handled."""
    return _seconds_at_least(value, timedelta(days=1), name)


def _at_most_a_month(value: timedelta, name: str) -> timedelta:
    if value > MAX_WEBHOOK_SECRET_OVERLAP:
        raise SettingsError(f"{name} must be at most "
                            f"{MAX_WEBHOOK_SECRET_OVERLAP.total_seconds():g} seconds, "
                            f"got {value.total_seconds():g}")
    return value


def _seconds_at_least(value: timedelta, minimum: timedelta, name: str) -> timedelta:
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum.total_seconds():g} seconds, got "
                            f"{value.total_seconds():g}")
    return value


def _choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


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
    # Its method names shadow the builtins inside the class body, hence ``builtins.str``.
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def str(self, name: builtins.str, default: builtins.str) -> builtins.str:
        return self._env.get(name, default)

    def int(self, name: builtins.str, default: builtins.int) -> builtins.int:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None

    def float(self, name: builtins.str, default: builtins.float) -> builtins.float:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return builtins.float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None

    def seconds(self, name: builtins.str, default: builtins.float) -> timedelta:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return timedelta(seconds=default)
        try:
            value = builtins.float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
        if value < 0:
            raise SettingsError(f"{name} must not be negative, got {raw!r}")
        return timedelta(seconds=value)
