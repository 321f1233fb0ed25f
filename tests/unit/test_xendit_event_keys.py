"""What makes two Xendit callbacks the same event (a repeat, stored and not acted on) or two."""

from __future__ import annotations

from typing import Any

from orchestrator.services.provider_webhooks import xendit_event_key


def capture(**charge: Any) -> dict[str, Any]:
    return {"event": "ewallet.capture", "business_id": "b1",
            "data": {"id": "ewc_1", "status": "SUCCEEDED", "capture_amount": 125_000, **charge}}


def test_a_charge_refunded_twice_in_part_is_two_events_and_its_capture_a_third() -> None:
    """A charge that still says SUCCEEDED after a refund differs from its capture, and a
    second partial refund from the first, only in ``refunded_amount``. Before: all three had
    the key ``xendit:ewallet:ewc_1:SUCCEEDED``, so both refunds were dropped as duplicates."""
    keys = [xendit_event_key(capture(refunded_amount=r)) for r in (None, 20_000, 50_000)]
    assert keys == ["xendit:ewallet:ewc_1:SUCCEEDED", "xendit:ewallet:ewc_1:SUCCEEDED:20000",
                    "xendit:ewallet:ewc_1:SUCCEEDED:50000"]
    assert xendit_event_key(capture(refunded_amount=0)) == keys[0]


def test_a_refund_callback_is_one_event_per_refund_and_status() -> None:
    refund = {"id": "rfd-1", "payment_id": "ewc_1", "status": "SUCCEEDED", "amount": 20_000}
    body = {"event": "refund.succeeded", "data": refund}
    nested = {"event": "refund.succeeded", "data": {"event": "refund.succeeded", "data": refund}}
    assert xendit_event_key(body) == xendit_event_key(nested) == "xendit:refund:rfd-1:SUCCEEDED"
    failed = {"event": "refund.failed", "data": {**refund, "status": "FAILED"}}
    assert xendit_event_key(failed) == "xendit:refund:rfd-1:FAILED"
    assert xendit_event_key({"event": "refund.succeeded", "data": "?"}) is None
