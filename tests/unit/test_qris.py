"""QRIS payloads (RAILS.md §5): the CRC, building and parsing, refusing corrupted strings, and
turning a merchant's static QRIS into a dynamic one for an amount."""

from __future__ import annotations

import pytest

from orchestrator.rails import qris


def static_payload(merchant_name: str = "TOKO LUNAS") -> str:
    """A printed (static) QRIS as a merchant receives it from the acquirer: 01=11, no amount."""
    return qris.with_crc(qris.serialize_tlv([
        ("00", "01"),
        ("01", "11"),
        ("26", qris.serialize_tlv([("00", "COM.GO-JEK.WWW"), ("01", "936009140000012345"),
                                   ("02", "G000111222"), ("03", "UMI")])),
        ("51", qris.serialize_tlv([("00", "ID.CO.QRIS.WWW"), ("02", "ID1020021181745"),
                                   ("03", "UMI")])),
        ("52", "5999"),
        ("53", "360"),
        ("58", "ID"),
        ("59", merchant_name),
        ("60", "JAKARTA"),
        ("61", "12190"),
    ]))


def dynamic_payload(amount: int = 150_000) -> str:
    return qris.build_dynamic(
        merchant_pan="936009140000012345", merchant_id="G000111222", nmid="ID1020021181745",
        merchant_name="TOKO LUNAS", merchant_city="JAKARTA", postal_code="12190",
        amount=amount, reference="att-0001",
    )


def test_crc_matches_the_ccitt_false_check_value() -> None:
    assert qris.crc16_ccitt_false(b"123456789") == 0x29B1


def test_a_built_payload_parses_back_to_what_was_asked() -> None:
    payload = qris.parse(dynamic_payload(150_000))
    assert payload.dynamic and payload.amount == 150_000
    assert (payload.merchant_name, payload.merchant_city) == ("TOKO LUNAS", "JAKARTA")
    assert (payload.currency, payload.country) == ("360", "ID")
    tags = [tag for tag, _ in payload.fields]
    assert tags == sorted(tags) and tags[-1] == "63"
    assert dict(payload.fields)["62"] == qris.serialize_tlv([("05", "att-0001")])


def test_a_static_payload_has_no_amount() -> None:
    payload = qris.parse(static_payload())
    assert not payload.dynamic and payload.amount is None


def corrupted() -> list[object]:
    good = dynamic_payload(150_000)
    return [
        pytest.param(good.replace("5406150000", "5406950000"), id="amount-changed"),
        pytest.param(good[:-4] + ("0000" if good[-4:] != "0000" else "1111"), id="crc-changed"),
        pytest.param(good[:-8], id="crc-field-missing"),
        pytest.param(good[6:], id="format-indicator-missing"),
        pytest.param(qris.with_crc("0002015910ABC"), id="tlv-cut-short"),
        pytest.param(qris.with_crc("000201540450.5"), id="amount-with-sen"),
    ]


@pytest.mark.parametrize("payload", corrupted())
def test_a_corrupted_payload_is_refused(payload: str) -> None:
    with pytest.raises(qris.QrisError):
        qris.parse(payload)


def test_static_to_dynamic_sets_the_initiation_method_and_the_amount() -> None:
    dynamic = qris.static_to_dynamic(static_payload(), 50_000)

    payload = qris.parse(dynamic)  # raises unless the new CRC verifies
    values = dict(payload.fields)
    assert values["01"] == "12" and values["54"] == "50000"
    assert payload.dynamic and payload.amount == 50_000
    tags = [tag for tag, _ in payload.fields]
    assert tags.index("53") + 1 == tags.index("54") == tags.index("58") - 1
    assert "540550000" in dynamic


def test_static_to_dynamic_agrees_with_the_community_string_method() -> None:
    static = static_payload()
    body = static[:-4].replace("010211", "010212")  # strip the CRC value, keep "6304"
    before, after = body.split("5802ID")
    expected = qris.with_crc(before + "540550000" + "5802ID" + after[:-4])
    assert qris.static_to_dynamic(static, 50_000) == expected


def test_static_to_dynamic_edits_fields_not_text() -> None:
    # "010211" inside the merchant name would fool a blind string replace.
    payload = qris.parse(qris.static_to_dynamic(static_payload("TOKO 010211"), 75_000))
    assert payload.merchant_name == "TOKO 010211" and payload.amount == 75_000


def test_a_dynamic_payload_gets_its_amount_replaced() -> None:
    payload = qris.parse(qris.static_to_dynamic(dynamic_payload(150_000), 20_000))
    assert payload.amount == 20_000 and [t for t, _ in payload.fields].count("54") == 1
