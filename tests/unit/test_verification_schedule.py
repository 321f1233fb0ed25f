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


@pytest.mark.parametrize(("rail", "unit", "steps"), [
    (Rail.VA, timedelta(hours=1), (1, 3, 6, 6, 6)),
    (Rail.QRIS, timedelta(minutes=1), (2, 3, 5, 5, 5)),
    (Rail.EWALLET, timedelta(minutes=1), (2, 3, 5, 5, 5)),
])
def test_gaps_widen_then_the_last_one_repeats(rail: Rail, unit: timedelta,
                                              steps: tuple[int, ...]) -> None:
    s = VerificationSchedule()
    gaps = [s.next_check(rail, checks_done=n, last=T0) - T0 for n in range(5)]
    assert gaps == [unit * step for step in steps]


def test_a_failed_read_is_tried_again_in_thirty_seconds_by_default() -> None:
    assert VerificationSchedule().retry_after_failure == timedelta(seconds=30)


def test_a_rail_with_no_gaps_is_refused_not_left_unread() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        VerificationSchedule(gaps={Rail.QRIS: ()})


def test_schedules_are_configured_per_rail_in_seconds() -> None:
    settings = Settings.from_env({"LUNAS_VERIFY_SCHEDULE_QRIS": "30, 60",
                                  "LUNAS_VERIFY_RETRY_AFTER": "5"})
    s = settings.verification.schedule
    assert s.first_check(Rail.QRIS, T0) == T0 + timedelta(seconds=30)
    assert s.next_check(Rail.QRIS, checks_done=7, last=T0) == T0 + timedelta(seconds=60)
    assert s.first_check(Rail.VA, T0) == T0 + timedelta(hours=1)  # untouched rails keep defaults
    assert s.retry_after_failure == timedelta(seconds=5)


@pytest.mark.parametrize(("text", "gaps"), [
    ("30, 60, ", (30, 60)),
    ("30,,60", (30, 60)),
    ("   ", (120, 180, 300)),
])
def test_a_schedule_tolerates_stray_commas_and_a_blank_one_keeps_the_default(
    text: str, gaps: tuple[int, ...]
) -> None:
    s = Settings.from_env({"LUNAS_VERIFY_SCHEDULE_QRIS": text}).verification.schedule
    assert s.gaps[Rail.QRIS] == tuple(timedelta(seconds=g) for g in gaps)


@pytest.mark.parametrize("text", ["soon", "0", "60,-5", ",", " , "])
def test_a_schedule_that_is_not_positive_seconds_is_refused(text: str) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env({"LUNAS_VERIFY_SCHEDULE_VA": text})


def test_an_uncancelled_closed_instrument_is_watched_at_doubling_gaps() -> None:
    """Watched through the one-hour quarantine, an expired Xendit QR is read at 0, 2, 6, 14, 30
    and (its end) 60 minutes: six reads, where the live QRIS schedule would make fourteen."""
    s = VerificationSchedule()
    reads, at = [T0], T0
    end = T0 + timedelta(hours=1)
    while at < end:
        nxt = s.next_watch(Rail.QRIS, reads_done=len(reads) - 1, last=at)
        assert nxt is not None
        at = min(nxt, end)
        reads.append(at)
    assert [int((r - T0).total_seconds() // 60) for r in reads] == [0, 2, 6, 14, 30, 60]
    assert s.next_watch(Rail.VA, reads_done=0, last=T0) == T0 + timedelta(hours=1)
    assert s.next_watch(Rail.MANUAL_TRANSFER, reads_done=0, last=T0) is None
