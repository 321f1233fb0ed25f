"""KlikBCA individual "Mutasi Rekening" CSV export (RAILS.md §4.1) into a ``ParsedStatement``.

The file is a labelled preamble, a header row, transaction rows and closing totals::

    No. rekening : 0123456789
    Periode : 01/03/2025 - 31/03/2025
    Tanggal Transaksi,Keterangan,Cabang,Jumlah,,Saldo      (separate: 5th column is CR/DB)
    Tanggal Transaksi,Keterangan,Cabang,Jumlah,Saldo       (combined: Jumlah "1,127,500.00 DB")
    '03/03,'TRSF E-BANKING CR ...,'0000,150123.00,CR,2150123.00
    PEND,'KR OTOMATIS LLG-ANTAR BANK SITI,'0000,75456.00,CR,2215579.00
    Saldo Awal,:,2000000.00   ... Mutasi Kredit / Mutasi Debet / Saldo Akhir

Decisions:

* Dates are ``DD/MM`` without a year; the year is the one that puts the date inside ``Periode``,
  so a period from 20/12/2025 to 10/01/2026 reads ``03/01`` as 2026. A period of a year or more
  is refused because a ``DD/MM`` date could then fall in either year.
* ``PEND`` rows are counted in ``skipped_pending`` and not returned: the bank has not posted them,
  they carry no date and may still change, so they are imported from a later export that shows
  them posted (and by then the fingerprint is that of the posted line).
* The closing ``Saldo Akhir`` line is required: it is the only sign the export is complete, so a
  file that ends without it was cut off and is refused rather than half-imported. The other
  totals (``Saldo Awal``, ``Mutasi Kredit``, ``Mutasi Debet``) are skipped wherever they appear.
* The totals are not reconciled against the lines: the layout rests on few sources (RAILS.md
  §7; in its example ``Mutasi Kredit`` includes the PEND row), and a wrong assumption would
  refuse good files. Worth adding once real exports confirm the arithmetic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time

from orchestrator.domain.errors import StatementRejected
from orchestrator.reconciliation.statements.model import (
    PLAIN_AMOUNT,
    Direction,
    LineFields,
    ParsedStatement,
    Row,
    RowReader,
    StatementLine,
    StatementRows,
    as_fields,
    balance_cell,
    cell,
    check_account,
    direction_cell,
    fit_columns,
    leading_lines,
    positive,
    rupiah_cell,
    wib_to_utc,
)

BANK = "bca"
LABEL = "KlikBCA 'Mutasi Rekening' CSV"

_SEPARATE = ("Tanggal Transaksi", "Keterangan", "Cabang", "Jumlah", "CR/DB", "Saldo")
_COMBINED = ("Tanggal Transaksi", "Keterangan", "Cabang", "Jumlah", "Saldo")
_HEADER = "tanggaltransaksi"
_ACCOUNT_LABELS = frozenset({"norekening", "nomorrekening", "norek"})
_TOTAL_LABELS = frozenset({"saldoawal", "mutasikredit", "mutasidebet"})
_CLOSING_LABEL = "saldoakhir"
_DATE = re.compile(r"(\d{1,2})/(\d{1,2})(?:/(\d{4}))?")
_PERIOD = re.compile(r"(\d{1,2}/\d{1,2}/\d{4})\s*-\s*(\d{1,2}/\d{1,2}/\d{4})")
_DIRECTIONS: dict[str, Direction] = {"CR": "CR", "DB": "DB"}
_COMBINED_AMOUNT = re.compile(r"(?P<amount>.*?)\s*(?P<direction>CR|DB)", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class _Period:
    start: date
    end: date


@dataclass(frozen=True, kw_only=True)
class _Preamble:
    period: _Period
    columns: tuple[str, ...]
    header_line: int


def header_line(text: str) -> int | None:
    """1-based line of the transaction header if ``text`` looks like a KlikBCA export."""
    for number, line in enumerate(leading_lines(text, 40), start=1):
        if _label(line.split(",", 1)[0]) == _HEADER:
            return number
    return None


def parse(text: str, *, account_number: str) -> ParsedStatement:
    """Parse a decoded KlikBCA export; ``account_number`` is digits only."""
    return parse_rows(text, account_number=account_number).to_parsed()


def parse_rows(text: str, *, account_number: str) -> StatementRows:
    """``parse`` with the lines as plain tuples."""
    reader = RowReader(text, ",")
    try:
        preamble = _read_preamble(reader, account_number)
        lines, pending = _read_body(reader, preamble)
    except StatementRejected as problem:
        reader.refuse(problem)
    return StatementRows(
        bank=BANK,
        account_number=account_number,
        lines=lines,
        skipped_pending=pending,
        period_start=preamble.period.start,
        period_end=preamble.period.end,
    )


def _label(text: str) -> str:
    """``"No. rekening "`` → ``"norekening"``: labels differ in case, dots and spacing."""
    return re.sub(r"[^a-z]", "", text.lower())


def _first_label(row: Row) -> str:
    return _label(row.cells[0].partition(":")[0]) if row.cells else ""


def _read_preamble(rows: RowReader, account_number: str) -> _Preamble:
    """Reads ``rows`` up to and including the header."""
    account_seen = False
    period: _Period | None = None
    for line_no, cells in rows:
        row = Row(line_no=line_no, cells=tuple(cells))
        label, _, value = ",".join(row.cells).partition(":")
        value = value.strip(" ,'\t")
        if _label(label) in _ACCOUNT_LABELS:
            check_account(value, account_number, line=row.line_no)
            account_seen = True
        elif _label(label) == "periode":
            period = _parse_period(value, line=row.line_no)
        elif _label(label) == "kodematauang":
            _check_currency(value, line=row.line_no)
        elif _first_label(row) == _HEADER:
            if not account_seen:
                raise StatementRejected(
                    "no 'No. rekening' line above the header, so the account cannot be "
                    "confirmed; upload the file exactly as KlikBCA exported it",
                    line=row.line_no,
                )
            if period is None:
                raise StatementRejected(
                    "no 'Periode' line above the header; the year of each DD/MM date comes "
                    "from it - upload the file exactly as KlikBCA exported it",
                    line=row.line_no,
                )
            return _Preamble(period=period, columns=_layout(row), header_line=row.line_no)
    raise StatementRejected(
        "no 'Tanggal Transaksi' header row found; this is not a KlikBCA 'Mutasi Rekening' CSV"
    )


def _parse_period(value: str, *, line: int) -> _Period:
    match = _PERIOD.fullmatch(value)
    try:
        if match is None:
            raise ValueError(value)
        start, end = (datetime.strptime(part, "%d/%m/%Y").date() for part in match.groups())
    except ValueError as exc:
        raise StatementRejected(
            f"Periode {value!r} is not 'DD/MM/YYYY - DD/MM/YYYY'", line=line
        ) from exc
    if end < start:
        raise StatementRejected(f"Periode {value!r} ends before it starts", line=line)
    if (end - start).days >= 365:
        # Within a shorter period every DD/MM names exactly one day; within a year or more it
        # could name two, and guessing the year would misdate a payment.
        raise StatementRejected(
            f"Periode {value!r} is a year or longer, so its DD/MM dates are ambiguous; export "
            "a shorter period",
            line=line,
        )
    return _Period(start=start, end=end)


def _check_currency(value: str, *, line: int) -> None:
    if cell(value).upper() not in {"RP", "IDR", ""}:
        raise StatementRejected(
            f"the statement currency is {cell(value)!r}; only rupiah accounts are supported",
            line=line,
        )


def _layout(header: Row) -> tuple[str, ...]:
    names = [_label(c) for c in header.cells]
    while names and not names[-1]:
        names.pop()
    for columns in (_SEPARATE, _COMBINED):
        expected = [_label(c) for c in columns]
        if columns is _SEPARATE:
            expected[4] = ""  # KlikBCA leaves the CR/DB column unnamed
        if names == expected:
            return columns
    raise StatementRejected(
        f"unknown KlikBCA header {','.join(header.cells)!r}; expected "
        "'Tanggal Transaksi,Keterangan,Cabang,Jumlah,,Saldo' or "
        "'Tanggal Transaksi,Keterangan,Cabang,Jumlah,Saldo'",
        line=header.line_no,
    )


def _read_body(rows: RowReader, preamble: _Preamble) -> tuple[list[LineFields], int]:
    """Transaction lines and the count of ``PEND`` rows, up to the required ``Saldo Akhir``.

    A row of the usual shape (separate CR/DB column, a date already seen, plain amounts) is read
    without the per-cell checks; every other row goes through ``_parse_line`` as always. The
    date cache holds only what ``_parse_line`` computed for that very cell text."""
    lines: list[LineFields] = []
    pending = 0
    closed = False
    last = preamble.header_line
    usual = preamble.columns is _SEPARATE
    dates: dict[str, datetime] = {}
    for line_no, cells in rows:
        if usual and not closed and len(cells) == 6:
            posted_at = dates.get(cells[0])
            amount_text, balance_text = cells[3], cells[5]
            direction = _DIRECTIONS.get(cells[4])
            if (posted_at is not None and direction is not None
                    and PLAIN_AMOUNT.fullmatch(amount_text)
                    and PLAIN_AMOUNT.fullmatch(balance_text)):
                amount = int(amount_text[:-3])
                if amount > 0:
                    lines.append((line_no, posted_at, amount, direction, cell(cells[1]),
                                  int(balance_text[:-3])))
                    last = line_no
                    continue
        row = Row(line_no=line_no, cells=tuple(cells))
        if row.is_blank:
            continue
        last = line_no
        label = _first_label(row)
        if label in _TOTAL_LABELS:
            continue
        if label == _CLOSING_LABEL:
            closed = True
        elif closed:
            raise StatementRejected(
                "a row follows the closing totals (Saldo Akhir); upload one statement per file",
                line=row.line_no,
            )
        elif label == "pend":
            pending += 1
        else:
            line = _parse_line(row, preamble)
            lines.append(as_fields(line))
            dates[row.cells[0]] = line.posted_at
    if not closed:
        raise StatementRejected(
            "the file ends without the closing 'Saldo Akhir' line, so it looks cut off; "
            "download the statement again",
            line=last,
        )
    return lines, pending


def _parse_line(row: Row, preamble: _Preamble) -> StatementLine:
    cells = fit_columns(row, preamble.columns)
    line = row.line_no
    if preamble.columns is _SEPARATE:
        amount_text, direction_text, balance_text = cells[3], cells[4], cells[5]
    else:
        amount_text, direction_text = _split_combined(cells[3], line=line)
        balance_text = cells[4]
    posted_on = _posted_on(cells[0], preamble.period, line=line)
    amount = rupiah_cell(amount_text, column="Jumlah", line=line)
    return StatementLine(
        line_no=line,
        posted_at=wib_to_utc(datetime.combine(posted_on, time())),
        amount=positive(amount, column="Jumlah", line=line),
        direction=direction_cell(direction_text, column="CR/DB", line=line),
        description=cell(cells[1]),
        balance=balance_cell(balance_text, column="Saldo", line=line),
    )


def _split_combined(text: str, *, line: int) -> tuple[str, str]:
    match = _COMBINED_AMOUNT.fullmatch(cell(text))
    if match is None:
        raise StatementRejected(
            f'Jumlah {cell(text)!r} has no CR/DB marker (expected like "1,127,500.00 DB")',
            line=line,
        )
    return match["amount"], match["direction"]


def _posted_on(text: str, period: _Period, *, line: int) -> date:
    """The calendar day of a ``DD/MM`` (or ``DD/MM/YYYY``) date inside the statement period."""
    match = _DATE.fullmatch(cell(text))
    if match is None:
        raise StatementRejected(f"Tanggal Transaksi {cell(text)!r} is not a DD/MM date", line=line)
    day, month = int(match[1]), int(match[2])
    years = [int(match[3])] if match[3] else [period.start.year, period.end.year]
    for year in years:
        try:
            candidate = date(year, month, day)
        except ValueError:
            continue
        if period.start <= candidate <= period.end:
            return candidate
    raise StatementRejected(
        f"Tanggal Transaksi {cell(text)!r} is not a date inside the statement period "
        f"{period.start:%d/%m/%Y} - {period.end:%d/%m/%Y}",
        line=line,
    )
