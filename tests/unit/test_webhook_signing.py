"""Outbound webhook signatures: what a merchant receives verifies, anything altered does not."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from orchestrator.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify

SECRET = "whsec_test_0123456789"
BODY = b'{"id":"evt_1","type":"order.paid","created_at":"2026-01-05T03:00:00.000Z","data":{}}'
TS = 1_767_582_000


def test_headers_carry_the_timestamp_and_a_v1_hmac_over_timestamp_and_body() -> None:
    headers = sign(SECRET, BODY, TS)
    expected = hmac.new(SECRET.encode(), f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers == {TIMESTAMP_HEADER: str(TS), SIGNATURE_HEADER: f"t={TS},v1={expected}"}


def test_a_signature_verifies() -> None:
    header = sign(SECRET, BODY, TS)[SIGNATURE_HEADER]
    assert verify(SECRET, BODY, header, now_ts=TS)
    assert verify(SECRET, BODY, header, now_ts=TS + 300)
    assert verify(SECRET.encode(), BODY, header, now_ts=TS - 300)


@pytest.mark.parametrize(
    ("secret", "body", "now_ts", "why"),
    [
        (SECRET, BODY.replace(b"order.paid", b"order.expired"), TS, "tampered body"),
        (SECRET, BODY + b" ", TS, "one extra byte"),
        ("whsec_someone_else", BODY, TS, "wrong secret"),
        (SECRET, BODY, TS + 301, "stale timestamp"),
        (SECRET, BODY, TS - 301, "timestamp from the future"),
    ],
)
def test_anything_altered_fails(secret: str, body: bytes, now_ts: int, why: str) -> None:
    header = sign(SECRET, BODY, TS)[SIGNATURE_HEADER]
    assert not verify(secret, body, header, now_ts=now_ts), why


def test_a_replayed_signature_with_a_new_timestamp_fails() -> None:
    signature = sign(SECRET, BODY, TS)[SIGNATURE_HEADER].split("v1=")[1]
    assert not verify(SECRET, BODY, f"t={TS + 1000},v1={signature}", now_ts=TS + 1000)


def test_the_tolerance_is_the_receivers_choice() -> None:
    header = sign(SECRET, BODY, TS)[SIGNATURE_HEADER]
    assert not verify(SECRET, BODY, header, now_ts=TS + 61, tolerance=60)
    assert verify(SECRET, BODY, header, now_ts=TS + 60, tolerance=60)


def test_a_rotated_secret_verifies_when_either_signature_matches() -> None:
    old = sign("old-secret", BODY, TS)[SIGNATURE_HEADER]
    new = sign(SECRET, BODY, TS)[SIGNATURE_HEADER]
    both = f"{old},v1={new.split('v1=')[1]}"
    assert verify(SECRET, BODY, both, now_ts=TS)
    assert verify("old-secret", BODY, both, now_ts=TS)
    assert not verify("third-secret", BODY, both, now_ts=TS)


def test_during_a_rotation_one_header_signs_under_the_new_secret_then_the_previous() -> None:
    """Stripe-style: ``t=<t>,v1=<new>,v1=<previous>``, so a receiver verifies with whichever
    secret it holds while the merchant deploys the new one."""
    headers = sign(SECRET, BODY, TS, previous="whsec_previous")
    new = hmac.new(SECRET.encode(), f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    old = hmac.new(b"whsec_previous", f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers == {TIMESTAMP_HEADER: str(TS),
                       SIGNATURE_HEADER: f"t={TS},v1={new},v1={old}"}
    assert verify(SECRET, BODY, headers[SIGNATURE_HEADER], now_ts=TS)
    assert verify("whsec_previous", BODY, headers[SIGNATURE_HEADER], now_ts=TS)
    assert not verify("whsec_third", BODY, headers[SIGNATURE_HEADER], now_ts=TS)
    assert not verify("whsec_previous", BODY + b" ", headers[SIGNATURE_HEADER], now_ts=TS)


@pytest.mark.parametrize(
    "header",
    ["", "garbage", f"t={TS}", "v1=abc", "t=abc,v1=00", f"t={TS},t={TS},v1=00",
     "t=²,v1=00", f"t={TS},v1=é", f"t={TS},v1"],
)
def test_malformed_headers_are_false_not_errors(header: str) -> None:
    assert not verify(SECRET, BODY, header, now_ts=TS)
