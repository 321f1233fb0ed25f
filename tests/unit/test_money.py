"""Money is an ``int`` of rupiah: bank amount text, order amount limits, unique-code transfer
amounts and how an amount is shown to an Indonesian customer."""

from __future__ import annotations

import pytest

from orchestrator.domain.errors import InvalidOrder
from orchestrator.domain.money import (
    MAX_RUPIAH,
    AmountLimits,
    AmountOutOfRange,
    UniqueCodeRange,
    format_idr,
    parse_rupiah,
)

# ---------------------------------------------------------------------------------------------
# parse_rupiah: the amount text of every statement format means one number of whole rupiah
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rupiah"),
    [
        pytest.param("150123.00", 150_123, id="plain with sen"),
        pytest.param('"1,500,000.00"', 1_500_000, id="bca double-quoted thousands"),
        pytest.param("'1,127,500.00", 1_127_500, id="excel leading apostrophe"),
        pytest.param("1,500,000.00", 1_500_000, id="thousands unquoted"),
        pytest.param("1,500", 1_500, id="thousands without sen"),
        pytest.param(".00", 0, id="bri zero as .00"),
        pytest.param("0.00", 0, id="unused side 0.00"),
        pytest.param("10000", 10_000, id="moota plain integer"),
        pytest.param("43560.0", 43_560, id="one sen digit zero"),
        pytest.param("  150123.00  ", 150_123, id="surrounding spaces"),
        pytest.param("\t10000\r\n", 10_000, id="tab and crlf"),
        pytest.param(' "1,500,000.00" ', 1_500_000, id="spaces outside the quotes"),
        pytest.param('" 1,500,000.00 "', 1_500_000, id="spaces inside the quotes"),
    ],
)
def test_parse_rupiah_reads(text: str, rupiah: int) -> None:
    assert parse_rupiah(text) == rupiah


def test_parse_rupiah_reads_up_to_a_quadrillion_less_one_and_no_further() -> None:
    assert parse_rupiah("999,999,999,999,999.00") == MAX_RUPIAH == 999_999_999_999_999
    for beyond in ("1,000,000,000,000,000.00", "1000000000000000", "99999999999999999999"):
        with pytest.raises(AmountOutOfRange, match="beyond 999,999,999,999,999 rupiah"):
            parse_rupiah(beyond)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("12.50", id="non-zero sen is never rounded away"),
        pytest.param("12.05", id="non-zero sen, leading zero"),
        pytest.param("1.5", id="non-zero sen, one digit"),
        pytest.param("abc", id="letters"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param('""', id="empty quotes"),
        pytest.param(".", id="lone dot"),
        pytest.param("1,50,000.00", id="lakh-style grouping"),
        pytest.param("1500,000.00", id="first group over three digits"),
        pytest.param(",500.00", id="leading comma"),
        pytest.param("-5.00", id="negative"),
        pytest.param("+5.00", id="explicit plus"),
        pytest.param("1.2.3", id="two dots"),
        pytest.param("1.500.000", id="indonesian dot thousands is ambiguous"),
        pytest.param("100.000", id="three decimals"),
        pytest.param("1,127,500.00 DB", id="bca jumlah with CR/DB suffix"),
        pytest.param("1 500 000", id="space thousands"),
        pytest.param("Rp150.000", id="currency prefix"),
        pytest.param("\u0661\u0665\u0660\u0660\u0660", id="arabic-indic digits"),
        pytest.param("\uff11\uff15\uff10\uff10\uff10.00", id="fullwidth digits"),
    ],
)
def test_parse_rupiah_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"amount"):
        parse_rupiah(text)


# ---------------------------------------------------------------------------------------------
# AmountLimits: both ends inclusive; outside them the request cannot become an order
# ---------------------------------------------------------------------------------------------

