"""The event time a gateway stamps on a delivery (for ``lunas_webhook_receive_lag_seconds``):
the field that names the event, read in the provider's time zone; None when there is none."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator.rails.midtrans import notification_time
from orchestrator.rails.xendit import callback_time

MIDTRANS = {"transaction_time": "2025-03-10 09:00:05", "expiry_time": "2025-03-11 09:00:05"}


@pytest.mark.parametrize(("body", "expected"), [
    ({**MIDTRANS, "transaction_status": "settlement", "settlement_time": "2025-03-10 09:05:40"},
     datetime(2025, 3, 10, 2, 5, 40, tzinfo=UTC)),  # WIB is UTC+7
    ({**MIDTRANS, "transaction_status": "pending"}, datetime(2025, 3, 10, 2, 0, 5, tzinfo=UTC)),
    ({**MIDTRANS, "transaction_status": "expire"}, datetime(2025, 3, 11, 2, 0, 5, tzinfo=UTC)),
    ({**MIDTRANS, "transaction_status": "settlement"}, None),  # no settlement_time: unknown
    ({**MIDTRANS, "transaction_status": "refund", "settlement_time": "2025-03-10 09:05:40"},
     None),  # a refund's moment is not in the body
    ({**MIDTRANS, "transaction_status": "pending", "transaction_time": "10/03/2025"}, None),
    ({**MIDTRANS, "transaction_status": "settlement", "settlement_time": "0001-01-01 00:00:00"},
     None),  # before the first UTC instant Python (and so the database) can hold
])
def test_midtrans_notification_time(body: dict[str, Any], expected: datetime | None) -> None:
    assert notification_time(body) == expected


@pytest.mark.parametrize(("body", "expected"), [
    ({"payment_id": "p", "transaction_timestamp": "2025-03-10T02:05:39.000Z",
      "created": "2025-03-10T02:05:40.120Z"}, datetime(2025, 3, 10, 2, 5, 39, tzinfo=UTC)),
    ({"event": "qr.payment", "created": "2025-03-10T02:05:40.120Z"},
     datetime(2025, 3, 10, 2, 5, 40, 120_000, tzinfo=UTC)),
    ({"event": "qr.payment", "created": "2025-03-10T03:00:00Z",
      "data": {"created": "2025-03-10T02:05:40Z"}}, datetime(2025, 3, 10, 2, 5, 40, tzinfo=UTC)),
    ({"event": "ewallet.capture", "created": "2025-03-10T02:06:00Z",
      "data": {"updated": "2025-03-10T02:05:00Z"}}, datetime(2025, 3, 10, 2, 5, tzinfo=UTC)),
    ({"payment_id": "p"}, None),
    ({"payment_id": "p", "transaction_timestamp": "yesterday"}, None),
    ({"payment_id": "p", "transaction_timestamp": "0001-01-01T00:00:00+14:00"}, None),
    ({"payment_id": "p", "transaction_timestamp": "9999-12-31T23:59:59-23:59"}, None),
])
def test_xendit_callback_time(body: dict[str, Any], expected: datetime | None) -> None:
    assert callback_time(body) == expected
