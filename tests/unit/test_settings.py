"""Settings are read once from LUNAS_* variables, validated, and unsafe production refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.cli import main
from orchestrator.rails.breaker import BreakerConfig
from orchestrator.settings import Settings, SettingsError


def test_nothing_set_means_the_embedded_default() -> None:
    s = Settings.from_env({})
    assert s.database.is_sqlite and s.redis.url is None
    assert (s.http.host, s.http.port) == ("127.0.0.1", 8000)
    assert (s.unique_codes.codes.low, s.unique_codes.codes.high) == (1, 999)


def test_settings_built_in_code_have_the_defaults_an_empty_environment_gives() -> None:
    """Tests and embedders build ``Settings()``; deployments read ``from_env``. One default
    each, or a test passes against a policy production never runs (the breaker's longest
    open wait was 5 minutes one way and 60 s the other)."""
    assert Settings() == Settings.from_env({})


def test_variables_are_read_and_typed() -> None:
    s = Settings.from_env({
        "LUNAS_DATABASE_URL": "postgresql+asyncpg://u@db/lunas", "LUNAS_PORT": "9000",
        "LUNAS_REDIS_URL": "redis://r:6379/2", "LUNAS_OUTBOX_BACKOFF": "1,2.5",
        "LUNAS_UNIQUE_CODE_LOW": "100", "LUNAS_UNIQUE_CODE_HIGH": "500",
        "LUNAS_WORKER_ID": " w-1 ", "LUNAS_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
        "LUNAS_OUTBOX_CONCURRENCY": "32", "LUNAS_OUTBOX_MERCHANT_CONCURRENCY": "2",
    })
    assert not s.database.is_sqlite and s.http.port == 9000
    assert s.redis.url == "redis://r:6379/2"
    assert s.outbox.backoff == (timedelta(seconds=1), timedelta(seconds=2.5))
    assert (s.unique_codes.codes.low, s.unique_codes.codes.high) == (100, 500)
    assert s.worker_id == "w-1"
    assert (s.outbox.concurrency, s.outbox.merchant_concurrency) == (32, 2)
    assert s.http.trusted_proxies == ("10.0.0.0/8", "::1")


def test_a_rotated_webhook_secret_signs_beside_the_new_one_for_a_day_unless_told() -> None:
    assert Settings.from_env({}).webhooks.secret_overlap == timedelta(days=1)
    assert Settings.from_env({"LUNAS_WEBHOOK_SECRET_OVERLAP": "3600"}).webhooks.secret_overlap \
        == timedelta(hours=1)


def test_production_webhooks_reach_private_addresses_only_when_told() -> None:
    production = {"LUNAS_ENV": "production", "LUNAS_DATABASE_URL": "postgresql+asyncpg://u@db/l",
                  "LUNAS_MUTATION_PUSH_SECRET": "push-secret-for-this-test"}
    assert Settings.from_env({}).webhooks_reach_private  # development: local receivers
    assert not Settings.from_env(production).webhooks_reach_private
    assert Settings.from_env({**production, "LUNAS_WEBHOOK_ALLOW_PRIVATE": "1"}) \
        .webhooks_reach_private
    with pytest.raises(SettingsError, match="LUNAS_WEBHOOK_ALLOW_PRIVATE"):
        Settings.from_env({"LUNAS_WEBHOOK_ALLOW_PRIVATE": "maybe"})


@pytest.mark.parametrize(("env", "named"), [
    ({"LUNAS_PORT": "eighty"}, "LUNAS_PORT"),
    ({"LUNAS_OUTBOX_LEASE": "-1"}, "LUNAS_OUTBOX_LEASE"),
    ({"LUNAS_TRUSTED_PROXIES": "10.0.0.0/8,lb.internal"}, "LUNAS_TRUSTED_PROXIES"),
    ({"LUNAS_TRUSTED_PROXIES": "10.0.0.1/8"}, "LUNAS_TRUSTED_PROXIES"),
    ({"LUNAS_UNIQUE_CODE_LOW": "9", "LUNAS_UNIQUE_CODE_HIGH": "3"}, "LUNAS_UNIQUE_CODE_LOW"),
    ({"LUNAS_ENV": "production", "LUNAS_DATABASE_URL": "postgresql+asyncpg://u@db/l"},
     "LUNAS_MUTATION_PUSH_SECRET"),
    ({"LUNAS_ENV": "production", "LUNAS_MUTATION_PUSH_SECRET": "s3cret-from-vault"},
     "LUNAS_DATABASE_URL"),
    ({"LUNAS_RETENTION_IDEMPOTENCY_KEYS": "3600"}, "LUNAS_RETENTION_IDEMPOTENCY_KEYS"),
    ({"LUNAS_RETENTION_DONE_EVENTS": "0"}, "LUNAS_RETENTION_DONE_EVENTS"),
    ({"LUNAS_RETENTION_PROVIDER_DELIVERIES": "60"}, "LUNAS_RETENTION_PROVIDER_DELIVERIES"),
    ({"LUNAS_RETENTION_INTERVAL": "0"}, "LUNAS_RETENTION_INTERVAL"),
    ({"LUNAS_FEED_MAX_UNREADABLE": "-1"}, "LUNAS_FEED_MAX_UNREADABLE"),
    ({"LUNAS_WEBHOOK_SECRET_OVERLAP": "-1"}, "LUNAS_WEBHOOK_SECRET_OVERLAP"),
    ({"LUNAS_WEBHOOK_SECRET_OVERLAP": "2678400"}, "LUNAS_WEBHOOK_SECRET_OVERLAP"),  # 31 days
    ({"LUNAS_OUTBOX_CONCURRENCY": "0"}, "LUNAS_OUTBOX_CONCURRENCY"),
    ({"LUNAS_OUTBOX_MERCHANT_CONCURRENCY": "0"}, "LUNAS_OUTBOX_MERCHANT_CONCURRENCY"),
])
def test_bad_or_unsafe_settings_are_refused_naming_the_variable(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize(("given", "used"), [
    ("postgresql+asyncpg://u:p%40ss@db:5433/lunas", "postgresql+asyncpg://u:p%40ss@db:5433/lunas"),
    ("postgresql://u:p%40ss@db:5433/lunas", "postgresql+asyncpg://u:p%40ss@db:5433/lunas"),
    ("postgres://u@db/lunas", "postgresql+asyncpg://u@db/lunas"),
    ("sqlite:///./shop.db", "sqlite+aiosqlite:///./shop.db"),
    ("sqlite+aiosqlite:////var/lib/lunas.db", "sqlite+aiosqlite:////var/lib/lunas.db"),
    ("", "sqlite+aiosqlite:///./lunas.db"),
])
def test_a_database_url_is_read_with_the_async_driver_lunas_ships(given: str, used: str) -> None:
    assert Settings.from_env({"LUNAS_DATABASE_URL": given}).database.url == used


@pytest.mark.parametrize("url", ["mysql://u:hunter2@db/lunas", "postgresql+psycopg://u:hunter2@db/l",
                                 "hunter2", "sqlite+pysqlite:///x.db"])
def test_any_other_database_url_is_refused_naming_the_forms_it_could_take(url: str) -> None:
    with pytest.raises(SettingsError,
                       match=r"^LUNAS_DATABASE_URL .*postgresql://.*sqlite:///") as e:
        Settings.from_env({"LUNAS_DATABASE_URL": url})
    assert "hunter2" not in str(e.value)  # a URL may carry a password: it is never repeated


@pytest.mark.parametrize("url", ["notaurl", "http://cache:6379", "redis://cache:port/0"])
def test_a_redis_url_redis_cannot_connect_by_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(SettingsError, match=r"^LUNAS_REDIS_URL: .*redis://127\.0\.0\.1:6379/0"):
        Settings.from_env({"LUNAS_REDIS_URL": url})


def test_an_inconsistent_breaker_policy_is_refused_naming_both_variables() -> None:
    with pytest.raises(SettingsError,
                       match=r"LUNAS_BREAKER_WAIT_OPEN \(900\) .* LUNAS_BREAKER_MAX_WAIT_OPEN"):
        Settings.from_env({"LUNAS_BREAKER_WAIT_OPEN": "900"})  # above the 60-second maximum


@pytest.mark.parametrize(("env", "message"), [
    # an unknown environment ran as development, every production check skipped
    ({"LUNAS_ENV": "prod"}, "LUNAS_ENV must be one of development, production, got 'prod'"),
    ({"LUNAS_OUTBOX_BACKOFF": "abc"}, "LUNAS_OUTBOX_BACKOFF must be seconds separated by commas, "
                                      "each above 0"),
    ({"LUNAS_OUTBOX_BACKOFF": "10,-5"}, "LUNAS_OUTBOX_BACKOFF .* above 0 .* got '-5'"),
    ({"LUNAS_OUTBOX_BATCH": "0"}, "LUNAS_OUTBOX_BATCH must be a whole number at least 1, got '0'"),
    ({"LUNAS_WEBHOOK_TIMEOUT": "0"}, "LUNAS_WEBHOOK_TIMEOUT must be a number of seconds above 0"),
    ({"LUNAS_WEBHOOK_TIMEOUT": "inf"}, "LUNAS_WEBHOOK_TIMEOUT .* got 'inf'"),
    ({"LUNAS_WEBHOOK_TIMEOUT": "nan"}, "LUNAS_WEBHOOK_TIMEOUT .* got 'nan'"),
    ({"LUNAS_SWEEP_INTERVAL": "0"}, "LUNAS_SWEEP_INTERVAL must be a number of seconds above 0"),
    ({"LUNAS_MAX_BODY_BYTES": "-1"}, "LUNAS_MAX_BODY_BYTES must be a whole number at least 1"),
    ({"LUNAS_STATUS_READS_PER_MINUTE_XENDIT": "0"},
     "LUNAS_STATUS_READS_PER_MINUTE_XENDIT must be a number above 0, got '0'"),
    ({"LUNAS_STATUS_READS_HEADROOM": "1"}, "LUNAS_STATUS_READS_HEADROOM .* at least 0 and below 1"),
    ({"LUNAS_BREAKER_FAILURE_RATE": "1.5"}, "LUNAS_BREAKER_FAILURE_RATE .* above 0 and at most 1"),
    ({"LUNAS_PORT": "70000"}, "LUNAS_PORT must be a whole number from 1 to 65535"),
    ({"LUNAS_WORKER_METRICS_PORT": "-1"}, "LUNAS_WORKER_METRICS_PORT .* from 0 to 65535"),
    ({"LUNAS_DEFAULT_EXPIRES_IN": "10"}, "LUNAS_DEFAULT_EXPIRES_IN .* from 300 to 604800"),
    ({"LUNAS_MIN_AMOUNT": "5000", "LUNAS_MAX_AMOUNT": "10"},
     r"LUNAS_MIN_AMOUNT \(5000\) must not be above LUNAS_MAX_AMOUNT \(10\)"),
    ({"LUNAS_VERIFY_SCHEDULE_VA": "60,x"}, "LUNAS_VERIFY_SCHEDULE_VA .* got 'x'"),
    ({"LUNAS_SIMULATORS": "maybe"}, "LUNAS_SIMULATORS must be 1, true, yes or on"),
])
def test_a_value_out_of_range_is_refused_naming_the_variable_and_the_range(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def _numeric_settings() -> dict[str, object]:
    """Every variable ``from_env`` reads as a number, with its allowed range: read through the
    one reader, so a setting added later is in this list without anyone adding it."""
    from orchestrator import settings as module

    read: dict[str, object] = {}

    class Recording(module._Env):
        def int(self, name: str, default: int, allowed: object = module._AT_LEAST_ONE) -> int:
            read[name] = allowed
            return super().int(name, default, allowed)  # type: ignore[arg-type]

        def float(self, name: str, default: float, allowed: object) -> float:
            read[name] = allowed
            return super().float(name, default, allowed)  # type: ignore[arg-type]

        def seconds(self, name: str, default: float,
                    allowed: object = module._POSITIVE_SECONDS) -> timedelta:
            read[name] = allowed
            return super().seconds(name, default, allowed)  # type: ignore[arg-type]

        def seconds_list(self, name: str,
                         allowed: object = module._POSITIVE_SECONDS) -> tuple[timedelta, ...]:
            read[name] = allowed
            return super().seconds_list(name, allowed)  # type: ignore[arg-type]

    Settings._from_env(Recording({}))
    return read


def test_every_numeric_setting_is_read_with_a_range() -> None:
    numeric = _numeric_settings()
    assert {"LUNAS_OUTBOX_BATCH", "LUNAS_WEBHOOK_TIMEOUT", "LUNAS_PORT", "LUNAS_OUTBOX_BACKOFF",
            "LUNAS_STATUS_READS_PER_MINUTE_XENDIT", "LUNAS_VERIFY_SCHEDULE_QRIS"} <= set(numeric)
    assert len(numeric) > 50


@pytest.mark.parametrize("name", sorted(_numeric_settings()))
@pytest.mark.parametrize("value", ["-1", "soon", "inf", "1e400"])
def test_every_numeric_setting_refuses_a_negative_a_word_and_infinity_by_name(
    name: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=f"^{name} must be .*, got '{value}'$"):
        Settings.from_env({name: value})


@pytest.mark.parametrize("name", sorted(n for n, allowed in _numeric_settings().items()
                                        if 0 not in allowed))  # type: ignore[operator]
def test_a_zero_is_refused_where_it_would_mean_nothing(name: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name} must be"):
        Settings.from_env({name: "0"})


def test_a_zero_that_means_off_is_taken() -> None:
    s = Settings.from_env({name: "0" for name in (
        "LUNAS_REVERSAL_WINDOW", "LUNAS_FEED_MAX_UNREADABLE", "LUNAS_WORKER_METRICS_PORT",
        "LUNAS_STATUS_CACHE_TTL", "LUNAS_STATUS_WORSEN_AFTER", "LUNAS_UNIQUE_CODE_LOW")})
    assert s.reconciliation.reversal_window == s.status_page.cache_ttl == timedelta(0)
    assert s.status_page.worsen_after == timedelta(0)
    assert s.feed.max_unreadable == s.http.worker_metrics_port == s.unique_codes.codes.low == 0


@pytest.mark.parametrize(("lease", "webhook"), [
    ("60", "45"),  # the default lease leaves a try 45 s: exactly that is too long
    ("10", "8"),
    ("2", "2"),
    ("", "0"),  # every try would time out before it began
])
def test_a_webhook_timeout_that_does_not_fit_inside_the_outbox_lease_is_refused(
    lease: str, webhook: str
) -> None:
    """A merchant try must end by its own timeout inside three quarters of the lease (the
    relay's handler timeout), leaving the rest for recording its outcome."""
    with pytest.raises(SettingsError, match="LUNAS_WEBHOOK_TIMEOUT") as refused:
        Settings.from_env({"LUNAS_OUTBOX_LEASE": lease, "LUNAS_WEBHOOK_TIMEOUT": webhook})
    if webhook != "0":
        assert "LUNAS_OUTBOX_LEASE" in str(refused.value)


@pytest.mark.parametrize(("lease", "webhook"), [("", ""), ("60", "44.9"), ("3", "2")])
def test_a_webhook_timeout_inside_the_lease_is_accepted(lease: str, webhook: str) -> None:
    s = Settings.from_env({"LUNAS_OUTBOX_LEASE": lease, "LUNAS_WEBHOOK_TIMEOUT": webhook})
    assert s.webhooks.timeout < s.outbox.handler_timeout == s.outbox.lease * 0.75


def test_retention_keeps_provider_deliveries_for_ever_unless_told() -> None:
    kept = Settings.from_env({}).retention
    assert kept.provider_deliveries is None
    assert (kept.idempotency_keys, kept.done_events) == (timedelta(days=7), timedelta(days=30))
    told = Settings.from_env({"LUNAS_RETENTION_PROVIDER_DELIVERIES": str(400 * 86400)})
    assert told.retention.provider_deliveries == timedelta(days=400)


@pytest.mark.parametrize(("quarantine", "done"), [
    (str(3 * 86400), str(86400)),  # a weekend's quarantine, a day's outbox
    (str(86400 + 1), str(86400)),
])
def test_done_events_kept_shorter_than_the_code_quarantine_are_refused(
    quarantine: str, done: str
) -> None:
    """A closed attempt's watch, its cancel's retries and its one read after the cancel run
    until the quarantine of its closing ends, each started at most once by a fixed event id
    (``watch_``, ``cancel<n>_``, ``recheck_``, ``refused_``). Pruned before that, the id is
    free again and a cancel retried after a long outage starts a second watch of the same
    instrument beside the first."""
    with pytest.raises(SettingsError, match="LUNAS_RETENTION_DONE_EVENTS") as refused:
        Settings.from_env({"LUNAS_UNIQUE_CODE_QUARANTINE": quarantine,
                           "LUNAS_RETENTION_DONE_EVENTS": done})
    assert "LUNAS_UNIQUE_CODE_QUARANTINE" in str(refused.value)


def test_done_events_kept_as_long_as_the_code_quarantine_are_accepted() -> None:
    s = Settings.from_env({"LUNAS_UNIQUE_CODE_QUARANTINE": "86400",
                           "LUNAS_RETENTION_DONE_EVENTS": "86400"})
    assert s.retention.done_events == s.unique_codes.quarantine == timedelta(days=1)


PRODUCTION = {"LUNAS_ENV": "production", "LUNAS_DATABASE_URL": "postgresql+asyncpg://u@db/l",
              "LUNAS_MUTATION_PUSH_SECRET": "s3cret-from-vault"}


def test_a_production_worker_without_a_metrics_port_is_refused() -> None:
    """Nobody would scrape its breakers or the feed's freshness (LunasMutationFeedStale)."""
    with pytest.raises(SettingsError, match="LUNAS_WORKER_METRICS_PORT"):
        Settings.from_env(PRODUCTION).refuse_unscraped_production_worker()
    Settings.from_env({**PRODUCTION, "LUNAS_WORKER_METRICS_PORT": "9100"}
                      ).refuse_unscraped_production_worker()
    Settings.from_env({}).refuse_unscraped_production_worker()  # development: optional


def test_lunas_worker_refuses_to_start_in_production_without_a_metrics_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LUNAS_WORKER_METRICS_PORT", raising=False)
    assert main(["worker"]) == 2
    assert "LUNAS_WORKER_METRICS_PORT" in capsys.readouterr().err


def test_the_breaker_policy_by_default_is_the_documented_one() -> None:
    """README's defaults for the LUNAS_BREAKER_* variables, and BreakerConfig's own for what
    no variable sets (slow-call rate, growth, jitter, round length)."""
    assert Settings.from_env({}).breaker == BreakerConfig(
        failure_rate_threshold=0.5, slow_call_rate_threshold=0.8,
        slow_call_duration=timedelta(seconds=1), sliding_window=timedelta(seconds=30),
        minimum_number_of_calls=10, permitted_calls_in_half_open=3,
        wait_in_open=timedelta(seconds=30), wait_multiplier=2.0,
        max_wait_in_open=timedelta(seconds=60), wait_jitter=0.2,
        max_wait_in_half_open=timedelta(seconds=30))
