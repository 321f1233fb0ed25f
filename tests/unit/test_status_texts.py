"""What the status page's automatic incident text promises customers must be true of the moment."""

from __future__ import annotations

from statuspage.model import CONFIRMATION, INTAKE, ComponentStatus
from statuspage.texts import incident_texts

S = ComponentStatus
NAMES = {INTAKE: ("Penerimaan pesanan", "Order intake"), "qris": ("QRIS", "QRIS"),
         "va.bca": ("VA BCA", "VA BCA"), "manual": ("Transfer bank", "Bank transfer"),
         CONFIRMATION: ("Konfirmasi pembayaran", "Payment confirmation")}
METHODS = ("qris", "va.bca", "manual")


def test_other_methods_are_offered_only_while_one_works() -> None:
    texts = incident_texts(NAMES, ["qris"], {INTAKE: S.OPERATIONAL, "qris": S.MAJOR_OUTAGE,
                                             "va.bca": S.OPERATIONAL, "manual": S.OPERATIONAL},
                           METHODS)
    assert "Orders can still be placed with other payment methods" in texts.opened_en
    assert "metode pembayaran lain" in texts.opened


def test_no_other_method_is_promised_when_none_works() -> None:
    # Payment confirmation is operational on a quiet night: it is no way to pay.
    down = {INTAKE: S.OPERATIONAL, "qris": S.MAJOR_OUTAGE, "va.bca": S.MAJOR_OUTAGE,
            "manual": S.PARTIAL_OUTAGE, CONFIRMATION: S.OPERATIONAL}
    texts = incident_texts(NAMES, ["qris", "va.bca"], down, METHODS)
    assert "other payment methods" not in texts.opened_en
    assert "Payments cannot be made right now" in texts.opened_en
    assert "metode pembayaran lain" not in texts.opened


def test_no_other_method_is_promised_when_orders_cannot_be_taken() -> None:
    texts = incident_texts(NAMES, [INTAKE], {INTAKE: S.MAJOR_OUTAGE, "qris": S.OPERATIONAL,
                                             "va.bca": S.OPERATIONAL, "manual": S.OPERATIONAL},
                           METHODS)
    assert "other payment methods" not in texts.opened_en
