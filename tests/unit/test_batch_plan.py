"""Which statement lines the batch may decide on its own, and which go line by line; and the
matcher's decision each line gets (``decide``, its validity window, the reversal window)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain.clock import WIB
from orchestrator.reconciliation.batch import (
    SettleTransition,
    in_file_order,
    plan_batch,
    settle_rule,
    still_matches,
)
from orchestrator.reconciliation.matcher import (
    FOR_PEOPLE,
    Candidate,
    MatchDecision,
    MatchKind,
    MutationFacts,
    decide,
    referenced_order_ids,
    reversal_window,
    window_opens,
)

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


def test_a_debit_among_the_lines_hides_none_of_the_credits_after_it() -> None:
    """Two credits for one order still go line by line when a debit comes first in the file."""
    plan = plan_batch({
        0: MutationFacts(amount=10_000, direction="DB", posted_at=NOW, description="BIAYA ADM"),
        1: credit(100_123), 2: credit(100_123, "AGAIN"),
    }, {1: held(ORDER_A, 100_123), 2: held(ORDER_A, 100_123)})
    assert (plan.ignored, plan.sequential, plan.matched) == ([0], [1, 2], {})


def test_a_debit_naming_an_order_takes_nothing_out_of_the_batch() -> None:
    """A debit is no collection: it reaches no order, so it sends no credit line by line."""
    plan = plan_batch({
        0: MutationFacts(amount=100_123, direction="DB", posted_at=NOW,
                         description=f"KOREKSI {ORDER_A}"),
        1: credit(100_123),
    }, {1: held(ORDER_A, 100_123)})
    assert (plan.ignored, plan.matched, plan.sequential) == ([0], {1: held(ORDER_A, 100_123)}, [])


def test_the_outcomes_of_an_import_are_applied_in_file_order() -> None:
    assert in_file_order([4, 1], [], [3, 0], [2]) == [0, 1, 2, 3, 4]


def test_the_batch_refuses_to_settle_when_settling_could_end_in_two_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the state machines ever settled some pair elsewhere than paid/paid, the single-target
    SQL would write a wrong state: ``settle_rule`` must raise instead."""
    import orchestrator.reconciliation.batch as batch

    two_targets = [
        SettleTransition(order_from="captured", attempt_from="active", order_to="paid",
                         attempt_to="paid"),
        SettleTransition(order_from="verifying", attempt_from="active", order_to="needs_review",
                         attempt_to="paid"),
    ]
    monkeypatch.setattr(batch, "settle_transitions", lambda: two_targets)
    with pytest.raises(RuntimeError, match="settling ends in"):
        settle_rule()


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


# ---------------------------------------------------------------------------------------------
# decide: which open manual-transfer attempt a credit pays (ARCHITECTURE §4 Reconciliation)
# ---------------------------------------------------------------------------------------------


def test_a_debit_is_never_a_collection_even_naming_an_order() -> None:
    debit = MutationFacts(amount=100_123, direction="DB", posted_at=NOW,
                          description=f"TRSF DB {ORDER_A}")
    assert decide(debit, [held(ORDER_A, 100_123)]) == MatchDecision(kind=MatchKind.IGNORED)


def test_the_one_attempt_holding_the_exact_amount_is_paid() -> None:
    candidates = [held(ORDER_A, 100_123), held(ORDER_B, 200_456, "att_2")]
    assert decide(credit(200_456), candidates) == MatchDecision(kind=MatchKind.MATCHED,
                                                                attempt_id="att_2")


@pytest.mark.parametrize("amount", [100_122, 100_124, 100_000])
def test_a_credit_of_any_other_amount_pays_nothing(amount: int) -> None:
    assert decide(credit(amount), [held(ORDER_A, 100_123)]) == MatchDecision(
        kind=MatchKind.UNMATCHED)


def test_two_orders_holding_the_amount_go_to_a_person_never_one_picked() -> None:
    candidates = [held(ORDER_A, 100_123), held(ORDER_B, 100_123, "att_2")]
    assert decide(credit(100_123), candidates) == MatchDecision(
        kind=MatchKind.AMBIGUOUS, candidates=("att_1", "att_2"))


def test_a_description_naming_two_orders_goes_to_a_person() -> None:
    candidates = [held(ORDER_A, 100_123), held(ORDER_B, 200_456, "att_2")]
    decision = decide(credit(5_000, f"{ORDER_A} {ORDER_B}"), candidates)
    assert decision == MatchDecision(kind=MatchKind.AMBIGUOUS, candidates=("att_1", "att_2"))


@pytest.mark.parametrize("written", [ORDER_A, ORDER_A.upper(), ORDER_A.lower(),
                                     ORDER_A.upper().replace("_", "")])
