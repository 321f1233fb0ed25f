"""Mutation fingerprints: a re-imported line gets the fingerprint it had before, two identical
genuine lines of one file get different ones, and Moota mutations are keyed by Moota's id."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchestrator.domain.clock import WIB
from orchestrator.reconciliation.fingerprint import fingerprint_moota, fingerprint_statement_lines
from orchestrator.reconciliation.statements import StatementLine, parse_statement

FIXTURES = Path(__file__).parent / "fixtures" / "statements"
ACCOUNT = "0123456789"


def line(
    description: str = "TRSF E-BANKING CR 0303/FTSCY/WS95031 150123.00 ANDI",
    *,
    amount: int = 150_123,
    balance: int | None = 2_150_123,
    line_no: int = 8,
) -> StatementLine:
    return StatementLine(
        line_no=line_no,
        posted_at=datetime(2025, 3, 3, tzinfo=WIB).astimezone(UTC),
        amount=amount,
        direction="CR",
        description=description,
        balance=balance,
    )


def prints(*lines: StatementLine, bank: str = "bca", account: str = ACCOUNT) -> list[str]:
    return fingerprint_statement_lines(bank, account, lines)


def test_the_fingerprint_is_sha256_of_the_documented_canonical_tuple() -> None:
    # Pinned on purpose: changing the canonical form re-keys every stored mutation.
    canonical = (
        '["bca","0123456789","2025-03-02T17:00:00+00:00","CR",150123,'
        '"TRSF E-BANKING CR 0303/FTSCY/WS95031 150123.00 ANDI",2150123,0]'
    )
    assert prints(line()) == [hashlib.sha256(canonical.encode()).hexdigest()]


def test_a_line_without_balance_uses_an_empty_balance() -> None:
    canonical = (
        '["bca","0123456789","2025-03-02T17:00:00+00:00","CR",150123,'
        '"TRSF E-BANKING CR 0303/FTSCY/WS95031 150123.00 ANDI","",0]'
    )
    assert prints(line(balance=None)) == [hashlib.sha256(canonical.encode()).hexdigest()]


def test_two_identical_lines_in_one_file_get_different_fingerprints() -> None:
    first, second = prints(line(balance=None, line_no=8), line(balance=None, line_no=9))
    assert first != second


def test_the_same_line_re_imported_gets_the_same_fingerprint() -> None:
    assert prints(line(line_no=8)) == prints(line(line_no=30))


def test_a_re_import_holding_both_identical_lines_reproduces_both() -> None:
    twins = [line(balance=None), line(balance=None)]
    earlier = prints(line("SETORAN TUNAI", balance=None), *twins)
    later = prints(*twins, line("BIAYA ADM", amount=10_000, balance=None))
    assert later[:2] == earlier[1:]


def test_known_limit_imports_splitting_identical_lines_without_balance_collide() -> None:
    """Documented in the module: each file holds one copy as occurrence 0, so the second copy
    looks like the first. Running balances keep real BCA/Mandiri/BRI lines apart."""
    twin = line(balance=None)
    assert prints(line("SETORAN TUNAI", balance=None), twin)[1] == prints(twin)[0]
    assert prints(line(balance=2_150_123))[0] != prints(line(balance=2_300_246))[0]


def test_padding_and_case_of_the_description_do_not_matter() -> None:
    assert prints(line("  trsf e-banking CR 0303/FTSCY/WS95031\t150123.00   ANDI ")) == prints(
        line()
    )


def test_account_compared_by_digits_and_bank_by_name() -> None:
    assert prints(line(), account="012-345-6789") == prints(line()) == prints(line(), bank=" BCA ")
    assert prints(line(), account="0123456788") != prints(line())
    assert prints(line(), bank="mandiri") != prints(line())


def test_anything_that_moves_money_differently_is_a_different_line() -> None:
    base = line()
    variants = [
        replace(base, amount=150_124),
        replace(base, direction="DB"),
        replace(base, posted_at=base.posted_at + timedelta(days=1)),
        replace(base, balance=2_150_124),
        replace(base, description="TRSF E-BANKING CR 0303/FTSCY/WS95031 150123.00 BUDI"),
    ]
    assert len({prints(v)[0] for v in [base, *variants]}) == len(variants) + 1


def test_identical_payments_in_a_parsed_statement_get_different_fingerprints() -> None:
    data = (FIXTURES / "bca_separate.csv").read_bytes()
    parsed = parse_statement("bca", data, account_number=ACCOUNT)
    fingerprints = fingerprint_statement_lines(parsed.bank, parsed.account_number, parsed.lines)
    assert len(set(fingerprints)) == len(parsed.lines) == 6


def test_an_overlapping_bca_statement_re_imports_to_the_same_fingerprints() -> None:
    march = (FIXTURES / "bca_separate.csv").read_bytes().decode()
    # A later export of the same account from 05/03: its first line, 03/03, is gone.
    later = (
        march.replace("Periode : 01/03/2025 - 31/03/2025", "Periode : 05/03/2025 - 04/04/2025")
        .replace("'03/03,'TRSF E-BANKING CR 0303/FTSCY/WS95031 150123.00 ANDI,'0000,"
                 "150123.00,CR,2150123.00\n", "")
        .encode()
    )
    first = parse_statement("bca", march.encode(), account_number=ACCOUNT)
    second = parse_statement("bca", later, account_number=ACCOUNT)
    assert len(second.lines) == len(first.lines) - 1
    assert fingerprint_statement_lines("bca", ACCOUNT, second.lines) == (
        fingerprint_statement_lines("bca", ACCOUNT, first.lines)[1:]
    )


def test_an_overlapping_mandiri_export_re_imports_to_the_same_fingerprints() -> None:
    header, *rows = (FIXTURES / "mandiri_mcm.csv").read_text().splitlines()
    account = "1370012345678"
    april_may = "\n".join([header, *rows[:3]]).encode()
    may_june = "\n".join([header, *rows[1:]]).encode()
    a = parse_statement("mandiri", april_may, account_number=account)
    b = parse_statement("mandiri", may_june, account_number=account)
    assert (
        fingerprint_statement_lines("mandiri", account, a.lines)[1:]
        == fingerprint_statement_lines("mandiri", account, b.lines)[:2]
    )


def test_moota_fingerprint_is_keyed_by_moota_id_only() -> None:
    assert fingerprint_moota("mt9XkQ2aLp0") == hashlib.sha256(b"moota:mt9XkQ2aLp0").hexdigest()
    assert fingerprint_moota("mt9XkQ2aLp0") != fingerprint_moota("mt9XkQ2aLp1")
