"""Verification schedules: each rail is read on its own rhythm; manual transfer has none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain.verification import VerificationSchedule
from orchestrator.rails.base import Rail
from orchestrator.settings import Settings, SettingsError

T0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


def test_qris_and_ewallet_are_read_within_minutes_and_va_within_hours() -> None:
    s = VerificationSchedule()
    assert s.first_check(Rail.QRIS, T0) == T0 + timedelta(minutes=2)
    assert s.first_check(Rail.EWALLET, T0) == T0 + timedelta(minutes=2)
    assert s.first_check(Rail.VA, T0) == T0 + timedelta(hours=1)


def test_manual_transfer_has_no_status_api_to_schedule() -> None:
    assert VerificationSchedule().first_check(Rail.MANUAL_TRANSFER, T0) is None


def test_gaps_widen_then_the_last_one_repeats() -> None:
    s = VerificationSchedule()
    gaps = [s.next_check(Rail.VA, checks_done=n, last=T0) - T0 for n in range(5)]
    assert gaps == [timedelta(hours=h) for h in (1, 3, 6, 6, 6)]


def test_schedules_are_configured_per_rail_in_seconds() -> None:
    settings = Settings.from_env({"LUNAS_VERIFY_SCHEDULE_QRIS": "30, 60",
                                  "LUNAS_VERIFY_RETRY_AFTER": "5"})
    s = settings.verification.schedule
    assert s.first_check(Rail.QRIS, T0) == T0 + timedelta(seconds=30)
    assert s.next_check(Rail.QRIS, checks_done=7, last=T0) == T0 + timedelta(seconds=60)
    assert s.first_check(Rail.VA, T0) == T0 + timedelta(hours=1)  # untouched rails keep defaults
    assert s.retry_after_failure == timedelta(seconds=5)


@pytest.mark.parametrize("text", ["soon", "0", "60,-5"])
def test_a_schedule_that_is_not_positive_seconds_is_refused(text: str) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env({"LUNAS_VERIFY_SCHEDULE_VA": text})
