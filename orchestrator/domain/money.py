"""Money is an ``int`` of rupiah (IDR has no minor unit in practice). Parsing of bank amounts lives
here so every statement format agrees on what ``"1,500,000.00"`` means."""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.domain.errors import InvalidOrder

_AMOUNT = re.compile(r"(?P<int>\d{1,3}(?:,\d{3})+|\d*)(?:\.(?P<frac>\d{1,2}))?", re.ASCII)


MAX_RUPIAH = 999_999_999_999_999
"""No transfer, balance or order comes near a quadrillion rupiah (~US$60 billion); an amount
beyond it is a corrupt file or an attack, and refusing it keeps every amount well inside the
64-bit columns that hold money."""


RUPIAH = "IDR"
"""The ISO 4217 code of the only currency Lunas charges in. A payment a provider reports in any
other currency is not that many rupiah, whatever its number says (``order.judge_payment``)."""


def reported_currency(value: object) -> str:
    """The currency a provider reports an amount in, as Lunas compares it with ``RUPIAH``.

    No field (a QR v1 callback has none) is rupiah: Lunas charges in nothing else, so a provider
    that names no currency reports the one it was charged in. Anything stated is kept as stated,
    trimmed and upper-cased (``"idr"`` is rupiah; ``"USD"``, ``360`` or ``""`` are not), and
    bounded, since it reaches stored evidence."""
    if value is None:
        return RUPIAH
    return str(value).strip().upper()[:16]


class AmountOutOfRange(ValueError):
    """An amount beyond ``MAX_RUPIAH``."""


def parse_rupiah(text: str) -> int:
    """Parse a bank's amount text (``150123.00``, ``"1,500,000.00"``, ``.00``) into whole rupiah.

    Raises ``ValueError`` for anything else, including a non-zero sen part: IDR bank transfers carry
    no cents, and silently rounding one would hide a discrepancy.
    """
    cleaned = text.strip().strip('"').strip("'").strip()
    match = _AMOUNT.fullmatch(cleaned)
    if not cleaned or match is None or (not match.group("int") and match.group("frac") is None):
        raise ValueError(f"not an amount: {text!r}")
    frac = match.group("frac") or "0"
    if int(frac) != 0:
        raise ValueError(f"amount has a non-zero sen part: {text!r}")
    whole = match.group("int").replace(",", "")
    amount = int(whole) if whole else 0
    if amount > MAX_RUPIAH:
        raise AmountOutOfRange(f"amount is beyond {MAX_RUPIAH:,} rupiah: {text!r}")
    return amount


@dataclass(frozen=True, kw_only=True)
class AmountLimits:
    minimum: int
    maximum: int

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"bad amount limits {self.minimum}..{self.maximum}")

    def check(self, amount: int) -> None:
        if amount < self.minimum:
            raise InvalidOrder(
                f"amount must be at least {self.minimum} rupiah, got {amount}", field="amount"
            )
        if amount > self.maximum:
            raise InvalidOrder(
                f"amount must be at most {self.maximum} rupiah, got {amount}", field="amount"
            )


@dataclass(frozen=True, kw_only=True)
class UniqueCodeRange:
    """Codes ``low..high`` (inclusive) added to an order's amount to make its transfer amount."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError(f"bad unique code range {self.low}..{self.high}")

    def transfer_amounts(self, amount: int) -> range:
        return range(amount + self.low, amount + self.high + 1)


def amount_text(amount: int, currency: str) -> str:
    """An amount as notes people read write it: ``125000 rupiah``, or ``125 USD (not rupiah)``
    for a payment a provider reported in another currency, so nobody takes its number for
    rupiah."""
    return f"{amount} rupiah" if currency == RUPIAH else f"{amount} {currency} (not rupiah)"


def format_idr(amount: int) -> str:
    """``1500123`` → ``Rp1.500.123`` as Indonesian customers read it."""
    return "Rp" + f"{amount:,}".replace(",", ".")
