"""The domain's errors (``orchestrator/domain/errors.py``): the tree a caller catches, the code
the HTTP layer answers with (``"code"`` in every problem body, which clients branch on), and
the detail a developer reads."""

from __future__ import annotations

import pytest

from orchestrator.domain.errors import (
    AlreadyMatched,
    Conflict,
    DomainError,
    DuplicateMerchantOrder,
    IdempotencyKeyReused,
    InvalidOrder,
    LikelyDuplicate,
    NoPayoutAccount,
    NotFound,
    StatementRejected,
    TransitionRefused,
    UniqueCodesExhausted,
)


@pytest.mark.parametrize(
    ("error", "code", "parent"),
    [
        pytest.param(DomainError("x"), "domain_error", Exception, id="DomainError"),
        pytest.param(TransitionRefused("order", "paid", "cancel"), "transition_refused",
                     DomainError, id="TransitionRefused"),
        pytest.param(InvalidOrder("x"), "invalid_order", DomainError, id="InvalidOrder"),
        pytest.param(NotFound("x"), "not_found", DomainError, id="NotFound"),
        pytest.param(Conflict("x"), "conflict", DomainError, id="Conflict"),
        pytest.param(IdempotencyKeyReused("x"), "idempotency_key_reused", Conflict,
                     id="IdempotencyKeyReused"),
        pytest.param(DuplicateMerchantOrder("x", existing_order_id="ord_1"),
                     "duplicate_merchant_order_id", Conflict, id="DuplicateMerchantOrder"),
        pytest.param(AlreadyMatched("x"), "already_matched", Conflict, id="AlreadyMatched"),
        pytest.param(LikelyDuplicate("x"), "likely_duplicate", Conflict, id="LikelyDuplicate"),
        pytest.param(UniqueCodesExhausted("x"), "unique_codes_exhausted", DomainError,
                     id="UniqueCodesExhausted"),
        pytest.param(NoPayoutAccount("x"), "no_payout_account", DomainError,
                     id="NoPayoutAccount"),
        pytest.param(StatementRejected("x"), "statement_rejected", DomainError,
                     id="StatementRejected"),
    ],
)
def test_each_error_sits_in_the_tree_with_the_code_clients_read(
    error: DomainError, code: str, parent: type[Exception]
) -> None:
    assert error.code == code
    assert isinstance(error, parent)


def test_the_detail_is_the_message_a_developer_reads() -> None:
    error = InvalidOrder("amount must be at least 10000 rupiah, got 1", field="amount")
    assert (error.detail, str(error), error.field) == (
        "amount must be at least 10000 rupiah, got 1",
        "amount must be at least 10000 rupiah, got 1", "amount")
    duplicate = DuplicateMerchantOrder("INV-1 is taken", existing_order_id="ord_01")
    assert (str(duplicate), duplicate.detail, duplicate.existing_order_id) == (
        "INV-1 is taken", "INV-1 is taken", "ord_01")


def test_a_refused_transition_says_which_machine_state_and_trigger() -> None:
    refused = TransitionRefused("order", "paid", "cancel")
    assert str(refused) == refused.detail == "order in state 'paid' cannot take 'cancel'"
    assert (refused.machine, refused.state, refused.trigger) == ("order", "paid", "cancel")


def test_a_rejected_statement_names_its_line_when_the_problem_has_one() -> None:
    on_a_line = StatementRejected("Jumlah 'x' is not an amount", line=7)
    assert (str(on_a_line), on_a_line.reason, on_a_line.line) == (
        "line 7: Jumlah 'x' is not an amount", "Jumlah 'x' is not an amount", 7)
    whole_file = StatementRejected("the file is empty")
    assert (str(whole_file), whole_file.line) == ("the file is empty", None)
