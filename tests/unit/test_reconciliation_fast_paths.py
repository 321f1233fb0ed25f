"""The large-import fast paths return exactly what the careful paths return.

Statement lines of the usual shape skip the per-cell checks (``_UsualLine`` for Mandiri, the
date cache in ``bca._read_body``); fingerprints are written without ``json.dumps`` when nothing
needs escaping; ids come in bulk. Each is compared here with the path it shortcuts, on the usual
shape and on the shapes that must fall back.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from orchestrator.domain.clock import WIB
from orchestrator.domain.errors import StatementRejected
from orchestrator.domain.ids import new_id
from orchestrator.reconciliation.bulk_ids import id_stream, new_ids
from orchestrator.reconciliation.fingerprint import (
    fingerprint_statement_lines,
    iter_fingerprints,
)
from orchestrator.reconciliation.statements import (
    StatementLine,
    bca,
    mandiri,
    parse_statement,
    read_statement,
)
from orchestrator.reconciliation.statements.model import Row, RowReader, as_fields

BCA_ACCOUNT, MANDIRI_ACCOUNT = "0123456789", "1370012345678"


def bca_file(rows: list[str]) -> bytes:
    head = ["Informasi Rekening - Mutasi Rekening", f"No. rekening : {BCA_ACCOUNT}",
            "Periode : 20/12/2025 - 10/01/2026", "Kode Mata Uang : Rp", "",
            "Tanggal Transaksi,Keterangan,Cabang,Jumlah,,Saldo"]
    return ("\r\n".join([*head, *rows, "Saldo Akhir,:,1.00"]) + "\r\n").encode()


BCA_ROWS = [
    "'21/12,'TRSF E-BANKING CR 150123.00 ANDI,'0000,150123.00,CR,2150123.00",
    "'21/12,'TRSF E-BANKING CR 150124.00 ANDI,'0000,150124.00,CR,2300247.00",  # cached date
    "'21/12,'  PADDED   TEXT  ,'0000,0150125.00,DB,2150122.00",  # leading zero, padding
    "'21/12,'BIAYA,'0000,\"1,500,000.00\",CR,\"3,650,122.00\"",  # thousands: careful path
    "'21/12,'BIAYA,'0000,10000.00,cr,3660122.00",  # lower-case direction: careful path
    "'21/12,'BIAYA,'0000,10000.00,DB,-5.00",  # overdraft balance: careful path
    "'21/12,'BIAYA,'0000,10000.00,DB,,",  # no balance, trailing delimiter: careful path
    "'03/01,'NEXT YEAR,'0000,77.00,CR,3660199.00",
    "'03/01,'NEXT YEAR \"QUOTED\" \\ SLASH,'0000,77.00,CR,3660276.00",
    "PEND,'KR OTOMATIS,'0000,75456.00,CR,3510291.00",
    "Saldo Awal,:,2000000.00",
]

MANDIRI_ROWS = [
    "1370012345678;IDR;28 Apr 2026 16:02:11;TRANSFER DARI DEWI   ;MCM InhouseTrf ;98765.00;0.00;"
    "10098765.00",
    "1370012345678;IDR;02 Mei 2026 08:15:22;TRANSFER DARI BUDI;;125456.00;0.00;10224221.00",
    "1370012345678;IDR;15 May 2026 04:13:08;BIAYA ADMINISTRASI;   ;0.00;12500.00;10211721.00",
    "1370-0123-45678;IDR;15 May 2026 04:13:09;DASHED ACCOUNT;;1.00;0.00;10211722.00",
    "1370012345678;idr;15 May 2026 04:13:10;LOWER CCY;;1.00;0.00;10211723.00",
    "1370012345678;IDR;5 May 2026 4:13:11;SHORT DATE;;1.00;0.00;10211724.00",
    "1370012345678;IDR;05-May-2026 04:13;DASHES NO SECONDS;;1.00;0.00;10211725.00",
    "1370012345678;IDR;15 May 2026 04:13:12;THOUSANDS;;\"1,000.00\";0.00;10212725.00",
    "1370012345678;IDR;15 May 2026 04:13:13;NO BALANCE;;1.00;0.00;",
    "1370012345678;IDR;15 May 2026 04:13:14;TRAILING;;1.00;0.00;10212727.00;;",
    "1370012345678;IDR;31 Dec 2026 23:59:59;YEAR END;;2.00;0.00;10212729.00",
]


def careful_bca(data: bytes) -> list[StatementLine]:
    """Every transaction row through ``bca._parse_line``, as before the fast path existed."""
    rows = [Row(line_no=n, cells=tuple(c)) for n, c in RowReader(data.decode(), ",")]
    preamble = bca._read_preamble(RowReader(data.decode(), ","), BCA_ACCOUNT)
    labels = {"saldoawal", "mutasikredit", "mutasidebet", "saldoakhir", "pend"}
    return [bca._parse_line(row, preamble) for row in rows
            if row.line_no > preamble.header_line and not row.is_blank
            and bca._first_label(row) not in labels]


def careful_mandiri(data: bytes) -> list[StatementLine]:
    rows = [Row(line_no=n, cells=tuple(c)) for n, c in RowReader(data.decode(), ";")]
    return [mandiri._parse_line(row, MANDIRI_ACCOUNT) for row in rows[1:] if not row.is_blank]


def test_bca_usual_rows_parse_as_the_careful_path_parses_them() -> None:
    data = bca_file(BCA_ROWS)
    parsed = read_statement("bca", data, account_number=BCA_ACCOUNT)
    assert parsed.lines == [as_fields(line) for line in careful_bca(data)]
    assert parsed.skipped_pending == 1
    assert parse_statement("bca", data, account_number=BCA_ACCOUNT) == parsed.to_parsed()


def test_mandiri_usual_rows_parse_as_the_careful_path_parses_them() -> None:
    data = ("\n".join([";".join(mandiri.COLUMNS), *MANDIRI_ROWS])
            + "\n").encode()
    parsed = read_statement("mandiri", data, account_number=MANDIRI_ACCOUNT)
    assert parsed.lines == [as_fields(line) for line in careful_mandiri(data)]
    assert [line[1] for line in parsed.lines][-1] == datetime(2026, 12, 31, 16, 59, 59,
                                                              tzinfo=UTC)


@pytest.mark.parametrize(("row", "line", "reason"), [
    ("'21/12,'X,'0000,0.00,CR,1.00", 8, "zero"),
    ("'21/12,'X,'0000,1.50,CR,1.00", 8, "sen"),
    ("'21/12,'X,'0000,1.00,XX,1.00", 8, "neither CR nor DB"),
    ("'15/06,'X,'0000,1.00,CR,1.00", 8, "inside the statement period"),
])
def test_a_bad_row_after_usual_rows_is_refused_as_before(row: str, line: int,
                                                          reason: str) -> None:
    data = bca_file([BCA_ROWS[0], row])
    with pytest.raises(StatementRejected, match=reason) as info:
        read_statement("bca", data, account_number=BCA_ACCOUNT)
    assert info.value.line == line


@pytest.mark.parametrize(("credit", "debit", "reason"), [
    ("0.00", "0.00", "exactly one of"),
    ("10000.00", "10000.00", "exactly one of"),
    ("10000.00", "1.00", "exactly one of"),
    ("1.00", "10000.00", "exactly one of"),
    ("10000.00", "0,00", "Debit Amount '0,00' is not an amount"),
])
def test_a_mandiri_row_of_the_usual_shape_but_no_single_side_is_refused_as_before(
    credit: str, debit: str, reason: str,
) -> None:
    """Full time stamps, plain amounts: the shape the fast path reads. It must hand these to the
    careful path, which refuses them, never guess a side."""
    row = f"1370012345678;IDR;15 May 2026 04:13:08;X;;{credit};{debit};10000.00"
    data = (";".join(mandiri.COLUMNS) + "\n" + MANDIRI_ROWS[0] + "\n" + row + "\n").encode()
    with pytest.raises(StatementRejected, match=reason) as info:
        read_statement("mandiri", data, account_number=MANDIRI_ACCOUNT)
    assert info.value.line == 3


def test_a_mandiri_row_one_column_short_is_refused_as_before() -> None:
    row = "1370012345678;IDR;15 May 2026 04:13:08;X;10000.00;0.00;10000.00"
    data = (";".join(mandiri.COLUMNS) + "\n" + MANDIRI_ROWS[0] + "\n" + row + "\n").encode()
    with pytest.raises(StatementRejected, match="expected 8 columns") as info:
        read_statement("mandiri", data, account_number=MANDIRI_ACCOUNT)
    assert info.value.line == 3


def test_a_csv_error_further_down_is_reported_first_as_when_rows_were_read_first() -> None:
    # A bad amount on line 8 and an unterminated quote on line 9: reading the whole file first
    # met the CSV error first, and still does.
    data = bca_file(["'21/12,'X,'0000,1.50,CR,1.00", "'21/12,\"'unterminated,1.00,CR,1.00"])
    with pytest.raises(StatementRejected, match="not valid CSV"):
        read_statement("bca", data, account_number=BCA_ACCOUNT)
    mcm = (";".join(mandiri.COLUMNS) + "\n" + MANDIRI_ROWS[0].replace("98765.00", "1.50")
           + "\n1370012345678;IDR;\"broken\n").encode()
    with pytest.raises(StatementRejected, match="not valid CSV"):
        read_statement("mandiri", mcm, account_number=MANDIRI_ACCOUNT)


# ---------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------


def reference_fingerprints(bank: str, account: str, lines: list[StatementLine]) -> list[str]:
    """The fingerprint as fingerprint.py's docstring defines it, written the plain way."""
    seen: Counter[tuple[str | int, ...]] = Counter()
    out = []
    for line in lines:
        key = (bank.strip().lower(), re.sub(r"\D", "", account),
               line.posted_at.astimezone(UTC).isoformat(), line.direction, line.amount,
               re.sub(r"\s+", " ", line.description).strip().upper(),
               "" if line.balance is None else line.balance)
        text = json.dumps([*key, seen[key]], ensure_ascii=False, separators=(",", ":"))
        out.append(hashlib.sha256(text.encode()).hexdigest())
        seen[key] += 1
    return out


