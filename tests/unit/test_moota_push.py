"""Moota-style mutation push: the Signature is hex HMAC-SHA256 of the exact raw body (RAILS.md
§3.3 test vector), and the body is a JSON array of mutations. A body that is not one is refused
whole; an item that is not a readable mutation is set aside for a person, naming why, and the
others are read."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from orchestrator.domain.errors import StatementRejected
from orchestrator.reconciliation.moota import (
    MootaMutation,
    bank_of_type,
    parse_moota_push,
    verify_moota_signature,
)

# RAILS.md §3.3, byte for byte.
SECRET = "whsec-demo-42"
BODY = (
    b'[{"mutation_id":"mt9XkQ2aLp0","bank_id":"bk7Hq2Lm9Zs","account_number":"0123456789",'
    b'"date":"2025-03-10 00:00:00","description":"TRSF E-BANKING CR 1003/FTSCY/WS95031 '
    b'150123.00 ANDI","amount":"150123.00","type":"CR","balance":"2150123.00","note":"",'
    b'"created_at":"2025-03-10 09:12:44","updated_at":"2025-03-10 09:12:44"}]'
)
SIGNATURE = "eb2017b13c1cc36b383d3617705edf1fda8765412b49c2c2fe00968a5d06ed22"

# ---------------------------------------------------------------------------------------------
# Signature
# ---------------------------------------------------------------------------------------------


def test_rails_test_vector() -> None:
    assert hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest() == SIGNATURE
    assert verify_moota_signature(SECRET, BODY, SIGNATURE)


@pytest.mark.parametrize(
    "header",
    [SIGNATURE.upper(), f"  {SIGNATURE}\r\n"],
    ids=["upper-case hex", "surrounding whitespace"],
)
def test_harmless_header_variations_verify(header: str) -> None:
    assert verify_moota_signature(SECRET, BODY, header)


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        pytest.param("whsec-demo-43", BODY, SIGNATURE, id="wrong secret"),
        pytest.param(SECRET, BODY.replace(b"150123.00", b"150124.00"), SIGNATURE, id="tampered"),
        pytest.param(
            SECRET,
            json.dumps(json.loads(BODY)).encode(),
            SIGNATURE,
            id="same json re-serialised",
        ),
        pytest.param(SECRET, BODY, None, id="missing header"),
        pytest.param(SECRET, BODY, "", id="empty header"),
        pytest.param(SECRET, BODY, "not-a-signature", id="garbage"),
        pytest.param(SECRET, BODY, SIGNATURE[:-2], id="truncated"),
        pytest.param(SECRET, BODY, f"sha256={SIGNATURE}", id="prefixed"),
        pytest.param(SECRET, BODY, "é" * 64, id="non-ascii"),
        pytest.param("", BODY, hmac.new(b"", BODY, hashlib.sha256).hexdigest(), id="empty secret"),
    ],
)
def test_anything_else_does_not_verify(secret: str, body: bytes, header: str | None) -> None:
    assert verify_moota_signature(secret, body, header) is False


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def test_the_rails_body_parses_to_one_credit() -> None:
    assert parse_moota_push(BODY).mutations == [
        MootaMutation(
            mutation_id="mt9XkQ2aLp0",
            bank_id="bk7Hq2Lm9Zs",
            account_number="0123456789",
            posted_at=datetime(2025, 3, 9, 17, 0, tzinfo=UTC),
            amount=150_123,
            direction="CR",
            description="TRSF E-BANKING CR 1003/FTSCY/WS95031 150123.00 ANDI",
            balance=2_150_123,
        )
    ]


_DROP = object()


def item(**changes: Any) -> dict[str, Any]:
    """The RAILS.md mutation with ``changes``; a field set to ``_DROP`` is left out."""
    base: dict[str, Any] = json.loads(BODY)[0]
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


def push(*items: object) -> bytes:
    return json.dumps(list(items)).encode()


@pytest.mark.parametrize(
    ("amount", "rupiah"),
    [
        ("100123.00", 100_123),
        ("10000", 10_000),
        (10000, 10_000),
        (150123.00, 150_123),
        ("1,500,000.00", 1_500_000),
    ],
)
def test_amount_as_decimal_string_plain_string_or_number(amount: object, rupiah: int) -> None:
    assert parse_moota_push(push(item(amount=amount))).mutations[0].amount == rupiah


def test_a_json_number_amount_keeps_its_exact_value() -> None:
    # 150123.0000000001 would round to a whole float; read as a decimal it has sen and is refused.
    body = BODY.replace(b'"amount":"150123.00"', b'"amount":150123.0000000001')
    [aside] = parse_moota_push(body).unreadable
    assert "non-zero sen" in aside.problem


def test_account_number_may_be_a_json_number_and_other_fields_optional() -> None:
    """Read, and said to be a number: any leading zero is lost, which the ingest weighs
    against the payout accounts it knows."""
    parsed = parse_moota_push(
        push(item(account_number=123456789, balance=None, description=None, type="db"))
    ).mutations[0]
    assert (parsed.account_number, parsed.balance, parsed.description) == ("123456789", None, "")
    assert parsed.direction == "DB"
    assert parsed.account_sent_as_number
    assert not parse_moota_push(push(item())).mutations[0].account_sent_as_number


@pytest.mark.parametrize(("balance", "rupiah"), [
    pytest.param("2150123.00", 2_150_123, id="decimal string"),
    pytest.param("-5000.00", -5_000, id="overdrawn, string"),
    pytest.param(-5000, -5_000, id="overdrawn, number"),
    pytest.param(None, None, id="null"),
    pytest.param("", None, id="empty"),
    pytest.param("   ", None, id="blank: none sent, not Rp0"),
])
def test_a_balance_may_be_overdrawn_and_a_blank_one_is_none(balance: object,
                                                             rupiah: int | None) -> None:
    """As a statement's balance cell (``balance_cell``): blank means the bank printed none.
    Review finding (mutation audit): a blank balance was read as Rp0, a number nobody sent."""
    assert parse_moota_push(push(item(balance=balance))).mutations[0].balance == rupiah


def test_fields_are_read_without_padding_and_a_description_without_nul() -> None:
    parsed = parse_moota_push(push(item(mutation_id=" mt1 ", bank_id=" bk7 ",
                                        description="TRSF\x00 ANDI"))).mutations[0]
    assert (parsed.mutation_id, parsed.bank_id, parsed.description) == ("mt1", "bk7",
                                                                        "TRSF ANDI")


def test_mutation_id_wins_over_token_when_both_are_sent() -> None:
    body = push(item(mutation_id="mt1", token="tk1"))
    assert parse_moota_push(body).mutations[0].mutation_id == "mt1"


@pytest.mark.parametrize(("changes", "accepted"), [
    pytest.param({"amount": 999_999_999_999_999}, True, id="the largest amount"),
    pytest.param({"amount": 1_000_000_000_000_000}, False, id="beyond it"),
    pytest.param({"balance": -1_000_000_000_000_000}, False, id="balance beyond it"),
    pytest.param({"account_number": "1" * 40}, True, id="40-digit account"),
    pytest.param({"account_number": "1" * 41}, False, id="41-digit account"),
    pytest.param({"date": "1970-01-01 07:00:00"}, True, id="the epoch in WIB"),
    pytest.param({"date": "1969-12-31 23:59:59"}, False, id="before 1970"),
])
def test_the_edges_of_what_a_mutation_may_hold(changes: dict[str, Any], accepted: bool) -> None:
    read = parse_moota_push(push(item(**changes)))
    assert (len(read.mutations), len(read.unreadable)) == ((1, 0) if accepted else (0, 1))


def test_token_is_accepted_for_mutation_id_and_an_empty_push_is_nothing() -> None:
    assert parse_moota_push(
        push(item(mutation_id=_DROP, token="aolk4PekJxM"))).mutations[0].mutation_id == (
        "aolk4PekJxM"
    )
    assert parse_moota_push(b"[]").mutations == []


@pytest.mark.parametrize(("bank", "bank_type"), [
    pytest.param({"bank_type": "bcaGiro", "label": "BCA Giro"}, "bcaGiro", id="named"),
    pytest.param(None, None, id="null, as some webhooks send"),
    pytest.param(_DROP, None, id="absent"),
    pytest.param("bca", None, id="not an object"),
    pytest.param({"bank_type": 7}, None, id="not a string"),
])
def test_the_bank_type_is_read_from_the_nested_account_when_there_is_one(
    bank: Any, bank_type: str | None
) -> None:
    """RAILS.md §3.2: ``bank_id`` is Moota's opaque id of the account; its bank is named only
    by the nested ``bank.bank_type``, which may be missing. Missing is no reason to refuse."""
    [read] = parse_moota_push(push(item(bank=bank))).mutations
    assert read.bank_type == bank_type


@pytest.mark.parametrize(("bank_type", "bank"), [
    ("bca", "bca"), ("bcaGiro", "bca"), ("bri", "bri"), ("briCmsV2", "bri"),
    ("briGiro", "bri"), ("mandiriOnlineV2", "mandiri"), ("mandiriMcm2V2", "mandiri"),
    ("mandiriBisnisV2", "mandiri"),
    # Other banks, the Syariah ones included, are other banks: never BCA, BRI or Mandiri.
    ("bcaSyariahV2", "bcasyariah"), ("briSyariahCmsV2", "brisyariahcms"),
    ("mandiriSyariah", "mandirisyariah"), ("bsi", "bsi"), ("bniV2", "bni"),
    # A type Lunas does not know names nothing: the account number decides, as without one.
    ("bcaGiroV3", None), ("klikBca", None),
])
def test_a_moota_bank_type_names_the_bank_lunas_books_the_mutation_to(bank_type: str,
                                                                      bank: str | None) -> None:
    assert bank_of_type(bank_type) == bank


def test_mutations_keep_their_order() -> None:
    body = push(item(mutation_id="a"), item(mutation_id="b", type="DB"))
    assert [(m.mutation_id, m.direction) for m in parse_moota_push(body).mutations] == [
        ("a", "CR"),
        ("b", "DB"),
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"", "not valid JSON", id="empty body"),
        pytest.param(b"[{", "not valid JSON", id="truncated json"),
        pytest.param(b"\xff\xfe\x00", "not valid JSON", id="not text"),
        pytest.param(push(item())[1:-1], "JSON array", id="object not array"),
        # Parsed, but no mutation nests like this, and keeping it for a person re-encodes it.
        pytest.param(b"[" + b"[" * 40 + b"]" * 40 + b"]", "nests deeper", id="nested 40 deep"),
        pytest.param(b"[" * 5000 + b"]" * 5000, "not valid JSON", id="past the stack"),
    ],
)
def test_a_body_that_is_not_an_array_of_items_is_refused_whole(body: bytes, reason: str) -> None:
    with pytest.raises(StatementRejected) as info:
        parse_moota_push(body)
    assert info.value.line is None
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("body", "line", "reason"),
    [
        pytest.param(push(item(), "x"), 2, "JSON object", id="second item not an object"),
        pytest.param(push(item(mutation_id=_DROP)), 1, "'mutation_id'", id="no id"),
        pytest.param(push(item(), item(bank_id="")), 2, "'bank_id'", id="empty bank id"),
        pytest.param(push(item(account_number=[1])), 1, "'account_number' must be", id="list"),
        pytest.param(push(item(date="10/03/2025")), 1, "date '10/03/2025'", id="bad date"),
        pytest.param(push(item(date=_DROP)), 1, "'date'", id="no date"),
        pytest.param(push(item(amount="150123.50")), 1, "non-zero sen", id="string sen"),
        pytest.param(push(item(amount=150123.5)), 1, "non-zero sen", id="number sen"),
        pytest.param(push(item(amount="Rp150.123")), 1, "not an amount", id="formatted"),
        pytest.param(push(item(amount=True)), 1, "not an amount", id="boolean"),
        pytest.param(push(item(amount=0)), 1, "amount is zero", id="zero"),
        pytest.param(push(item(amount=-5000)), 1, "negative", id="negative number"),
        pytest.param(push(item(amount=-1)), 1, "negative", id="minus one"),
        pytest.param(push(item(mutation_id=True)), 1, "'mutation_id' must be a string",
                     id="boolean id"),
        pytest.param(push(item(mutation_id="mt\x001")), 1, "'mutation_id' contains a NUL",
                     id="nul in id"),
        pytest.param(push(item(amount="-5000")), 1, "not an amount", id="negative string"),
        pytest.param(push(item(amount=_DROP)), 1, "'amount'", id="no amount"),
        pytest.param(push(item(type="KREDIT")), 1, "neither CR nor DB", id="bad type"),
        pytest.param(push(item(balance="2150123.45")), 1, "non-zero sen", id="balance sen"),
        pytest.param(
            BODY.replace(b'"amount":"150123.00"', b'"amount":NaN'), 1, "not an amount", id="nan"
        ),
    ],
)
def test_an_unreadable_item_is_set_aside_naming_why_and_the_others_are_read(
    body: bytes, line: int, reason: str
) -> None:
    from orchestrator.reconciliation.moota import unreadable_item

    read = parse_moota_push(body)
    sent = json.loads(body, parse_float=Decimal)
    assert len(read.mutations) == len(sent) - 1  # every other item of the push is read
    [aside] = read.unreadable
    assert reason in aside.problem
    assert aside.raw == unreadable_item(sent[line - 1], "").raw


# -- an item the feed lists that cannot be read: kept as received, once ---------------------

def test_an_unreadable_item_is_the_same_text_and_key_however_its_fields_are_ordered() -> None:
    from orchestrator.reconciliation.moota import unreadable_item

    a = unreadable_item({"mutation_id": "mt1", "amount": "1.500,00", "x": "\x00\ud800"}, "bad")
    b = unreadable_item({"x": "\x00\ud800", "amount": "1.500,00", "mutation_id": "mt1"}, "bad")
    assert a.raw == b.raw and a.key == b.key and a.raw.isascii()
    assert a.mutation_ref == "mt1"
    assert unreadable_item({"mutation_id": "mt2"}, "bad").key != a.key


@pytest.mark.parametrize(("item", "ref"), [
    ({"token": "tk9"}, "tk9"),           # the payload shape that calls the id "token"
    ({"mutation_id": 12345}, "12345"),
    ({"mutation_id": True}, None),
    ({"mutation_id": ""}, None),
    ({"mutation_id": "x" * 200}, "x" * 200),
    ({"mutation_id": "x" * 201}, None),  # longer than any id; not a reference to follow
    ({"mutation_id": " mt3 "}, "mt3"),
    ({"mutation_id": "a\x00b"}, None),
    (["not", "an", "object"], None),
])
def test_an_unreadable_item_names_its_mutation_only_by_a_usable_id(item: Any, ref: str | None
                                                                  ) -> None:
    from orchestrator.reconciliation.moota import unreadable_item

    assert unreadable_item(item, "bad").mutation_ref == ref


def test_the_reason_an_item_is_set_aside_is_kept_to_500_characters() -> None:
    [aside] = parse_moota_push(push(item(amount="9" * 1_000 + "x"))).unreadable
    assert len(aside.problem) == 500 and aside.problem.startswith("amount '999")
