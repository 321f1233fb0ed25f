"""Which statement lines the batch may decide on its own, and which go line by line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.domain.clock import WIB
from orchestrator.reconciliation.batch import plan_batch, settle_rule, still_matches
from orchestrator.reconciliation.matcher import Candidate, MatchKind, MutationFacts, decide

NOW = datetime(2026, 5, 15, 3, 0, tzinfo=UTC)
ORDER_A, ORDER_B = "ord_01HZX7Q3V9K2M4N6P8R0S2T4V6", "ord_01HZX7Q3V9K2M4N6P8R0S2T4V7"


def credit(amount: int, description: str = "TRSF CR", at: datetime = NOW) -> MutationFacts:
    return MutationFacts(amount=amount, direction="CR", posted_at=at, description=description)


def held(order_id: str, amount: int, attempt: str = "att_1",
         held_until: datetime | None = None) -> Candidate:
    return Candidate(attempt_id=attempt, order_id=order_id, transfer_amount=amount,
                     created_at=NOW - timedelta(hours=1), held_until=held_until)


def test_plain_lines_are_decided_in_the_batch() -> None:
    plan = plan_batch({
        0: credit(100_123), 1: credit(55_555),
        2: MutationFacts(amount=10_000, direction="DB", posted_at=NOW, description="BIAYA ADM"),
    }, {0: held(ORDER_A, 100_123)})
    assert plan.matched == {0: held(ORDER_A, 100_123)}
    assert (plan.unmatched, plan.ignored, plan.sequential) == ([1], [2], [])


def test_a_credit_outside_the_window_is_unmatched() -> None:
    plan = plan_batch({0: credit(100_123, at=NOW - timedelta(days=2))},
                      {0: held(ORDER_A, 100_123)})
    assert (plan.matched, plan.unmatched) == ({}, [0])


def test_two_lines_reaching_one_order_go_line_by_line_in_file_order() -> None:
    plan = plan_batch({3: credit(100_123), 1: credit(100_123, "AGAIN"), 2: credit(7)},
                      {3: held(ORDER_A, 100_123), 1: held(ORDER_A, 100_123)})
    assert (plan.sequential, plan.matched, plan.unmatched) == ([1, 3], {}, [2])


def test_a_reference_takes_its_line_and_the_orders_it_names_out_of_the_batch() -> None:
    plan = plan_batch({0: credit(99_000, f"TRSF CR {ORDER_A.upper()}"), 1: credit(100_123),
                       2: credit(200_456)},
                      {1: held(ORDER_A, 100_123), 2: held(ORDER_B, 200_456, "att_2")})
    assert plan.sequential == [0, 1]
    assert plan.matched == {2: held(ORDER_B, 200_456, "att_2")}


def test_a_reference_against_another_orders_exact_amount_is_for_a_person() -> None:
    """The customer typed order B's id but paid exactly the amount order A holds: each signal
    names another order. Settling B (an amount mismatch, refund recommended) left A, whose
    customer paid its unique amount to the rupiah, to expire; neither is settled by itself."""
    a, b = held(ORDER_A, 81_414), held(ORDER_B, 92_226, "att_2")
    line = credit(81_414, f"TRSF CR {ORDER_B.upper()} ANDI")
    assert plan_batch({0: line}, {0: a}).sequential == [0]  # decided line by line, by decide
    decision = decide(line, [a, b])
    assert decision.kind is MatchKind.AMBIGUOUS
    assert sorted(decision.candidates) == ["att_1", "att_2"]


def test_a_reference_that_the_amount_agrees_with_or_no_held_amount_contradicts_settles() -> None:
    a, b = held(ORDER_A, 81_414), held(ORDER_B, 92_226, "att_2")
    agreeing = decide(credit(92_226, f"TRSF CR {ORDER_B.upper()}"), [a, b])
    alone = decide(credit(90_000, f"TRSF CR {ORDER_B.upper()}"), [a, b])  # amount of no order
    assert (agreeing.kind, agreeing.attempt_id) == (MatchKind.MATCHED, "att_2")
    assert (alone.kind, alone.attempt_id) == (MatchKind.MATCHED, "att_2")


def test_a_batch_match_is_dropped_when_the_locked_attempt_differs() -> None:
    planned = held(ORDER_A, 100_123)
    assert still_matches(credit(100_123), planned, planned)
    assert not still_matches(credit(100_123), None, planned)
    closed = held(ORDER_A, 100_123, held_until=NOW - timedelta(minutes=1))
    assert not still_matches(credit(100_123), closed, planned)


def test_every_pair_that_settles_ends_with_order_and_attempt_paid() -> None:
    """The batch SQL writes one target pair; the state machines must agree it is the only one.
    An open order settles from any attempt state but paid (a late payment on a superseded,
    expired, failed or unknown instrument still pays the order)."""
    rule = settle_rule()
    assert (rule.order_to, rule.attempt_to) == ("paid", "paid")
    assert set(rule.from_pairs) == {
        f"{order}/{attempt}" for order in ("captured", "awaiting_payment", "verifying")
        for attempt in ("active", "superseded", "expired", "failed", "unknown")}



def test_a_bank_clock_a_few_minutes_slow_at_midnight_still_matches() -> None:
    """Captured at 00:00:20 WIB, paid a minute later, dated 23:58 the day before by a bank whose
    clock is slow: the order's transfer all the same. Ten minutes before midnight it is not."""
    midnight = datetime(2026, 5, 15, 0, 0, tzinfo=WIB)
    just_after = Candidate(attempt_id="att_1", order_id=ORDER_A, transfer_amount=100_123,
                           created_at=midnight + timedelta(seconds=20), held_until=None)
    slow = credit(100_123, at=midnight - timedelta(minutes=2))
    assert decide(slow, [just_after]).kind is MatchKind.MATCHED
    assert plan_batch({0: slow}, {0: just_after}).matched == {0: just_after}
    too_early = credit(100_123, at=midnight - timedelta(minutes=10))
    assert decide(too_early, [just_after]).kind is MatchKind.UNMATCHED


def test_a_reversal_may_follow_its_credit_by_days_never_precede_it() -> None:
    """A debit stamped 00:00 WIB is dated by day only: its credit may be any time that day.
    A debit with a time reaches no later than itself, give or take the bank's clock."""
    from orchestrator.reconciliation.matcher import BANK_CLOCK_SKEW, reversal_window

    day = datetime(2026, 5, 15, 0, 0, tzinfo=WIB)
    start, end = reversal_window(day, timedelta(days=3))
    assert start == day - timedelta(days=3)
    assert day + timedelta(hours=23, minutes=59) < end < day + timedelta(days=1)
    timed = day + timedelta(hours=10)
    assert reversal_window(timed, timedelta(days=3)) == (timed - timedelta(days=3),
                                                         timed + BANK_CLOCK_SKEW)
