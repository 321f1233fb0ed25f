"""What makes a checkout request an order (``orchestrator.domain.checkout``): each rule a request
must meet, its edges, and the field a refusal names so a developer knows what to fix.

Written from the module's contract and the settings' defaults (amounts 1..1,000,000,000 rupiah,
deadline 5 minutes..7 days, 24 hours when not asked, metadata at most 4096 bytes), not read from
the regular expressions: a change to what is accepted that this file does not describe fails.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.domain.checkout import (
    SUPPORTED_RAILS,
    CheckoutRules,
    Customer,
    OrderRequest,
    request_fingerprint,
    validate,
)
from orchestrator.domain.errors import InvalidOrder
from orchestrator.domain.money import AmountLimits

NOW = datetime(2026, 5, 15, 3, 0, tzinfo=UTC)
RULES = CheckoutRules(
    amount_limits=AmountLimits(minimum=10_000, maximum=50_000_000),
    default_expires_in=timedelta(hours=24),
    min_expires_in=timedelta(minutes=5),
    max_expires_in=timedelta(days=7),
    max_metadata_bytes=64,
)
SITI = Customer(name="Siti Rahayu", email="siti@example.co.id", phone="+6281234567890")


def order(**changes: Any) -> OrderRequest:
    return replace(OrderRequest(merchant_order_id="INV-2026-0001", amount=150_000,
                                customer=SITI), **changes)


def customer(**changes: str) -> OrderRequest:
    return order(customer=replace(SITI, **changes))


def refused_field(request: OrderRequest) -> str | None:
    with pytest.raises(InvalidOrder) as refused:
        validate(request, RULES, now=NOW)
    return refused.value.field


# ---------------------------------------------------------------------------------------------
# the deadline: asked for in seconds within the merchant's bounds, or the default
# ---------------------------------------------------------------------------------------------


def test_an_order_that_asks_for_no_deadline_gets_the_default() -> None:
    assert validate(order(), RULES, now=NOW) == NOW + timedelta(hours=24)


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(300, id="the shortest allowed (5 minutes)"),
        pytest.param(301, id="just above the shortest"),
        pytest.param(3_600, id="an hour"),
        pytest.param(604_799, id="just below the longest"),
        pytest.param(604_800, id="the longest allowed (7 days)"),
    ],
)
def test_a_deadline_within_bounds_is_now_plus_the_seconds_asked(seconds: int) -> None:
    assert validate(order(expires_in=seconds), RULES, now=NOW) == NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(299, id="a second too short"),
        pytest.param(0, id="zero"),
        pytest.param(-300, id="negative"),
        pytest.param(604_801, id="a second too long"),
    ],
)
def test_a_deadline_outside_bounds_is_refused_naming_the_bounds(seconds: int) -> None:
    with pytest.raises(InvalidOrder, match=f"between 300 and 604800 seconds, got {seconds}") as e:
        validate(order(expires_in=seconds), RULES, now=NOW)
    assert e.value.field == "expires_in"


# ---------------------------------------------------------------------------------------------
# merchant_order_id: 1-100 printable ASCII characters, no spaces, nothing around them
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "merchant_order_id",
    [
        pytest.param("A", id="one character"),
        pytest.param("X" * 100, id="a hundred characters"),
        pytest.param("!~#/:@[]{}", id="printable punctuation from ! to ~"),
    ],
)
def test_a_merchant_order_id_of_printable_ascii_is_accepted(merchant_order_id: str) -> None:
    validate(order(merchant_order_id=merchant_order_id), RULES, now=NOW)


@pytest.mark.parametrize(
    "merchant_order_id",
    [
        pytest.param("", id="empty"),
        pytest.param("X" * 101, id="a hundred and one characters"),
        pytest.param("INV 1", id="a space"),
        pytest.param("INV-1\n", id="a trailing newline (would be a second order beside INV-1)"),
        pytest.param("INV-é", id="non-ASCII"),
        pytest.param("INV-\x7f", id="DEL"),
    ],
)
def test_a_merchant_order_id_that_is_not_printable_ascii_is_refused(merchant_order_id: str
                                                                     ) -> None:
    assert refused_field(order(merchant_order_id=merchant_order_id)) == "merchant_order_id"


# ---------------------------------------------------------------------------------------------
# amount, rail and channel
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [9_999, 50_000_001])
def test_an_amount_outside_the_limits_is_refused(amount: int) -> None:
    assert refused_field(order(amount=amount)) == "amount"


@pytest.mark.parametrize("rail", SUPPORTED_RAILS)
def test_every_offered_rail_may_be_chosen(rail: str) -> None:
    validate(order(rail=rail), RULES, now=NOW)


def test_the_offered_rails_are_the_four_of_the_architecture() -> None:
    assert set(SUPPORTED_RAILS) == {"va", "qris", "ewallet", "manual_transfer"}


@pytest.mark.parametrize("rail", ["card", "VA", ""])
def test_a_rail_not_offered_is_refused_listing_the_ones_that_are(rail: str) -> None:
    with pytest.raises(InvalidOrder, match="choose one of: va, qris, ewallet, manual_transfer"):
        validate(order(rail=rail), RULES, now=NOW)
    assert refused_field(order(rail=rail)) == "rail"


@pytest.mark.parametrize("channel", ["bca", "gopay", "bank_jago", "ab", "x" * 32])
def test_a_channel_is_a_lower_case_name(channel: str) -> None:
    validate(order(channel=channel), RULES, now=NOW)


@pytest.mark.parametrize("channel", ["BCA", "b", "x" * 33, "bca1", "bca\n", ""])
def test_a_channel_that_is_not_a_lower_case_name_is_refused(channel: str) -> None:
    assert refused_field(order(channel=channel)) == "channel"


# ---------------------------------------------------------------------------------------------
# the customer: a name, an email address and a phone number, at the lengths kept
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"name": "A"}, id="one-letter name"),
        pytest.param({"name": "N" * 200}, id="200-character name"),
        pytest.param({"email": "a@b.id"}, id="shortest email"),
        pytest.param({"email": "x" * 64 + "@example.co.id"}, id="64-character local part"),
        pytest.param({"email": "a@" + "d" * 315 + ".id"}, id="320-character email"),
        pytest.param({"phone": "08123456"}, id="8 digits"),
        pytest.param({"phone": "+628123456789012"}, id="15 digits with +"),
        pytest.param({"phone": "0812-3456-7890"}, id="hyphens"),
        pytest.param({"phone": "+62 812 3456 7890"}, id="spaces"),
        pytest.param({"phone": "0812 3456 7890" + " " * 18}, id="32 characters as sent"),
    ],
)
def test_customer_details_within_the_rules_are_accepted(changes: dict[str, str]) -> None:
    validate(customer(**changes), RULES, now=NOW)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"name": ""}, "customer.name", id="empty name"),
        pytest.param({"name": "   "}, "customer.name", id="blank name"),
        pytest.param({"name": "N" * 201}, "customer.name", id="201-character name"),
        pytest.param({"email": "siti.example.co.id"}, "customer.email", id="no @"),
        pytest.param({"email": "siti@example"}, "customer.email", id="no dot in the domain"),
        pytest.param({"email": "siti@example.c"}, "customer.email", id="one-letter tld"),
        pytest.param({"email": "si ti@example.co.id"}, "customer.email", id="a space"),
        pytest.param({"email": "siti@@example.co.id"}, "customer.email", id="two @"),
        pytest.param({"email": "x" * 65 + "@example.co.id"}, "customer.email",
                     id="65-character local part"),
        pytest.param({"email": "a@" + "d" * 316 + ".id"}, "customer.email",
                     id="321-character email"),
        pytest.param({"email": "siti@example.co.id\n"}, "customer.email",
                     id="trailing newline"),
        pytest.param({"phone": "0812345"}, "customer.phone", id="7 digits"),
        pytest.param({"phone": "+6281234567890123"}, "customer.phone", id="16 digits"),
        pytest.param({"phone": "0812-ABCD-7890"}, "customer.phone", id="letters"),
        pytest.param({"phone": "62+81234567890"}, "customer.phone", id="+ not first"),
        pytest.param({"phone": "0812 3456 7890" + " " * 19}, "customer.phone",
                     id="33 characters as sent"),
    ],
)
def test_customer_details_outside_the_rules_are_refused_by_field(changes: dict[str, str],
                                                                  field: str) -> None:
    assert refused_field(customer(**changes)) == field


# ---------------------------------------------------------------------------------------------
# metadata: measured in the UTF-8 bytes of the compact JSON it is kept as
# ---------------------------------------------------------------------------------------------


def test_metadata_up_to_the_limit_is_kept_and_one_byte_more_is_refused() -> None:
    # {"k":"..."} is 8 bytes of JSON around the value.
    validate(order(metadata={"k": "v" * 56}), RULES, now=NOW)
    with pytest.raises(InvalidOrder, match="metadata is 65 bytes; at most 64 are kept") as e:
        validate(order(metadata={"k": "v" * 57}), RULES, now=NOW)
    assert e.value.field == "metadata"


def test_metadata_is_measured_compact_and_in_utf8_not_in_ascii_escapes() -> None:
    # 28 two-byte letters: 56 bytes in UTF-8 (fits), 168 as \\u00e9 escapes (would not).
    validate(order(metadata={"k": "é" * 28}), RULES, now=NOW)
    # 9 keys: 9 * len('"kN":1') + 8 commas + braces = 64 bytes compact, 81 with ", " and ": ".
    validate(order(metadata={f"k{i}": 1 for i in range(9)}), RULES, now=NOW)
    assert refused_field(order(metadata={"k": "é" * 29})) == "metadata"


# ---------------------------------------------------------------------------------------------
# the request fingerprint: the same meaning, the same fingerprint (idempotency)
# ---------------------------------------------------------------------------------------------


def test_the_fingerprint_is_sha256_of_the_documented_canonical_json() -> None:
    # Pinned on purpose: the fingerprint is stored beside each Idempotency-Key, so changing the
    # canonical form would answer a client's honest retry across a deploy with a 409.
    request = order(customer=replace(SITI, name="Siti Rahayu Ñ"), metadata={"b": 1, "a": "é"})
    canonical = (
        '{"amount":150000,"channel":null,"customer":["Siti Rahayu Ñ","siti@example.co.id",'
        '"+6281234567890"],"expires_in":null,"merchant_order_id":"INV-2026-0001",'
        '"metadata":{"a":"é","b":1},"rail":null}'
    )
    assert request_fingerprint(request) == hashlib.sha256(canonical.encode()).hexdigest()


def test_the_same_request_has_the_same_fingerprint_whatever_the_key_order() -> None:
    assert (request_fingerprint(order(metadata={"a": 1, "b": [1, 2]}))
            == request_fingerprint(order(metadata={"b": [1, 2], "a": 1})))


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(order(merchant_order_id="INV-2026-0002"), id="merchant_order_id"),
        pytest.param(order(amount=150_001), id="amount"),
        pytest.param(customer(name="Siti R."), id="customer name"),
        pytest.param(customer(email="rahayu@example.co.id"), id="customer email"),
        pytest.param(customer(phone="+6281234567891"), id="customer phone"),
        pytest.param(order(rail="qris"), id="rail"),
        pytest.param(order(channel="bca"), id="channel"),
        pytest.param(order(expires_in=3_600), id="expires_in"),
        pytest.param(order(metadata={}), id="metadata"),
    ],
)
def test_any_change_of_value_changes_the_fingerprint(changed: OrderRequest) -> None:
    assert request_fingerprint(changed) != request_fingerprint(order())