LIMITS = AmountLimits(minimum=10_000, maximum=50_000_000)


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param(10_000, id="minimum"),
        pytest.param(10_001, id="just above minimum"),
        pytest.param(1_500_000, id="typical"),
        pytest.param(49_999_999, id="just below maximum"),
        pytest.param(50_000_000, id="maximum"),
    ],
)
def test_amount_within_limits_is_accepted(amount: int) -> None:
    LIMITS.check(amount)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        pytest.param(9_999, "at least 10000 rupiah, got 9999", id="just below minimum"),
        pytest.param(0, "at least 10000 rupiah, got 0", id="zero"),
        pytest.param(-10_000, "at least 10000 rupiah, got -10000", id="negative"),
        pytest.param(50_000_001, "at most 50000000 rupiah, got 50000001", id="just above maximum"),
    ],
)
def test_amount_outside_limits_is_an_invalid_order(amount: int, message: str) -> None:
    with pytest.raises(InvalidOrder, match=message) as refused:
        LIMITS.check(amount)
    assert refused.value.field == "amount"
    assert refused.value.code == "invalid_order"


@pytest.mark.parametrize(("minimum", "maximum"), [(1, 1), (1, 10_000), (10_000, 10_000)])
def test_limits_from_one_rupiah_and_a_single_allowed_amount_are_sensible(
    minimum: int, maximum: int
) -> None:
    limits = AmountLimits(minimum=minimum, maximum=maximum)
    limits.check(minimum)
    limits.check(maximum)


@pytest.mark.parametrize(
    ("minimum", "maximum"),
    [
        pytest.param(0, 10_000, id="a zero-rupiah order"),
        pytest.param(-1, 10_000, id="negative minimum"),
        pytest.param(10_001, 10_000, id="minimum above maximum"),
    ],
)
def test_nonsense_amount_limits_are_refused(minimum: int, maximum: int) -> None:
    with pytest.raises(ValueError, match="bad amount limits"):
        AmountLimits(minimum=minimum, maximum=maximum)


# ---------------------------------------------------------------------------------------------
# UniqueCodeRange: transfer amount = order amount + a code in low..high (inclusive)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "amount", "first", "last", "count"),
    [
        pytest.param(1, 999, 150_000, 150_001, 150_999, 999, id="codes 1..999"),
        pytest.param(0, 999, 150_000, 150_000, 150_999, 1000, id="code 0 allowed"),
        pytest.param(500, 500, 150_000, 150_500, 150_500, 1, id="single code"),
        pytest.param(100, 199, 1_500_000, 1_500_100, 1_500_199, 100, id="codes 100..199"),
    ],
)
def test_transfer_amounts(
    low: int, high: int, amount: int, first: int, last: int, count: int
) -> None:
    amounts = UniqueCodeRange(low=low, high=high).transfer_amounts(amount)
    assert (amounts[0], amounts[-1], len(amounts)) == (first, last, count)
    assert amount + low in amounts
    assert amount + high in amounts
    assert amount + low - 1 not in amounts
    assert amount + high + 1 not in amounts


@pytest.mark.parametrize(
    ("low", "high"),
    [
        pytest.param(-1, 999, id="negative low"),
        pytest.param(1000, 999, id="low above high"),
        pytest.param(-5, -1, id="all negative"),
    ],
)
def test_bad_unique_code_range_is_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="bad unique code range"):
        UniqueCodeRange(low=low, high=high)


# ---------------------------------------------------------------------------------------------
# format_idr: Rp, no space, dots between thousands, no sen
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        pytest.param(0, "Rp0", id="zero"),
        pytest.param(999, "Rp999", id="below a thousand"),
        pytest.param(1_000, "Rp1.000", id="one thousand"),
        pytest.param(150_123, "Rp150.123", id="six digits"),
        pytest.param(1_500_123, "Rp1.500.123", id="docstring example"),
        pytest.param(1_000_000_000, "Rp1.000.000.000", id="one billion"),
    ],
)
def test_format_idr(amount: int, shown: str) -> None:
    assert format_idr(amount) == shown
