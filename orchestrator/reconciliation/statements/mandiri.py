"""Mandiri MCM (Kopra) semicolon CSV export (RAILS.md §4.3) into a ``ParsedStatement``.

    AccountNo;Ccy;PostDate;Remarks;AdditionalDesc;Credit Amount;Debit Amount;Close Balance
    1370012345678;IDR;15 Mei 2026 04:13:08;TRANSFER DARI BUDI   ;MCM InhouseTrf ;125456.00;0.00;...

``PostDate`` is WIB wall-clock time with an English or Indonesian month name (``May``/``Mei``,
``Aug``/``Agu``/``Agustus``, ...). Every row carries the account number, and every row must be for
the account the file was uploaded for. The format states no period, so ``period_start`` and
``period_end`` are ``None``. A file with a header and no rows is refused: an export cut right
after its header cannot be told apart from an empty one, and importing nothing is never urgent.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from orchestrator.domain.errors import StatementRejected
from orchestrator.reconciliation.statements.model import (
    PLAIN_AMOUNT,
    Direction,
    LineFields,
    ParsedStatement,
    Row,
    StatementLine,
    StatementRows,
    balance_cell,
    cell,
    check_account,
    digits,
    fit_columns,
    leading_lines,
    one_sided,
    parse_header_and_lines,
    rupiah_cell,
    wib_to_utc,
)

BANK = "mandiri"
LABEL = "Mandiri MCM (semicolon) CSV"

COLUMNS = (
    "AccountNo",
    "Ccy",
    "PostDate",
    "Remarks",
    "AdditionalDesc",
    "Credit Amount",
    "Debit Amount",
    "Close Balance",
)

_MONTH_NAMES = (
    ("january", "januari", "jan"),
    ("february", "februari", "pebruari", "feb", "peb"),
    ("march", "maret", "mar"),
    ("april", "apr"),
    ("may", "mei"),
    ("june", "juni", "jun"),
    ("july", "juli", "jul"),
    ("august", "agustus", "aug", "agu", "agt", "ags"),
    ("september", "sept", "sep"),
    ("october", "oktober", "oct", "okt"),
    ("november", "nopember", "nov", "nop"),
    ("december", "desember", "dec", "des"),
)
_MONTHS = {name: number for number, names in enumerate(_MONTH_NAMES, 1) for name in names}
_POST_DATE = re.compile(
    r"(?P<day>\d{1,2})[\s-]+(?P<month>[A-Za-z]+)\.?[\s-]+(?P<year>\d{4})"
    r"(?:\s+(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?)?"
)


def header_line(text: str) -> int | None:
    """1-based line of the MCM header if ``text`` looks like a Mandiri MCM export."""
    for number, line in enumerate(leading_lines(text, 40), start=1):
        if _squash(line.replace('"', "")).startswith("accountno;ccy;postdate"):
            return number
    return None


def parse(text: str, *, account_number: str) -> ParsedStatement:
    """Parse a decoded MCM export; ``account_number`` is digits only."""
    return parse_rows(text, account_number=account_number).to_parsed()


def parse_rows(text: str, *, account_number: str) -> StatementRows:
    """``parse`` with the lines as plain tuples."""
    return parse_header_and_lines(text, ";", bank=BANK, account_number=account_number,
                                  check_header=_check_header, parse_line=_parse_line,
                                  usual_line=_UsualLine(account_number))


# A PostDate exactly as MCM writes it: "15 May 2026 04:13:08".
_USUAL_POST_DATE = re.compile(
    r"([0-9]{1,2}) ([A-Za-z]+) ([0-9]{4}) ([0-9]{1,2}):([0-9]{2}):([0-9]{2})")
_SEVEN_HOURS = timedelta(hours=7)  # WIB is UTC+7 all year


class _UsualLine:
    """Reads a row of the usual shape without the per-cell checks ``_parse_line`` makes, and
    returns None for any other row, which ``_parse_line`` then reads or refuses. Every value it
    returns is the one ``_parse_line`` would return for that row (tested on both paths)."""

    def __init__(self, account_number: str) -> None:
        self._account = account_number
        self._accounts_seen: set[str] = set()

    def __call__(self, line_no: int, cells: list[str]) -> LineFields | None:
        if len(cells) != 8:
            return None
        account, ccy, post_date, remarks, additional, credit_text, debit_text, balance = cells
        if account not in self._accounts_seen:
            if digits(account) != self._account:
                return None
            self._accounts_seen.add(account)
        if ccy != "IDR" or not (PLAIN_AMOUNT.fullmatch(credit_text)
                                and PLAIN_AMOUNT.fullmatch(debit_text)
                                and PLAIN_AMOUNT.fullmatch(balance)):
            return None
        credit, debit = int(credit_text[:-3]), int(debit_text[:-3])
        direction: Direction
        if credit > 0 and debit == 0:
            direction, amount = "CR", credit
        elif debit > 0 and credit == 0:
            direction, amount = "DB", debit
        else:
            return None
        date = _USUAL_POST_DATE.fullmatch(post_date)
        month = _MONTHS.get(date[2].lower()) if date else None
        if date is None or month is None:
            return None
        try:
            posted_at = datetime(int(date[3]), month, int(date[1]), int(date[4]), int(date[5]),
                                 int(date[6]), tzinfo=UTC) - _SEVEN_HOURS
        except ValueError:
            return None
        description = " ".join(part for part in (cell(remarks), cell(additional)) if part)
        return (line_no, posted_at, amount, direction, description, int(balance[:-3]))


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def _check_header(row: Row) -> None:
    names = [_squash(c) for c in row.cells]
    while names and not names[-1]:
        names.pop()
    if names != [_squash(c) for c in COLUMNS]:
        raise StatementRejected(
            f"expected the Mandiri MCM header {';'.join(COLUMNS)!r} on the first line; "
            "download the statement as MCM CSV",
            line=row.line_no,
        )


def _parse_line(row: Row, account_number: str) -> StatementLine:
    cells = fit_columns(row, COLUMNS)
    line = row.line_no
    check_account(cells[0], account_number, line=line)
    if cell(cells[1]).upper() != "IDR":
        raise StatementRejected(
            f"Ccy is {cell(cells[1])!r}; only rupiah (IDR) accounts are supported", line=line
        )
    credit = rupiah_cell(cells[5], column="Credit Amount", line=line)
    debit = rupiah_cell(cells[6], column="Debit Amount", line=line)
    direction, amount = one_sided(credit, debit, columns=(COLUMNS[5], COLUMNS[6]), line=line)
    return StatementLine(
        line_no=line,
        posted_at=wib_to_utc(_post_date(cells[2], line=line)),
        amount=amount,
        direction=direction,
        description=" ".join(part for part in (cell(cells[3]), cell(cells[4])) if part),
        balance=balance_cell(cells[7], column="Close Balance", line=line),
    )


def _post_date(text: str, *, line: int) -> datetime:
    """``15 May 2026 04:13:08`` / ``15 Mei 2026 04:13:08`` as a naive WIB datetime."""
    match = _POST_DATE.fullmatch(cell(text))
    month = _MONTHS.get(match["month"].lower()) if match else None
    try:
        if match is None or month is None:
            raise ValueError(text)
        return datetime(
            int(match["year"]),
            month,
            int(match["day"]),
            int(match["hour"] or 0),
            int(match["minute"] or 0),
            int(match["second"] or 0),
        )
    except ValueError as exc:
        raise StatementRejected(
            f"PostDate {cell(text)!r} is not a date like '15 May 2026 04:13:08'", line=line
        ) from exc