DESCRIPTIONS = [
    "TRSF E-BANKING CR 150123.00 ANDI", "  padded\t\ttabs  ", 'quote " inside', "back \\ slash",
    "control \x01 char", "nbsp\u00a0and\u2003em space", "ünïcödé ß", "", "\x1c\x1dseparators",
    "line\nbreak", "ORD_01HZX7Q3V9K2M4N6P8R0S2T4V6 lower ord", 'é "quoted" and ünïcödé',
]


def test_fingerprints_equal_the_plain_definition_including_escapes_and_repeats() -> None:
    """Every line of the file three times over: the same key is seen a first, second and third
    time, and each occurrence gets its own fingerprint."""
    at = datetime(2026, 5, 15, 3, 0, tzinfo=UTC)
    lines = [StatementLine(line_no=n, posted_at=at, amount=1_000 + i % 3, direction="CR",
                           description=d, balance=None if i % 2 else 7)
             for n, (i, d) in enumerate(list(enumerate(DESCRIPTIONS)) * 3)]
    expected = reference_fingerprints(" BCA ", "0123-456", lines)
    assert fingerprint_statement_lines(" BCA ", "0123-456", lines) == expected
    assert list(iter_fingerprints(" BCA ", "0123-456", map(as_fields, lines))) == expected
    assert len(set(expected)) == len(expected)


