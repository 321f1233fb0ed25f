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


# -- paid attempts read again, for a reversal whose notification was lost -------------------

def settled_reads(s: VerificationSchedule, rail: Rail, paid_at: datetime) -> list[datetime]:
    """Every read of an attempt paid at ``paid_at``, each made when it comes due."""
    reads: list[datetime] = []
    while (nxt := s.next_settled_read(rail, reads_done=len(reads),
                                      last=reads[-1] if reads else paid_at)) is not None:
        reads.append(nxt)
    return reads


@pytest.mark.parametrize("rail", [Rail.QRIS, Rail.EWALLET])
def test_a_paid_attempt_is_read_a_day_and_a_week_after_its_payment_then_left_alone(
    rail: Rail,
) -> None:
    assert settled_reads(VerificationSchedule(), rail, T0) == [T0 + timedelta(days=1),
                                                               T0 + timedelta(days=7)]


def test_each_gap_counts_from_the_read_before_so_a_late_read_moves_the_next_one() -> None:
    """A read deferred behind an outage for a day: the next gap counts from when it was made,
    so two reads never come back to back after a recovery."""
    s = VerificationSchedule()
    late = T0 + timedelta(days=2)
    assert s.next_settled_read(Rail.QRIS, reads_done=1, last=late) == late + timedelta(days=6)


def test_a_paid_manual_transfer_is_never_read_again_its_matcher_finds_reversals() -> None:
    assert settled_reads(VerificationSchedule(), Rail.MANUAL_TRANSFER, T0) == []


def test_a_paid_virtual_account_is_never_read_again_no_provider_reverses_one() -> None:
    """A VA payment is a bank transfer: no provider refunds one or reports it pulled back, so
    a read could only spend the provider's pace."""
    assert settled_reads(VerificationSchedule(), Rail.VA, T0) == []


def test_the_reads_of_a_paid_attempt_are_configured_in_seconds_and_empty_means_never() -> None:
    s = Settings.from_env({"LUNAS_SETTLED_RECHECKS": "60, 3600, 86400"}).verification.schedule
    assert settled_reads(s, Rail.EWALLET, T0) == [T0 + timedelta(seconds=60),
                                                  T0 + timedelta(seconds=3660),
                                                  T0 + timedelta(seconds=90_060)]
    for never in ("", "  "):
        s = Settings.from_env({"LUNAS_SETTLED_RECHECKS": never}).verification.schedule
        assert settled_reads(s, Rail.QRIS, T0) == []
    unset = Settings.from_env({}).verification.schedule
    assert unset.settled_reads == (timedelta(days=1), timedelta(days=6))


def test_a_read_past_the_configured_ones_is_not_made() -> None:
    """A read queued under a longer schedule (the setting shortened since) is left alone."""
    s = VerificationSchedule(settled_reads=(timedelta(hours=1),))
    assert s.next_settled_read(Rail.QRIS, reads_done=1, last=T0) is None
    assert s.next_settled_read(Rail.QRIS, reads_done=-1, last=T0) is None


@pytest.mark.parametrize("text", ["soon", "0", "3600,-5", ",", "inf"])
def test_reads_of_a_paid_attempt_that_are_not_positive_seconds_are_refused(text: str) -> None:
    with pytest.raises(SettingsError, match="LUNAS_SETTLED_RECHECKS"):
        Settings.from_env({"LUNAS_SETTLED_RECHECKS": text})
    with pytest.raises(ValueError, match="must be positive"):
        VerificationSchedule(settled_reads=(timedelta(0),))
