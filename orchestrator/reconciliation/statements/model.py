"""What a parsed bank statement is, and the cell-level rules every bank format shares.

The dataclasses are the normalised result every format parser returns (STYLE rule 8: wire format
in, one shape out). The functions below them are the few rules the BCA, Mandiri and BRI parsers
must agree on, so they live once: how a CSV file becomes numbered rows, how an amount cell becomes
rupiah, how an account number is compared, how a WIB wall-clock time becomes UTC.

Every problem is reported as ``StatementRejected`` with the 1-based line of the uploaded file and
a reason a finance person can act on; the whole file is refused, never half-imported.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal, NoReturn

from orchestrator.domain.clock import WIB
from orchestrator.domain.errors import StatementRejected
from orchestrator.domain.money import MAX_RUPIAH, AmountOutOfRange, parse_rupiah

Direction = Literal["CR", "DB"]


@dataclass(frozen=True, kw_only=True)
class StatementLine:
    """One posted transaction (mutasi) as the bank printed it.

    Invariants: ``amount`` > 0 whole rupiah (the sign lives in ``direction``); ``posted_at`` is
    aware UTC (a date-only line is that date 00:00 WIB); ``line_no`` is 1-based in the file.
    """

    line_no: int
    posted_at: datetime
    amount: int
    direction: Direction
    description: str
    balance: int | None

    def __post_init__(self) -> None:
        if self.amount <= 0:
            raise ValueError(f"statement amount must be positive, got {self.amount}")
        if self.posted_at.utcoffset() != timedelta(0):
            raise ValueError(f"posted_at must be aware UTC, got {self.posted_at!r}")


@dataclass(frozen=True, kw_only=True)
class ParsedStatement:
    """A whole statement file. ``period_*`` are the dates the file states (BCA's ``Periode``);
    ``None`` when the format states none (Mandiri MCM, BRI), rather than a guess from the lines.
    ``skipped_pending`` counts lines the bank has not posted yet (BCA ``PEND``)."""

    bank: str
    account_number: str
    lines: tuple[StatementLine, ...]
    skipped_pending: int
    period_start: date | None
    period_end: date | None


LineFields = tuple[int, datetime, int, Direction, str, int | None]
"""A ``StatementLine``'s fields as a plain tuple, in its field order (``line_no``, ``posted_at``,
``amount``, ``direction``, ``description``, ``balance``): what a large import holds per line,
since a tuple costs a fraction of a dataclass instance to build and to keep."""


def as_fields(line: StatementLine) -> LineFields:
    return (line.line_no, line.posted_at, line.amount, line.direction, line.description,
            line.balance)


@dataclass(frozen=True, kw_only=True)
class StatementRows:
    """``ParsedStatement`` with its lines as ``LineFields`` (same values, same order)."""

    bank: str
    account_number: str
    lines: list[LineFields]
    skipped_pending: int
    period_start: date | None
    period_end: date | None

    def to_parsed(self) -> ParsedStatement:
        return ParsedStatement(
            bank=self.bank,
            account_number=self.account_number,
            lines=tuple(
                StatementLine(line_no=n, posted_at=at, amount=amount, direction=direction,
                              description=description, balance=balance)
                for n, at, amount, direction, description, balance in self.lines
            ),
            skipped_pending=self.skipped_pending,
            period_start=self.period_start,
            period_end=self.period_end,
        )


@dataclass(frozen=True, kw_only=True)
class Row:
    """One CSV record and the file line it starts on."""

    line_no: int
    cells: tuple[str, ...]

    @property
    def is_blank(self) -> bool:
        return all(not cell.strip() for cell in self.cells)


def read_rows(text: str, delimiter: str) -> list[Row]:
    """Split decoded text into CSV records numbered by the physical line each starts on."""
    return [Row(line_no=n, cells=tuple(cells)) for n, cells in RowReader(text, delimiter)]


_CHUNK = 1 << 20  # characters per StringIO in physical_lines


def physical_lines(text: str) -> Iterator[str]:
    """``text``'s lines, endings kept, exactly as ``io.StringIO(text, newline="")`` yields them
    (split at CRLF, CR and LF only), read through one StringIO per chunk of about a million
    characters that ends at a line break. A StringIO copies its initial value into a buffer of
    four bytes a character: for the whole text of a 64 MiB statement, 264 MiB held through the
    parse. A chunk ends after an LF, so a CRLF is never cut; a text with no LF left (CR endings
    only) is cut after a CR instead."""
    pos, size = 0, len(text)
    while pos < size:
        end = text.find("\n", pos + _CHUNK)
        if end < 0:
            end = text.find("\r", pos + _CHUNK)  # no LF beyond: no CRLF to cut either
        end = size if end < 0 else end + 1
        yield from io.StringIO(text[pos:end], newline="")
        pos = end


class RowReader:
    """CSV records of decoded text, one at a time: ``(line_no, cells)``, numbered by the
    physical line each starts on.

    ``newline=""`` lets the csv module see CRLF, LF and CR endings itself (and quoted line breaks);
    ``strict`` turns an unterminated quote, the usual sign of a file cut mid-row, into an error
    instead of a silently shortened last field.

    The csv module reads the text's lines through ``physical_lines``, a chunk at a time, not
    through one StringIO of the whole text (264 MiB held to parse a 64 MiB statement).

    Reading one record at a time keeps a large file from being held as row objects, but a parser
    then meets a bad cell before a CSV error further down, where reading the whole file first
    (``read_rows``) met the CSV error first. ``refuse`` restores that order.
    """

    def __init__(self, text: str, delimiter: str) -> None:
        self._reader = csv.reader(physical_lines(text), delimiter=delimiter, strict=True)
        self._start = 1
        self._failed = False

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        return self

    def __next__(self) -> tuple[int, list[str]]:
        try:
            cells = next(self._reader)
        except csv.Error as exc:
            self._failed = True
            raise StatementRejected(
                f"this is not valid CSV ({exc}); the file may be cut off or was edited by hand "
                "- download the statement again",
                line=self._start,
            ) from exc
        line_no, self._start = self._start, self._reader.line_num + 1
        return line_no, cells

    def refuse(self, problem: StatementRejected) -> NoReturn:
        """Raise ``problem``, or the CSV error of a later record if there is one."""
        if not self._failed:
            for _ in self:  # raises the CSV error, if any
                pass
        raise problem


def cell(text: str) -> str:
    """A cell without padding and without Excel's leading ``'`` text guard."""
    return text.strip().removeprefix("'").strip()


def fit_columns(row: Row, names: tuple[str, ...]) -> tuple[str, ...]:
    """The row's cells, exactly ``len(names)`` of them; trailing empty cells (a trailing
    delimiter added by a spreadsheet) are dropped, any other count refuses the file."""
    cells = row.cells
    while len(cells) > len(names) and not cells[-1].strip():
        cells = cells[:-1]
    if len(cells) != len(names):
        raise StatementRejected(
            f"expected {len(names)} columns ({', '.join(names)}) but found {len(cells)}; the "
            "row may be cut off or the file was changed in a spreadsheet",
            line=row.line_no,
        )
    return cells


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def check_account(found: str, expected_digits: str, *, line: int) -> None:
    """Refuse a file for another account: its lines would be matched against the wrong orders."""
    if digits(found) != expected_digits:
        raise StatementRejected(
            f"this statement is for account {cell(found)!r}, but it was uploaded for account "
            f"{expected_digits}; upload it under the right account",
            line=line,
        )


# Well-formed except for its sen part, so the reason can say exactly that.
_NONZERO_SEN = re.compile(r"(?:\d{1,3}(?:,\d{3})+|\d*)\.(?!0+\Z)\d{1,2}")


def rupiah_cell(text: str, *, column: str, line: int) -> int:
    """Whole rupiah from an amount cell (``150123.00``, ``"1,500,000.00"``, ``.00``).

    Strict on purpose: a cell that is not exactly an amount, or has a non-zero sen part, refuses
    the file rather than being rounded or skipped, because that line might be a customer's payment.
    """
    raw = cell(text)
    try:
        return parse_rupiah(raw)
    except ValueError as exc:
        if isinstance(exc, AmountOutOfRange):
            reason = (f"{column} {raw!r} is beyond {MAX_RUPIAH:,} rupiah; no bank prints such "
                      "an amount, so the file is corrupt")
        elif _NONZERO_SEN.fullmatch(raw):
            reason = (
                f"{column} {raw!r} has a non-zero sen part; rupiah transfers carry none, so this "
                "line cannot be matched safely - check the export with the bank"
            )
        else:
            reason = f'{column} {raw!r} is not an amount like 150123.00 or "1,500,000.00"'
        raise StatementRejected(reason, line=line) from exc


def balance_cell(text: str, *, column: str, line: int) -> int | None:
    """A running balance: empty means the bank printed none; a leading ``-`` is an overdraft."""
    raw = cell(text)
    if not raw:
        return None
    if raw.startswith("-"):
        return -rupiah_cell(raw[1:], column=column, line=line)
    return rupiah_cell(raw, column=column, line=line)


def wib_to_utc(local: datetime) -> datetime:
    """A naive wall-clock time printed by an Indonesian bank (WIB) as aware UTC."""
    return local.replace(tzinfo=WIB).astimezone(UTC)


def positive(amount: int, *, column: str, line: int) -> int:
    if amount <= 0:
        raise StatementRejected(f"{column} is zero; a transaction line must move money", line=line)
    return amount


def direction_cell(text: str, *, column: str, line: int) -> Direction:
    """``CR``/``DB`` in any case (BRI writes ``Cr``/``Db``)."""
    value = cell(text).upper()
    if value == "CR":
        return "CR"
    if value == "DB":
        return "DB"
    raise StatementRejected(f"{column} {cell(text)!r} is neither CR nor DB", line=line)


def one_sided(
    credit: int, debit: int, *, columns: tuple[str, str], line: int
) -> tuple[Direction, int]:
    """Direction and amount of a line with separate credit and debit columns.

    Exactly one side may be non-zero: a line with both (or neither) has no single meaning, and
    guessing would credit or drop money.
    """
    if credit > 0 and debit == 0:
        return "CR", credit
    if debit > 0 and credit == 0:
        return "DB", debit
    raise StatementRejected(
        f"exactly one of {columns[0]} and {columns[1]} must be non-zero, found {credit} and "
        f"{debit}",
        line=line,
    )


def leading_lines(text: str, limit: int) -> list[str]:
    """The first ``limit`` physical lines, split at the same breaks ``read_rows`` counts."""
    return re.split(r"\r\n|\r|\n", text, maxsplit=limit)[:limit]


PLAIN_AMOUNT = re.compile(r"[0-9]{1,15}\.00")
"""The usual amount cell (``150123.00``): ``rupiah_cell`` reads it as ``int(text[:-3])``. At most
15 digits (``MAX_RUPIAH``); a longer one takes ``rupiah_cell``'s path, which refuses it."""