def test_a_fingerprint_keys_the_instant_whatever_zone_it_is_given_in() -> None:
    at = datetime(2026, 5, 15, 3, 0, tzinfo=UTC)
    lines = [(n, at, 1_000, "CR", d, None) for n, d in enumerate(DESCRIPTIONS)]
    in_wib = [(n, at.astimezone(WIB), 1_000, "CR", d, None) for n, d in enumerate(DESCRIPTIONS)]
    assert list(iter_fingerprints("bca", "0123", in_wib)) == list(
        iter_fingerprints("bca", "0123", lines))  # type: ignore[arg-type]


def test_collapsing_whitespace_by_split_equals_the_regex_for_every_code_point() -> None:
    spaces = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if re.fullmatch(r"\s", c))
    assert spaces == "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    text = f"a{spaces}b {spaces} c{spaces}"
    assert " ".join(text.split()) == re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------
# Ids
# ---------------------------------------------------------------------------------------------


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def test_new_id_is_its_prefix_the_millisecond_and_80_random_bits() -> None:
    """The layout bulk ids reproduce: 26 Crockford base32 characters of one 128-bit number
    whose top bits are the Unix millisecond and whose low 80 bits are random."""
    before = time.time_ns() // 1_000_000
    ids = [new_id("ord") for _ in range(2_000)]
    after = time.time_ns() // 1_000_000
    assert all(re.fullmatch(r"ord_[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)
    values = [sum(_CROCKFORD.index(c) << 5 * (25 - n) for n, c in enumerate(i[4:]))
              for i in ids]
    stamps = [v >> 80 for v in values]
    assert before <= stamps[0] and stamps[-1] <= after
    assert stamps == sorted(stamps)  # made one after another: time-ordered
    randoms = [v & (2**80 - 1) for v in values]
    assert len(set(randoms)) == len(ids)  # distinct within one millisecond too
    assert max(randoms).bit_length() == 80  # all 80 bits drawn, the top one included
    assert set("".join(i[14:] for i in ids)) == set(_CROCKFORD)


def test_bulk_ids_are_laid_out_as_new_id_lays_them_out() -> None:
    one = new_id("mut")
    many = new_ids("mut", 1_000)
    shape = re.compile(r"mut_[0-9A-HJKMNP-TV-Z]{26}")
    assert all(shape.fullmatch(i) for i in [one, *many])
    assert len(set(many)) == 1_000
    # The time part is the millisecond, as new_id's: at or after the id made just before.
    assert min(i[:14] for i in many) >= one[:14]
    assert {i[14:] for i in many} != {many[0][14:]}
    assert many == sorted(many)  # rows inserted in this order append to the primary key


def test_an_id_stream_never_runs_dry_and_never_repeats() -> None:
    """An import takes as many ids as it has lines: the stream refills itself chunk by chunk."""
    ids = list(itertools.islice(id_stream("evt", chunk=3), 10))
    assert len(set(ids)) == 10
    assert all(re.fullmatch(r"evt_[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)
    assert re.fullmatch(r"mut_[0-9A-HJKMNP-TV-Z]{26}", next(id_stream("mut")))