def test_an_order_reference_is_read_in_any_case_with_or_without_its_underscore(
    written: str,
) -> None:
    assert referenced_order_ids(f"trsf e-banking cr {written} andi") == {ORDER_A}


@pytest.mark.parametrize("listed", ["older first", "newer first"])
def test_an_order_with_several_attempts_is_paid_on_its_latest(listed: str) -> None:
    """The customer switched instruments: a credit naming the order pays the attempt it holds
    now, whichever order the attempts were read in."""
    older = Candidate(attempt_id="att_old", order_id=ORDER_A, transfer_amount=100_123,
                      created_at=NOW - timedelta(hours=2), held_until=None)
    newer = Candidate(attempt_id="att_new", order_id=ORDER_A, transfer_amount=100_456,
                      created_at=NOW - timedelta(hours=1), held_until=None)
    attempts = [older, newer] if listed == "older first" else [newer, older]
    assert decide(credit(100_999, f"BAYAR {ORDER_A}"), attempts) == MatchDecision(
        kind=MatchKind.MATCHED, attempt_id="att_new")


def test_the_window_opens_five_minutes_before_the_attempts_wib_day() -> None:
    wib_day = datetime(2026, 5, 15, 0, 0, tzinfo=WIB)
    opens = wib_day - timedelta(minutes=5)
    assert window_opens(datetime(2026, 5, 15, 16, 30, tzinfo=WIB)) == opens
    # Stored instants are UTC: 18:00 UTC on the 14th is already the 15th in Jakarta.
    assert window_opens(datetime(2026, 5, 14, 18, 0, tzinfo=UTC)) == opens


def test_a_credit_at_either_end_of_the_window_is_in_it_and_a_tick_outside_is_not() -> None:
    tick = timedelta(microseconds=1)
    created = datetime(2026, 5, 15, 10, 0, tzinfo=WIB)
    closed = Candidate(attempt_id="att_1", order_id=ORDER_A, transfer_amount=100_123,
                       created_at=created, held_until=created + timedelta(days=1))
    # A timed line: from the attempt's creation less the bank's clock skew.
    opens, ends = created - timedelta(minutes=5), created + timedelta(days=1)
    assert window_opens(created, opens) == opens
    for at, kind in [(opens - tick, MatchKind.UNMATCHED), (opens, MatchKind.MATCHED),
                     (ends, MatchKind.MATCHED), (ends + tick, MatchKind.UNMATCHED)]:
        assert decide(credit(100_123, at=at), [closed]).kind is kind, at
    # A line dated by day only (00:00 WIB): the attempt's day is in, the day before is not.
    day = datetime(2026, 5, 15, 0, 0, tzinfo=WIB)
    for at, kind in [(day - timedelta(days=1), MatchKind.UNMATCHED), (day, MatchKind.MATCHED)]:
        assert decide(credit(100_123, at=at), [closed]).kind is kind, at


def test_a_timed_transfer_before_the_attempt_existed_is_not_its_payment() -> None:
    """Unique amounts are reused after their quarantine: a transfer the bank timed at 10:00 WIB
    is not the payment of an attempt that gave out its amount at 14:00 (another order's customer
    paying late). Dated by day only, the bank's line cannot tell, and is matched as before."""
    created = datetime(2026, 5, 15, 14, 0, tzinfo=WIB)
    later = Candidate(attempt_id="att_1", order_id=ORDER_A, transfer_amount=100_123,
                      created_at=created, held_until=None)
    timed = credit(100_123, at=datetime(2026, 5, 15, 10, 0, tzinfo=WIB))
    assert decide(timed, [later]).kind is MatchKind.UNMATCHED
    assert plan_batch({0: timed}, {0: later}).unmatched == [0]
    day_dated = credit(100_123, at=datetime(2026, 5, 15, 0, 0, tzinfo=WIB))
    assert decide(day_dated, [later]).kind is MatchKind.MATCHED


def test_a_reversal_is_looked_for_three_days_back_by_default() -> None:
    timed = datetime(2026, 5, 15, 3, 0, tzinfo=UTC)  # 10:00 WIB
    assert reversal_window(timed) == (timed - timedelta(days=3), timed + timedelta(minutes=5))


def test_a_debit_dated_by_day_reaches_the_last_instant_of_its_wib_day() -> None:
    """Stored as UTC (17:00 the day before), a day-dated debit is still 00:00 WIB."""
    day = datetime(2026, 5, 14, 17, 0, tzinfo=UTC)
    assert reversal_window(day, timedelta(days=3)) == (
        day - timedelta(days=3),
        datetime(2026, 5, 16, 0, 0, tzinfo=WIB) - timedelta(microseconds=1))


def test_the_mutations_a_person_resolves() -> None:
    assert set(FOR_PEOPLE) == {"unmatched", "ambiguous", "likely_duplicate"}
