"""Xendit amounts are whole rupiah exactly: a fraction, however small, is refused, and a string
amount is read only as plain ASCII digits (RAILS.md §2: JSON numbers, sometimes strings)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from orchestrator.rails.xendit import CallbackError, callback_status, rupiah


@pytest.mark.parametrize(("value", "whole"), [
    (150000, 150000), (150000.0, 150000), ("150000", 150000), ("150000.00", 150000),
    (Decimal("150000.000"), 150000),
])
def test_a_whole_amount_in_any_spelling_xendit_uses_is_read(value: Any, whole: int) -> None:
    assert rupiah(value) == whole


@pytest.mark.parametrize("value", [
    "150000.00000000001",  # a fraction a float cannot hold: float() rounds it away
    Decimal("150000.00000000001"),
    "1_000", "\u0661\u0660\u0660", " 100 ", "1e5", "NaN", "", 150000.5,
])
def test_a_fraction_or_an_odd_spelling_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="whole rupiah"):
        rupiah(value)


def test_a_callback_amount_is_read_exactly_as_the_json_says() -> None:
    """The worker parses a stored callback with ``xendit.parse_body``: a JSON number with a
    fraction below a float's precision would be rounded to whole rupiah by a float parse."""
    from orchestrator.rails.xendit import parse_body
    raw = ('{"payment_id": "p-1", "callback_virtual_account_id": "va-1", "external_id": "att_1",'
           ' "amount": 150000.00000000001, "transaction_timestamp": "2025-03-10T02:05:39Z"}')
    assert json.loads(raw)["amount"] == 150000  # what a plain parse makes of it
    with pytest.raises(CallbackError, match="whole rupiah"):
        callback_status(parse_body(raw))
