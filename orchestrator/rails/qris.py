"""QRIS (EMVCo merchant-presented QR) payloads: parse, validate the CRC, build (RAILS.md §5).

A QR string is TLV text: 2-digit tag, 2-digit decimal length, value. The last field is tag 63, a
CRC-16/CCITT-FALSE over everything before its value, including the literal ``6304``. A payload
whose CRC does not verify must never reach a customer: their banking app would refuse it, or
worse, a corrupted amount could be paid.
"""

from __future__ import annotations

from dataclasses import dataclass


class QrisError(ValueError):
    """The payload is not a well-formed QRIS string."""


def crc16_ccitt_false(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def parse_tlv(payload: str) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    i = 0
    while i < len(payload):
        if i + 4 > len(payload) or not payload[i:i + 4].isdigit():
            raise QrisError(f"bad TLV header at position {i}")
        tag, length = payload[i:i + 2], int(payload[i + 2:i + 4])
        value = payload[i + 4:i + 4 + length]
        if len(value) != length:
            raise QrisError(f"tag {tag} is cut short")
        fields.append((tag, value))
        i += 4 + length
    return fields


def serialize_tlv(fields: list[tuple[str, str]]) -> str:
    out = []
    for tag, value in fields:
        if len(value) > 99:
            raise QrisError(f"tag {tag} value longer than 99 characters")
        out.append(f"{tag}{len(value):02d}{value}")
    return "".join(out)


@dataclass(frozen=True, kw_only=True)
class QrisPayload:
    dynamic: bool
    amount: int | None
    merchant_name: str
    merchant_city: str
    currency: str
    country: str
    fields: tuple[tuple[str, str], ...]


def parse(payload: str) -> QrisPayload:
    """Parse and validate ``payload``; raises ``QrisError`` on any defect, including a bad CRC."""
    if not payload.startswith("000201"):
        raise QrisError("payload format indicator 000201 missing")
    if len(payload) < 8 or payload[-8:-4] != "6304":
        raise QrisError("CRC field 6304 must be last")
    expected = crc16_ccitt_false(payload[:-4].encode("ascii"))
    if payload[-4:].upper() != f"{expected:04X}":
        raise QrisError(f"CRC mismatch: payload says {payload[-4:]}, content gives {expected:04X}")
    fields = parse_tlv(payload)
    values = dict(fields)
    amount_text = values.get("54")
    amount = None
    if amount_text is not None:
        whole, _, sen = amount_text.partition(".")
        if not whole.isdigit() or (sen and int(sen) != 0):
            raise QrisError(f"amount {amount_text!r} is not whole rupiah")
        amount = int(whole)
    return QrisPayload(
        dynamic=values.get("01") == "12", amount=amount,
        merchant_name=values.get("59", ""), merchant_city=values.get("60", ""),
        currency=values.get("53", ""), country=values.get("58", ""), fields=tuple(fields),
    )


def with_crc(body_without_crc: str) -> str:
    head = body_without_crc + "6304"
    return head + f"{crc16_ccitt_false(head.encode('ascii')):04X}"


def build_dynamic(
    *, merchant_pan: str, merchant_id: str, nmid: str, merchant_name: str, merchant_city: str,
    postal_code: str, amount: int, reference: str, acquirer_guid: str = "ID.CO.QRIS.WWW",
    mcc: str = "5999",
) -> str:
    """A dynamic (single-use) QRIS payload for ``amount`` rupiah, as an acquirer would issue."""
    fields = [
        ("00", "01"),
        ("01", "12"),
        ("26", serialize_tlv([("00", acquirer_guid), ("01", merchant_pan), ("02", merchant_id),
                              ("03", "UMI")])),
        ("51", serialize_tlv([("00", "ID.CO.QRIS.WWW"), ("02", nmid), ("03", "UMI")])),
        ("52", mcc),
        ("53", "360"),
        ("54", str(amount)),
        ("58", "ID"),
        ("59", merchant_name[:25]),
        ("60", merchant_city[:15]),
        ("61", postal_code),
        ("62", serialize_tlv([("05", reference[:25])])),
    ]
    return with_crc(serialize_tlv(fields))


def static_to_dynamic(static_payload: str, amount: int) -> str:
    """Turn a merchant's printed (static) QRIS into a dynamic one for ``amount`` (RAILS.md §5)."""
    fields = [(t, v) for t, v in parse(static_payload).fields if t not in ("63", "54")]
    fields = [(t, "12") if t == "01" else (t, v) for t, v in fields]
    fields.append(("54", str(amount)))
    fields.sort(key=lambda tv: tv[0])
    return with_crc(serialize_tlv(fields))
