"""BRI (BRImo / internet banking) all-quoted 19-column CSV export (RAILS.md §4.4) into a
``ParsedStatement``.

``TGL_TRAN`` is WIB wall-clock time ``YYYY-MM-DD HH:MM:SS``; amounts are ``1234.00`` with zero
written ``.00``; ``GLSIGN`` is ``Cr``/``Db``. The description is ``DESK_TRAN`` followed by
``REMARK_CUSTOM`` (the human text, "Transfer Dari ... via BRImo") when the bank filled it in.

``GLSIGN`` must agree with the amount columns: a ``Cr`` line whose amount sits in
``MUTASI_DEBET`` is contradictory, and picking one reading could credit money that left the
account. As with Mandiri, a header with no rows is refused (cut off or empty) and the period is
``None``.
"""

from __future__ import annotations

from datetime import datetime

from orchestrator.domain.errors import StatementRejected
from orchestrator.reconciliation.statements.model import (
    Direction,
    ParsedStatement,
    Row,
    StatementLine,
    StatementRows,
    balance_cell,
    cell,
    check_account,
    direction_cell,
    fit_columns,
    leading_lines,
    one_sided,
    parse_header_and_lines,
    rupiah_cell,
    wib_to_utc,
)

BANK = "bri"
LABEL = "BRI (BRImo) 19-column CSV"

COLUMNS = (
    "ID",
    "NOREK",
    "TGL_TRAN",
    "TGL_EFEKTIF",
    "JAM_TRAN",
    "SEQ",
    "DESK_TRAN",
    "SALDO_AWAL_MUTASI",
    "MUTASI_DEBET",
    "MUTASI_KREDIT",
    "SALDO_AKHIR_MUTASI",
    "GLSIGN",
    "TRUSER",
    "KODE_TRAN",
    "KODE_TRAN_TELLER",
    "TRREMK",
    "TLBDS1",
    "TLBDS2",
    "REMARK_CUSTOM",
)
_NOREK, _TGL_TRAN, _DESK_TRAN = 1, 2, 6
_DEBET, _KREDIT, _SALDO_AKHIR, _GLSIGN, _REMARK_CUSTOM = 8, 9, 10, 11, 18
_TGL_TRAN_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


def header_line(text: str) -> int | None:
    """1-based line of the header if ``text`` looks like a BRI export."""
    for number, line in enumerate(leading_lines(text, 40), start=1):
        if line.replace('"', "").replace(" ", "").upper().startswith("ID,NOREK,TGL_TRAN"):
            return number
    return None


def parse(text: str, *, account_number: str) -> ParsedStatement:
    """Parse a decoded BRI export; ``account_number`` is digits only."""
    return parse_rows(text, account_number=account_number).to_parsed()


def parse_rows(text: str, *, account_number: str) -> StatementRows:
    """``parse`` with the lines as plain tuples."""
    return parse_header_and_lines(text, ",", bank=BANK, account_number=account_number,
                                  check_header=_check_header, parse_line=_parse_line)


def _check_header(row: Row) -> None:
    names = [cell(c).upper() for c in row.cells]
    while names and not names[-1]:
        names.pop()
    if names != list(COLUMNS):
        raise StatementRejected(
            f"expected the BRI header {','.join(COLUMNS)!r} on the first line; download the "
            "statement as CSV from BRImo or BRI internet banking",
            line=row.line_no,
        )


def _parse_line(row: Row, account_number: str) -> StatementLine:
    cells = fit_columns(row, COLUMNS)
    line = row.line_no
    check_account(cells[_NOREK], account_number, line=line)
    debit = rupiah_cell(cells[_DEBET], column="MUTASI_DEBET", line=line)
    credit = rupiah_cell(cells[_KREDIT], column="MUTASI_KREDIT", line=line)
    sides = (COLUMNS[_KREDIT], COLUMNS[_DEBET])
    direction, amount = one_sided(credit, debit, columns=sides, line=line)
    _check_glsign(cells[_GLSIGN], direction, line=line)
    texts = (cell(cells[_DESK_TRAN]), cell(cells[_REMARK_CUSTOM]))
    return StatementLine(
        line_no=line,
        posted_at=wib_to_utc(_tgl_tran(cells[_TGL_TRAN], line=line)),
        amount=amount,
        direction=direction,
        description=" ".join(text for text in texts if text),
        balance=balance_cell(cells[_SALDO_AKHIR], column="SALDO_AKHIR_MUTASI", line=line),
    )


def _check_glsign(text: str, direction: Direction, *, line: int) -> None:
    """An empty GLSIGN defers to the amount columns; a present one must agree with them."""
    if not cell(text):
        return
    if direction_cell(text, column="GLSIGN", line=line) != direction:
        column = "MUTASI_KREDIT" if direction == "CR" else "MUTASI_DEBET"
        raise StatementRejected(
            f"GLSIGN says {cell(text)!r} but the amount is in {column}; the line contradicts "
            "itself - check the export with the bank",
            line=line,
        )


def _tgl_tran(text: str, *, line: int) -> datetime:
    for layout in _TGL_TRAN_FORMATS:
        try:
            return datetime.strptime(cell(text), layout)
        except ValueError:
            continue
    raise StatementRejected(
        f"TGL_TRAN {cell(text)!r} is not a date like '2026-05-14 09:21:07'", line=line
    )
