"""Time is passed into the domain (STYLE rule 1): the clocks adapters read it from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.domain.clock import WIB, FrozenClock, SystemClock


def test_wib_is_utc_plus_seven_all_year() -> None:
    for month in (1, 7):
        local = datetime(2026, month, 1, 7, 0, tzinfo=WIB)
        assert local.astimezone(UTC) == datetime(2026, month, 1, 0, 0, tzinfo=UTC)
    assert WIB.tzname(None) == "WIB"


def test_the_system_clock_tells_aware_utc_time() -> None:
    before = datetime.now(UTC)
    now = SystemClock().now()
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= datetime.now(UTC)


def test_a_frozen_clock_moves_only_when_told_and_forward_by_what_it_is_told() -> None:
    at = datetime(2026, 5, 15, 3, 0, tzinfo=UTC)
    clock = FrozenClock(at)
    assert clock.now() == clock.now() == at
    clock.advance(timedelta(minutes=5))
    assert clock.now() == at + timedelta(minutes=5)