def parse_header_and_lines(
    text: str, delimiter: str, *, bank: str, account_number: str,
    check_header: Callable[[Row], None],
    parse_line: Callable[[Row, str], StatementLine],
    usual_line: Callable[[int, list[str]], LineFields | None] | None = None,
) -> StatementRows:
    """The shape shared by one-header-row exports (Mandiri MCM, BRI): a header, then one line
    per transaction, no period and no pending rows. A header alone means a cut-off file.

    ``usual_line``, when given, reads a record of the usual shape faster and returns None for
    anything else, which ``parse_line`` then reads (or refuses) as always; it must return
    exactly what ``parse_line`` would."""
    reader = RowReader(text, delimiter)
    lines: list[LineFields] = []
    header: Row | None = None
    try:
        for line_no, cells in reader:
            if header is not None and usual_line is not None:
                fields = usual_line(line_no, cells)
                if fields is not None:
                    lines.append(fields)
                    continue
            row = Row(line_no=line_no, cells=tuple(cells))
            if row.is_blank:
                continue
            if header is None:
                check_header(row)
                header = row
            else:
                lines.append(as_fields(parse_line(row, account_number)))
        if header is None:
            raise StatementRejected("the file has no rows; download the statement again")
        if not lines:
            raise StatementRejected(
                "the file has a header but no transactions; it looks cut off or empty - "
                "download the statement again",
                line=header.line_no,
            )
    except StatementRejected as problem:
        reader.refuse(problem)
    return StatementRows(
        bank=bank,
        account_number=account_number,
        lines=lines,
        skipped_pending=0,
        period_start=None,
        period_end=None,
    )
