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


def test_variables_are_read_and_typed() -> None:
    s = Settings.from_env({
        "LUNAS_DATABASE_URL": "postgresql+asyncpg://u@db/lunas", "LUNAS_PORT": "9000",
        "LUNAS_REDIS_URL": "redis://r:6379/2", "LUNAS_OUTBOX_BACKOFF": "1,2.5",
        "LUNAS_UNIQUE_CODE_LOW": "100", "LUNAS_UNIQUE_CODE_HIGH": "500",
        "LUNAS_WORKER_ID": " w-1 ", "LUNAS_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
    })
    assert not s.database.is_sqlite and s.http.port == 9000
    assert s.redis.url == "redis://r:6379/2"
    assert s.outbox.backoff == (timedelta(seconds=1), timedelta(seconds=2.5))
    assert (s.unique_codes.codes.low, s.unique_codes.codes.high) == (100, 500)
    assert s.worker_id == "w-1"
    assert s.http.trusted_proxies == ("10.0.0.0/8", "::1")


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
])
def test_bad_or_unsafe_settings_are_refused_naming_the_variable(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_an_inconsistent_breaker_policy_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="invalid settings"):
        Settings.from_env({"LUNAS_BREAKER_WAIT_OPEN": "900"})  # above the 5-minute maximum


def test_retention_keeps_provider_deliveries_for_ever_unless_told() -> None:
    kept = Settings.from_env({}).retention
    assert kept.provider_deliveries is None
    assert (kept.idempotency_keys, kept.done_events) == (timedelta(days=7), timedelta(days=30))
    told = Settings.from_env({"LUNAS_RETENTION_PROVIDER_DELIVERIES": str(400 * 86400)})
    assert told.retention.provider_deliveries == timedelta(days=400)


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
