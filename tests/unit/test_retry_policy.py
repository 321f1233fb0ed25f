"""The outbox retry policy: when a failed event is tried again, and when it is a dead letter."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.outbox.retry import DeadLetter, Retry, RetryPolicy
from orchestrator.settings import OutboxSettings

NOW = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
BACKOFF = (timedelta(seconds=10), timedelta(seconds=60), timedelta(minutes=10))


def fixed(value: float) -> RetryPolicy:
    return RetryPolicy(backoff=BACKOFF, uniform=lambda: value)


def test_tries_are_one_more_than_the_waits() -> None:
    assert fixed(0.5).max_tries == 4
    assert RetryPolicy(backoff=()).max_tries == 1


@pytest.mark.parametrize(("attempts_made", "wait"), [(1, 10), (2, 60), (3, 600)])
def test_each_failed_try_waits_its_own_backoff(attempts_made: int, wait: int) -> None:
    # uniform() == 0.5 is the middle of the jitter band: no jitter at all.
    assert fixed(0.5).decide(attempts_made, NOW) == Retry(at=NOW + timedelta(seconds=wait))


def test_a_zero_wait_and_no_jitter_are_a_policy_too() -> None:
    """Retry at once, then after exactly ten seconds: nothing negative, so nothing refused."""
    policy = RetryPolicy(backoff=(timedelta(0), timedelta(seconds=10)), jitter=0.0,
                         uniform=lambda: 0.99)
    assert policy.decide(1, NOW) == Retry(at=NOW)
    assert policy.decide(2, NOW) == Retry(at=NOW + timedelta(seconds=10))


def test_the_last_try_failing_is_a_dead_letter() -> None:
    assert fixed(0.5).decide(4, NOW) == DeadLetter()
    assert fixed(0.5).decide(9, NOW) == DeadLetter()
    assert RetryPolicy(backoff=()).decide(1, NOW) == DeadLetter()


@pytest.mark.parametrize(("draw", "factor"), [(0.0, 0.9), (0.25, 0.95), (0.999999, 1.1)])
def test_jitter_spreads_the_wait_by_ten_percent(draw: float, factor: float) -> None:
    decision = fixed(draw).decide(2, NOW)
    assert isinstance(decision, Retry)
    assert (decision.at - NOW).total_seconds() == pytest.approx(60 * factor, abs=1e-3)


def test_jitter_stays_in_band_and_actually_varies() -> None:
    policy = RetryPolicy(backoff=BACKOFF, uniform=random.Random(42).random)
    waits = set()
    for _ in range(200):
        decision = policy.decide(1, NOW)
        assert isinstance(decision, Retry)
        wait = (decision.at - NOW).total_seconds()
        assert 9.0 <= wait <= 11.0
        waits.add(round(wait, 6))
    assert len(waits) > 100


def test_a_seeded_source_makes_decisions_reproducible() -> None:
    first = RetryPolicy(backoff=BACKOFF, uniform=random.Random(7).random)
    second = RetryPolicy(backoff=BACKOFF, uniform=random.Random(7).random)
    assert [first.decide(n, NOW) for n in (1, 2, 3, 4)] == [
        second.decide(n, NOW) for n in (1, 2, 3, 4)
    ]


def test_default_settings_retry_for_about_a_day() -> None:
    policy = RetryPolicy.from_settings(OutboxSettings(), uniform=lambda: 0.5)
    assert policy.max_tries == 11
    assert timedelta(hours=20) < sum(policy.backoff, timedelta()) < timedelta(hours=28)


@pytest.mark.parametrize(
    "build",
    [
        lambda: RetryPolicy(backoff=(timedelta(seconds=-1),)),
        lambda: RetryPolicy(backoff=BACKOFF, jitter=1.0),
        lambda: RetryPolicy(backoff=BACKOFF, jitter=-0.1),
    ],
)
def test_nonsense_policies_are_refused(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_a_decision_needs_a_try_first() -> None:
    with pytest.raises(ValueError):
        fixed(0.5).decide(0, NOW)
