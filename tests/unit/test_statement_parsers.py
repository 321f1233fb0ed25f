"""Bank statement parsing: KlikBCA (both amount layouts), Mandiri MCM and BRI exports become one
normalised ParsedStatement; anything malformed refuses the whole file, naming the line and what
a finance person should do about it."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from orchestrator.domain.clock import WIB
from orchestrator.domain.errors import StatementRejected
from orchestrator.reconciliation.statements import (
    SUPPORTED_BANKS,
    ParsedStatement,
    StatementLine,
    model,
    parse_statement,
)
from orchestrator.reconciliation.statements.model import RowReader, physical_lines

FIXTURES = Path(__file__).parent / "fixtures" / "statements"

BCA_ACCOUNT = "0123456789"
BCA_COMBINED_ACCOUNT = "8705123456"
MANDIRI_ACCOUNT = "1370012345678"
BRI_ACCOUNT = "034101000123567"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def wib(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    """A WIB wall-clock time as the aware UTC instant a parser must return."""
    return datetime(year, month, day, hour, minute, sec, tzinfo=WIB).astimezone(UTC)


def edit(data: bytes, line_no: int, text: str) -> bytes:
    """``data`` with its 1-based line ``line_no`` replaced, so every other line keeps its number."""
    lines = data.split(b"\n")
    lines[line_no - 1] = text.encode()
    return b"\n".join(lines)


def rejected(bank: str, data: bytes, account: str) -> StatementRejected:
    with pytest.raises(StatementRejected) as info:
        parse_statement(bank, data, account_number=account)
    return info.value


def bca() -> bytes:
    return fixture("bca_separate.csv")


def mandiri() -> bytes:
    return fixture("mandiri_mcm.csv")


def bri() -> bytes:
    return fixture("bri_brimo.csv")


def bca_with(period: str, rows: list[str], *, preamble: tuple[str, ...] = (),
             footer: bool = True) -> bytes:
    """A KlikBCA export of ``rows`` (from line 7) for ``BCA_ACCOUNT`` over ``period``."""
    head = ["Informasi Rekening - Mutasi Rekening", *(preamble or (
        f"No. rekening : {BCA_ACCOUNT}", "Kode Mata Uang : Rp")), f"Periode : {period}", "",
        "Tanggal Transaksi,Keterangan,Cabang,Jumlah,,Saldo"]
    return "\n".join([*head, *rows, *(["Saldo Akhir,:,1.00"] if footer else []), ""]).encode()


def bca_row(day_month: str, amount: str = "10000.00", balance: str = "1.00") -> str:
    return f"'{day_month},'BIAYA ADM,'0000,{amount},DB,{balance}"


def without_line_numbers(parsed: ParsedStatement) -> list[tuple[object, ...]]:
    return [(line.posted_at, line.amount, line.direction, line.description, line.balance)
            for line in parsed.lines]


# ---------------------------------------------------------------------------------------------
# KlikBCA individual CSV
# ---------------------------------------------------------------------------------------------


class TestBcaSeparateColumns:
    @pytest.fixture
    def parsed(self) -> ParsedStatement:
        return parse_statement("bca", bca(), account_number=BCA_ACCOUNT)

    def test_reads_every_posted_line_with_its_file_line_number(
        self, parsed: ParsedStatement
    ) -> None:
        assert [line.line_no for line in parsed.lines] == [8, 9, 10, 11, 12, 13]
        assert parsed.lines[0] == StatementLine(
            line_no=8,
            posted_at=wib(2025, 3, 3),
            amount=150_123,
            direction="CR",
            description="TRSF E-BANKING CR 0303/FTSCY/WS95031 150123.00 ANDI",
            balance=2_150_123,
        )

    def test_a_date_only_line_is_midnight_wib_in_utc(self, parsed: ParsedStatement) -> None:
        assert parsed.lines[0].posted_at == datetime(2025, 3, 2, 17, 0, tzinfo=UTC)

    def test_debits_quoted_thousands_and_padded_narratives(self, parsed: ParsedStatement) -> None:
        assert (parsed.lines[1].direction, parsed.lines[1].amount) == ("DB", 10_000)
        deposit = parsed.lines[4]
        assert (deposit.amount, deposit.balance) == (1_500_000, 3_934_835)
        assert deposit.description == "SETORAN TUNAI"

    def test_pending_rows_are_counted_not_returned(self, parsed: ParsedStatement) -> None:
        assert parsed.skipped_pending == 1
        assert all("LLG-ANTAR BANK SITI" not in line.description for line in parsed.lines)

    def test_the_period_and_account_are_reported(self, parsed: ParsedStatement) -> None:
        assert (parsed.bank, parsed.account_number) == ("bca", BCA_ACCOUNT)
        assert (parsed.period_start, parsed.period_end) == (date(2025, 3, 1), date(2025, 3, 31))

    def test_two_identical_payments_on_one_day_are_both_kept(
        self, parsed: ParsedStatement
    ) -> None:
        twins = [line for line in parsed.lines if "SITI AMINAH" in line.description]
        assert [(t.amount, t.posted_at, t.balance) for t in twins] == [
            (147_356, wib(2025, 3, 7), 2_287_479),
            (147_356, wib(2025, 3, 7), 2_434_835),
        ]


def test_bca_combined_amount_column_carries_the_direction() -> None:
    parsed = parse_statement("bca", fixture("bca_combined.csv"), account_number="870-512-3456")
    assert [(line.amount, line.direction, line.balance) for line in parsed.lines] == [
        (287_490, "CR", 5_287_490),
        (1_127_500, "DB", 4_159_990),
        (98_765, "CR", 4_258_755),
    ]
    assert parsed.skipped_pending == 1
    assert parsed.account_number == BCA_COMBINED_ACCOUNT


def test_bca_dates_take_their_year_from_a_period_crossing_new_year() -> None:
    parsed = parse_statement(
        "bca", fixture("bca_year_crossing.csv"), account_number=BCA_ACCOUNT
    )
    assert [line.posted_at for line in parsed.lines] == [
        wib(2025, 12, 22),
        wib(2025, 12, 31),
        wib(2026, 1, 2),
    ]
    assert (parsed.period_start, parsed.period_end) == (date(2025, 12, 20), date(2026, 1, 10))


def test_bca_reads_lines_dated_on_the_first_and_the_last_day_of_its_period() -> None:
    data = bca_with("01/03/2025 - 31/03/2025", [bca_row("01/03"), bca_row("31/03")])
    parsed = parse_statement("bca", data, account_number=BCA_ACCOUNT)
    assert [line.posted_at for line in parsed.lines] == [wib(2025, 3, 1), wib(2025, 3, 31)]


def test_bca_a_date_with_its_year_is_read_as_written() -> None:
    """KlikBCA Bisnis writes DD/MM/YYYY: the year is the file's, not guessed from the period."""
    data = bca_with("20/12/2025 - 10/01/2026", [bca_row("21/12/2025"), bca_row("02/01/2026")])
    parsed = parse_statement("bca", data, account_number=BCA_ACCOUNT)
    assert [line.posted_at for line in parsed.lines] == [wib(2025, 12, 21), wib(2026, 1, 2)]


def test_bca_a_29_february_is_read_in_the_leap_year_of_a_period_crossing_new_year() -> None:
    data = bca_with("20/12/2023 - 10/03/2024", [bca_row("29/02")])
    parsed = parse_statement("bca", data, account_number=BCA_ACCOUNT)
    assert [line.posted_at for line in parsed.lines] == [wib(2024, 2, 29)]


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        pytest.param("15/03/2025 - 15/03/2025", date(2025, 3, 15), date(2025, 3, 15),
                     id="one day"),
        pytest.param("01/03/2025 - 28/02/2026", date(2025, 3, 1), date(2026, 2, 28),
                     id="364 days: every DD/MM still names one day"),
        pytest.param("1/3/2025-15/3/2025", date(2025, 3, 1), date(2025, 3, 15),
                     id="no padding or spaces"),
    ],
)
def test_bca_periods_up_to_a_year_less_a_day_are_read(period: str, start: date,
                                                       end: date) -> None:
    parsed = parse_statement("bca", bca_with(period, [bca_row("15/03")]),
                             account_number=BCA_ACCOUNT)
    assert (parsed.period_start, parsed.period_end) == (start, end)


@pytest.mark.parametrize(
    "preamble",
    [
        pytest.param((f"Nomor Rekening : {BCA_ACCOUNT}",), id="Nomor Rekening"),
        pytest.param((f"No. Rek : {BCA_ACCOUNT}",), id="No. Rek"),
        pytest.param((f"No. rekening : {BCA_ACCOUNT}", "Kode Mata Uang : IDR"), id="IDR"),
        pytest.param((f"No. rekening : {BCA_ACCOUNT}", "Kode Mata Uang :"), id="no currency"),
    ],
)
def test_bca_account_and_currency_labels_vary_between_exports(preamble: tuple[str, ...]
                                                              ) -> None:
    data = bca_with("01/03/2025 - 31/03/2025", [bca_row("05/03")], preamble=preamble)
    assert len(parse_statement("bca", data, account_number=BCA_ACCOUNT).lines) == 1


def test_bca_an_overdrawn_balance_is_negative() -> None:
    data = edit(bca(), 9, "'05/03,'BIAYA ADM,'0000,10000.00,DB,-2140123.00")
    parsed = parse_statement("bca", data, account_number=BCA_ACCOUNT)
    assert parsed.lines[1].balance == -2_140_123
    quoted = edit(bca(), 9, "'05/03,'BIAYA ADM,'0000,10000.00,DB,\"-1,500.00\"")
    assert parse_statement("bca", quoted, account_number=BCA_ACCOUNT).lines[1].balance == -1_500


def test_bca_combined_header_with_trailing_delimiters_is_the_combined_layout() -> None:
    data = fixture("bca_combined.csv").replace(b"Jumlah,Saldo\n", b"Jumlah,Saldo,,\n")
    assert parse_statement("bca", data, account_number=BCA_COMBINED_ACCOUNT) == parse_statement(
        "bca", fixture("bca_combined.csv"), account_number=BCA_COMBINED_ACCOUNT)


# ---------------------------------------------------------------------------------------------
# Mandiri MCM
# ---------------------------------------------------------------------------------------------


def test_mandiri_reads_english_and_indonesian_month_names_as_wib() -> None:
    parsed = parse_statement("mandiri", mandiri(), account_number=MANDIRI_ACCOUNT)
    assert [line.posted_at for line in parsed.lines] == [
        wib(2026, 4, 28, 16, 2, 11),
        wib(2026, 5, 2, 8, 15, 22),
        wib(2026, 5, 15, 4, 13, 8),
        wib(2026, 6, 3, 21, 47, 55),
    ]
    assert parsed.lines[1] == StatementLine(
        line_no=3,
        posted_at=wib(2026, 5, 2, 8, 15, 22),
        amount=125_456,
        direction="CR",
        description="TRANSFER DARI BUDI SANTOSO MCM InhouseTrf",
        balance=10_224_221,
    )
    assert (parsed.lines[2].direction, parsed.lines[2].amount) == ("DB", 12_500)
    assert parsed.lines[2].description == "BIAYA ADMINISTRASI"
    assert (parsed.period_start, parsed.period_end, parsed.skipped_pending) == (None, None, 0)


def mandiri_row(post_date: str, credit: str = "10000.00", debit: str = "0.00") -> bytes:
    header = mandiri().split(b"\n")[0].decode()
    row = f"{MANDIRI_ACCOUNT};IDR;{post_date};TRANSFER;;{credit};{debit};20000.00"
    return f"{header}\n{row}\n".encode()


@pytest.mark.parametrize(
    ("post_date", "expected"),
    [
        ("15 May 2026 04:13:08", wib(2026, 5, 15, 4, 13, 8)),
        ("15 Mei 2026 04:13:08", wib(2026, 5, 15, 4, 13, 8)),
        ("17 Agustus 2026 10:00:00", wib(2026, 8, 17, 10)),
        ("17 Agu 2026 10:00:00", wib(2026, 8, 17, 10)),
        ("17 Aug 2026 10:00:00", wib(2026, 8, 17, 10)),
        ("1 Oktober 2026 00:00:01", wib(2026, 10, 1, 0, 0, 1)),
        ("01 Okt 2026 00:00:01", wib(2026, 10, 1, 0, 0, 1)),
        ("25 Desember 2026 23:59:59", wib(2026, 12, 25, 23, 59, 59)),
        ("25 Des 2026 23:59:59", wib(2026, 12, 25, 23, 59, 59)),
        ("25 DEC 2026 23:59:59", wib(2026, 12, 25, 23, 59, 59)),
        ("09 Pebruari 2026 07:30:00", wib(2026, 2, 9, 7, 30)),
        ("31 Maret 2026", wib(2026, 3, 31)),
    ],
)
def test_mandiri_post_dates(post_date: str, expected: datetime) -> None:
    parsed = parse_statement("mandiri", mandiri_row(post_date), account_number=MANDIRI_ACCOUNT)
    assert parsed.lines[0].posted_at == expected


# Every way an MCM export (English or Indonesian, full or short, old spelling) names a month.
MONTH_NAMES = {
    1: ("January", "Januari", "Jan"),
    2: ("February", "Februari", "Pebruari", "Feb", "Peb"),
    3: ("March", "Maret", "Mar"),
    4: ("April", "Apr"),
    5: ("May", "Mei"),
    6: ("June", "Juni", "Jun"),
    7: ("July", "Juli", "Jul"),
    8: ("August", "Agustus", "Aug", "Agu", "Agt", "Ags"),
    9: ("September", "Sept", "Sep"),
    10: ("October", "Oktober", "Oct", "Okt"),
    11: ("November", "Nopember", "Nov", "Nop"),
    12: ("December", "Desember", "Dec", "Des"),
}


@pytest.mark.parametrize(
    ("name", "month"),
    [pytest.param(name, month, id=name) for month, names in MONTH_NAMES.items()
     for name in names],
)
@pytest.mark.parametrize("time", ["04:13:08", ""], ids=["with time", "date only"])
def test_mandiri_month_names(name: str, month: int, time: str) -> None:
    post_date = f"09 {name} 2026 {time}".strip()
    parsed = parse_statement("mandiri", mandiri_row(post_date), account_number=MANDIRI_ACCOUNT)
    expected = wib(2026, month, 9, 4, 13, 8) if time else wib(2026, month, 9)
    assert parsed.lines[0].posted_at == expected


def test_mandiri_header_with_trailing_delimiters_is_the_header() -> None:
    data = mandiri().replace(b"Close Balance\n", b"Close Balance;;\n", 1)
    assert parse_statement("mandiri", data, account_number=MANDIRI_ACCOUNT) == parse_statement(
        "mandiri", mandiri(), account_number=MANDIRI_ACCOUNT)


@pytest.mark.parametrize(
    ("insert", "name"),
    [(b"\n", "a blank line"), (b" ; ;  ;;;;; \n", "a row of padded empty cells")],
)
def test_a_blank_row_between_transactions_is_skipped_not_the_end(insert: bytes,
                                                                  name: str) -> None:
    lines = mandiri().split(b"\n")
    data = b"\n".join([*lines[:2], insert.rstrip(b"\n"), *lines[2:]])
    parsed = parse_statement("mandiri", data, account_number=MANDIRI_ACCOUNT)
    assert without_line_numbers(parsed) == without_line_numbers(
        parse_statement("mandiri", mandiri(), account_number=MANDIRI_ACCOUNT)), name
    assert [line.line_no for line in parsed.lines] == [2, 4, 5, 6]


# ---------------------------------------------------------------------------------------------
# BRI
# ---------------------------------------------------------------------------------------------


def test_bri_reads_all_quoted_rows_and_adds_the_custom_remark() -> None:
    parsed = parse_statement("bri", bri(), account_number=BRI_ACCOUNT)
    assert parsed.lines[0] == StatementLine(
        line_no=2,
        posted_at=wib(2026, 5, 14, 9, 21, 7),
        amount=175_333,
        direction="CR",
        description="NBMB BUDI SANTOSO TO TOKO CONTOH Transfer Dari BUDI SANTOSO via BRImo",
        balance=3_175_333,
    )
    fee = parsed.lines[1]
    assert (fee.direction, fee.amount, fee.description) == ("DB", 5_500, "BIAYA ADM BULANAN")
    assert [line.balance for line in parsed.lines] == [3_175_333, 3_169_833, 3_268_598]


@pytest.mark.parametrize(
    ("tgl_tran", "expected"),
    [
        ("2026-05-14 09:21:07", wib(2026, 5, 14, 9, 21, 7)),
        ("2026-05-14 09:21", wib(2026, 5, 14, 9, 21)),
        ("2026-05-14", wib(2026, 5, 14)),
    ],
)
def test_bri_tgl_tran_with_seconds_minutes_or_the_date_only(tgl_tran: str,
                                                            expected: datetime) -> None:
    data = bri().replace(b'"2026-05-14 09:21:07"', f'"{tgl_tran}"'.encode())
    assert parse_statement("bri", data, account_number=BRI_ACCOUNT).lines[0].posted_at == expected


def test_bri_a_one_rupiah_debit_moves_money() -> None:
    data = bri().replace(b'"5500.00",".00"', b'"1.00",".00"')
    fee = parse_statement("bri", data, account_number=BRI_ACCOUNT).lines[1]
    assert (fee.direction, fee.amount) == ("DB", 1)


def test_bri_an_empty_glsign_defers_to_the_amount_columns() -> None:
    data = bri().replace(b'"Cr","8888001"', b'"","8888001"').replace(b'"Db","SYSTEM"',
                                                                       b'"","SYSTEM"')
    assert parse_statement("bri", data, account_number=BRI_ACCOUNT) == parse_statement(
        "bri", bri(), account_number=BRI_ACCOUNT)


def test_bri_header_in_any_case_is_the_header() -> None:
    header = bri().split(b"\n")[0]
    assert parse_statement("bri", bri().replace(header, header.lower(), 1),
                           account_number=BRI_ACCOUNT) == parse_statement(
        "bri", bri(), account_number=BRI_ACCOUNT)


def test_bri_header_with_trailing_delimiters_is_the_header() -> None:
    data = bri().replace(b'"REMARK_CUSTOM"\n', b'"REMARK_CUSTOM",,\n', 1)
    assert parse_statement("bri", data, account_number=BRI_ACCOUNT) == parse_statement(
        "bri", bri(), account_number=BRI_ACCOUNT)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", 0),
        ("amount", -10_000),
        ("posted_at", datetime(2025, 3, 3, tzinfo=WIB)),
        ("posted_at", datetime(2025, 3, 3)),
    ],
)
def test_a_statement_line_is_positive_rupiah_at_an_aware_utc_instant(
    field: str, value: object
) -> None:
    fields: dict[str, object] = {
        "line_no": 8,
        "posted_at": wib(2025, 3, 3),
        "amount": 150_123,
        "direction": "CR",
        "description": "TRSF",
        "balance": None,
    }
    with pytest.raises(ValueError, match=field):
        StatementLine(**{**fields, field: value})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Tolerance: what exports and spreadsheets vary in parses the same
# ---------------------------------------------------------------------------------------------

Transform = Callable[[bytes], bytes]

VARIANTS: list[tuple[str, Transform]] = [
    ("crlf", lambda d: d.replace(b"\n", b"\r\n")),
    ("cr only", lambda d: d.replace(b"\n", b"\r")),
    ("utf-8 bom", lambda d: b"\xef\xbb\xbf" + d),
    ("bom and crlf", lambda d: b"\xef\xbb\xbf" + d.replace(b"\n", b"\r\n")),
    ("blank lines at the end", lambda d: d + b"\n\n\n"),
    ("no final newline", lambda d: d.rstrip(b"\n")),
]


@pytest.mark.parametrize(("name", "transform"), VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize(
    ("bank", "data", "account"),
    [
        ("bca", bca(), BCA_ACCOUNT),
        ("bca", fixture("bca_combined.csv"), BCA_COMBINED_ACCOUNT),
        ("mandiri", mandiri(), MANDIRI_ACCOUNT),
        ("bri", bri(), BRI_ACCOUNT),
    ],
    ids=["bca", "bca-combined", "mandiri", "bri"],
)
def test_encoding_and_line_ending_variants_parse_identically(
    bank: str, data: bytes, account: str, name: str, transform: Transform
) -> None:
    assert parse_statement(bank, transform(data), account_number=account) == parse_statement(
        bank, data, account_number=account
    )


@pytest.mark.parametrize("text", [
    "", "a", "a\n", "a\r\nb", "a\rb\r", "a\n\n\r\r\n\nb", "\r\n\r\n",
    'x;"two\nlines";y\r\nz', 'x;"cr\ronly";y\rz\n', "form\x0cfeed;u\u2028line;nel\x85\nend",
    "\x1c\x1d\x1e\x0b;\n", "a\rb\rc\rd", "ab\r\ncd\r\n\r\nef\rgh\n",
])
@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 20])
def test_the_csv_reader_sees_the_lines_stringio_would_give_it(
    text: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RowReader reads the text a chunk at a time (a StringIO of a whole large file costs four
    # bytes a character); chunks end at line breaks, never inside a CRLF, so records, quoted
    # line breaks and line numbers are those of one StringIO(newline="") over the whole text.
    monkeypatch.setattr(model, "_CHUNK", chunk)
    assert list(physical_lines(text)) == list(io.StringIO(text, newline=""))
    assert [(n, cells) for n, cells in RowReader(text, ";")] == [
        (n, cells) for n, cells in _stringio_rows(text, ";")]


def _stringio_rows(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    reader, rows, start = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [], 1
    for cells in reader:
        rows.append((start, cells))
        start = reader.line_num + 1
    return rows


def test_spreadsheet_trailing_delimiters_and_padding_are_ignored() -> None:
    for text in ["'05/03 , 'BIAYA ADM  ,'0000, 10000.00 , DB ,2140123.00,,",
                 "' 05/03,' BIAYA ADM ,' 0000,10000.00,DB,2140123.00, , "]:
        padded = edit(bca(), 9, text)
        assert parse_statement("bca", padded, account_number=BCA_ACCOUNT) == parse_statement(
            "bca", bca(), account_number=BCA_ACCOUNT
        ), text


def test_bca_footer_punctuation_and_placement_may_vary() -> None:
    data = bca()
    for line_no, text in [(15, "Saldo Awal : 2000000.00"), (18, "Saldo Akhir,3510291.00")]:
        data = edit(data, line_no, text)
    assert len(parse_statement("bca", data, account_number=BCA_ACCOUNT).lines) == 6
    lines = bca().decode().split("\n")
    # Saldo Awal moved from the footer (line 15) to just under the header.
    opening_first = "\n".join([*lines[:7], "Saldo Awal,:,2000000.00", *lines[7:14], *lines[15:]])
    parsed = parse_statement("bca", opening_first.encode(), account_number=BCA_ACCOUNT)
    assert [line.line_no for line in parsed.lines] == [9, 10, 11, 12, 13, 14]


def test_the_supported_banks() -> None:
    assert SUPPORTED_BANKS == ("bca", "mandiri", "bri")


def test_an_account_number_of_up_to_40_digits_is_kept() -> None:
    account = "1" * 40
    data = mandiri_row("15 May 2026").replace(MANDIRI_ACCOUNT.encode(), account.encode())
    assert parse_statement("mandiri", data, account_number=account).account_number == account


def test_bank_name_is_case_insensitive_and_account_compared_by_digits() -> None:
    parsed = parse_statement(" BRI ", bri(), account_number="0341-01-000123-56-7")
    assert (parsed.bank, parsed.account_number) == ("bri", BRI_ACCOUNT)


# ---------------------------------------------------------------------------------------------
# Refusals: the whole file is refused, with the file's line and an actionable reason
# ---------------------------------------------------------------------------------------------

BCA_HEADER_ONLY = b"\n".join(bca().split(b"\n")[:7]) + b"\n"
MANDIRI_HEADER = mandiri().split(b"\n")[0] + b"\n"
BRI_HEADER = bri().split(b"\n")[0] + b"\n"

REFUSALS = [
    # (id, bank, data, account, line, words the reason must contain)
    ("empty file", "bca", b"", BCA_ACCOUNT, None, "empty"),
    ("only a bom and blank lines", "bri", b"\xef\xbb\xbf\r\n\r\n", BRI_ACCOUNT, None, "empty"),
    ("unknown bank", "bni", bca(), BCA_ACCOUNT, None, "supported banks are bca, mandiri, bri"),
    # truncated
    ("bca header only", "bca", BCA_HEADER_ONLY, BCA_ACCOUNT, 7, "cut off"),
    ("mandiri header only", "mandiri", MANDIRI_HEADER, MANDIRI_ACCOUNT, 1, "no transactions"),
    ("bri header only", "bri", BRI_HEADER, BRI_ACCOUNT, 1, "no transactions"),
    ("bca cut before its footer", "bca", bca()[: bca().index(b"Saldo Awal")], BCA_ACCOUNT, 14,
     "cut off"),
    ("bca cut mid-row", "bca", bca()[: bca().index(b"500000.00,DB") + 3], BCA_ACCOUNT, 13,
     "expected 6 columns"),
    ("mandiri cut mid-row", "mandiri", mandiri()[: mandiri().index(b";1500321.00")],
     MANDIRI_ACCOUNT, 5, "expected 8 columns"),
    ("bri cut inside a quoted field", "bri", bri()[: bri().index(b"ATMSTR") + 3], BRI_ACCOUNT, 4,
     "not valid CSV"),
    # another bank's file
    ("mandiri file uploaded as bca", "bca", mandiri(), BCA_ACCOUNT, 1, "Mandiri MCM"),
    ("bri file uploaded as mandiri", "mandiri", bri(), MANDIRI_ACCOUNT, 1, "BRI"),
    ("bca file uploaded as bri", "bri", bca(), BRI_ACCOUNT, 7, "KlikBCA"),
    ("lower-case spaced bri file uploaded as mandiri", "mandiri",
     bri().replace(bri().split(b"\n")[0],
                   bri().split(b"\n")[0].decode().lower().replace(",", ", ").encode(), 1),
     MANDIRI_ACCOUNT, 1, "BRI"),
    ("quoted mandiri file uploaded as bri", "bri",
     mandiri().replace(b"AccountNo;Ccy;PostDate", b'"AccountNo";"Ccy";"PostDate"'), BRI_ACCOUNT,
     1, "Mandiri MCM"),
    ("not a statement at all", "bca", b"hello,world\n", BCA_ACCOUNT, None, "not a KlikBCA"),
    # dates
    ("bca impossible date", "bca", edit(bca(), 9, "'32/03,'BIAYA ADM,'0000,10000.00,DB,1.00"),
     BCA_ACCOUNT, 9, "not a date inside the statement period"),
    ("bca date outside the period", "bca",
     edit(bca(), 9, "'05/04,'BIAYA ADM,'0000,10000.00,DB,1.00"), BCA_ACCOUNT, 9,
     "01/03/2025 - 31/03/2025"),
    ("bca date text", "bca", edit(bca(), 9, "'5 Mar,'BIAYA ADM,'0000,10000.00,DB,1.00"),
     BCA_ACCOUNT, 9, "not a DD/MM date"),
    ("bca no period line", "bca", edit(bca(), 4, "Cabang : KCU"), BCA_ACCOUNT, 7, "Periode"),
    ("bca period of a year", "bca", edit(bca(), 4, "Periode : 01/03/2025 - 01/03/2026"),
     BCA_ACCOUNT, 4, "ambiguous"),
    ("mandiri unknown month", "mandiri", mandiri_row("15 Mai 2026 04:13:08"), MANDIRI_ACCOUNT, 2,
     "PostDate '15 Mai 2026 04:13:08'"),
    ("mandiri 31 June", "mandiri", mandiri_row("31 Juni 2026 04:13:08"), MANDIRI_ACCOUNT, 2,
     "PostDate"),
    ("bri month 13", "bri", bri().replace(b"2026-05-15 07:59:30", b"2026-13-15 07:59:30"),
     BRI_ACCOUNT, 4, "TGL_TRAN '2026-13-15 07:59:30'"),
    ("mandiri post date not a date", "mandiri", mandiri_row("kemarin"), MANDIRI_ACCOUNT, 2,
     "PostDate 'kemarin'"),
    ("bri date before any utc instant", "bri",
     bri().replace(b'"2026-05-14 09:21:07"', b'"0001-01-01 00:00:00"'), BRI_ACCOUNT, None,
     "out of range"),
    ("bca period ends before it starts", "bca",
     bca_with("31/03/2025 - 01/03/2025", [bca_row("15/03")]), BCA_ACCOUNT, 4,
     "ends before it starts"),
    ("bca date with a year outside the period", "bca",
     bca_with("20/12/2025 - 10/01/2026", [bca_row("02/01/2025")]), BCA_ACCOUNT, 7,
     "not a date inside the statement period"),
    ("bca cut off after two lines of one day", "bca",
     bca_with("01/03/2025 - 31/03/2025", [bca_row("05/03"), bca_row("05/03")], footer=False),
     BCA_ACCOUNT, 8, "cut off"),
    ("bca period not two dates", "bca", bca_with("Maret 2025", [bca_row("15/03")]),
     BCA_ACCOUNT, 4, "is not 'DD/MM/YYYY - DD/MM/YYYY'"),
    # amounts
    ("bca letter in amount", "bca", edit(bca(), 9, "'05/03,'BIAYA ADM,'0000,1OOOO.00,DB,1.00"),
     BCA_ACCOUNT, 9, "Jumlah '1OOOO.00' is not an amount"),
    ("bca non-zero sen", "bca", edit(bca(), 9, "'05/03,'BIAYA ADM,'0000,10000.50,DB,1.00"),
     BCA_ACCOUNT, 9, "non-zero sen"),
    ("bca amount beyond any transfer", "bca",
     edit(bca(), 9, "'05/03,'BIAYA ADM,'0000,1000000000000000.00,DB,1.00"), BCA_ACCOUNT, 9,
     "beyond 999,999,999,999,999 rupiah"),
    ("bri both sides", "bri", bri().replace(b'"5500.00",".00"', b'"5500.00","1.00"'),
     BRI_ACCOUNT, 3, "exactly one of MUTASI_KREDIT and MUTASI_DEBET"),
    ("bca zero amount", "bca", edit(bca(), 9, "'05/03,'BIAYA ADM,'0000,0.00,DB,1.00"),
     BCA_ACCOUNT, 9, "Jumlah is zero"),
    ("bca bad direction", "bca", edit(bca(), 9, "'05/03,'BIAYA ADM,'0000,10000.00,D,1.00"),
     BCA_ACCOUNT, 9, "neither CR nor DB"),
    ("bca combined without direction", "bca",
     edit(fixture("bca_combined.csv"), 9, "'04/05,'X,'0000,\"1,127,500.00\",\"1.00\""),
     BCA_COMBINED_ACCOUNT, 9, "no CR/DB marker"),
    ("bca bad balance", "bca", edit(bca(), 9, "'05/03,'BIAYA ADM,'0000,10000.00,DB,n/a"),
     BCA_ACCOUNT, 9, "Saldo 'n/a'"),
    ("mandiri indonesian number format", "mandiri", mandiri_row("15 May 2026", "1.500.000,00"),
     MANDIRI_ACCOUNT, 2, "Credit Amount '1.500.000,00' is not an amount"),
    ("mandiri non-zero sen", "mandiri", mandiri_row("15 May 2026", "10000.01"), MANDIRI_ACCOUNT,
     2, "non-zero sen"),
    ("mandiri both sides", "mandiri", mandiri_row("15 May 2026", "10000.00", "10000.00"),
     MANDIRI_ACCOUNT, 2, "exactly one of Credit Amount and Debit Amount"),
    ("mandiri neither side", "mandiri", mandiri_row("15 May 2026", "0.00", "0.00"),
     MANDIRI_ACCOUNT, 2, "exactly one of"),
    ("bri non-zero sen", "bri", bri().replace(b'"98765.00"', b'"98765.25"'), BRI_ACCOUNT, 4,
     "MUTASI_KREDIT '98765.25' has a non-zero sen part"),
    ("bri glsign contradicts amounts", "bri", bri().replace(b'"Db","SYSTEM"', b'"Cr","SYSTEM"'),
     BRI_ACCOUNT, 3, "GLSIGN says 'Cr' but the amount is in MUTASI_DEBET"),
    ("bri glsign contradicts a credit", "bri", bri().replace(b'"Cr","8888001"', b'"Db","8888001"'),
     BRI_ACCOUNT, 2, "GLSIGN says 'Db' but the amount is in MUTASI_KREDIT"),
    # columns
    ("bca missing column", "bca", edit(bca(), 10, "'07/03,'TRSF,147356.00,CR,2287479.00"),
     BCA_ACCOUNT, 10, "expected 6 columns"),
    ("bca unknown header", "bca", edit(bca(), 7, "Tanggal Transaksi,Keterangan,Jumlah,Saldo"),
     BCA_ACCOUNT, 7, "unknown KlikBCA header"),
    ("mandiri extra column", "mandiri", mandiri().replace(b";10211721.00", b";10211721.00;X"),
     MANDIRI_ACCOUNT, 4, "expected 8 columns"),
    ("bri eighteen columns", "bri", bri().replace(b'"ATMSTR DEWI LESTARI","', b'"', 1), BRI_ACCOUNT,
     4, "expected 19 columns"),
    ("bri header without its last column", "bri", bri().replace(b',"REMARK_CUSTOM"', b"", 1),
     BRI_ACCOUNT, 1, "expected the BRI header"),
    ("mandiri header not first", "mandiri", b"Laporan Mutasi\n" + mandiri(), MANDIRI_ACCOUNT, 1,
     "Mandiri MCM header"),
    ("mandiri only empty cells", "mandiri", b";;;;;;;\n;;;;;;;\n", MANDIRI_ACCOUNT, None,
     "no rows"),
    # account
    ("bca other account", "bca", bca(), "0123456780", 2, "uploaded for account 0123456780"),
    ("mandiri other account", "mandiri", mandiri(), "1370012345670", 2, "'1370012345678'"),
    ("bri one row of another account", "bri",
     bri().replace(b'"3","034101000123567"', b'"3","034101000999999"'), BRI_ACCOUNT, 4,
     "'034101000999999'"),
    ("bca without its account line", "bca", edit(bca(), 2, "Nama Cabang : KCU"), BCA_ACCOUNT, 7,
     "No. rekening"),
    ("account number without digits", "bca", bca(), "n/a", None, "no digits"),
    ("account number of 41 digits", "bca", bca(), "1" * 41, None,
     "has 41 digits; no bank account number has more than 40"),
    ("mandiri usd account", "mandiri", mandiri().replace(b";IDR;02 Mei", b";USD;02 Mei"),
     MANDIRI_ACCOUNT, 3, "only rupiah"),
    ("bca usd account", "bca", edit(bca(), 5, "Kode Mata Uang : USD"), BCA_ACCOUNT, 5,
     "only rupiah"),
    # structure
    ("bca rows after the footer", "bca", bca() + b"'20/03,'BIAYA ADM,'0000,10000.00,DB,1.00\n",
     BCA_ACCOUNT, 19, "one statement per file"),
    ("bca rows after the footer of a day already read", "bca",
     bca() + b"'07/03,'BIAYA ADM,'0000,10000.00,DB,1.00\n", BCA_ACCOUNT, 19,
     "one statement per file"),
    ("bca extra column on a day already read", "bca",
     edit(bca(), 11, "'07/03,'X,'0000,147356.00,CR,2434835.00,EXTRA"), BCA_ACCOUNT, 11,
     "expected 6 columns"),
    ("two broken quotes: the first is named", "bri",
     edit(edit(bri(), 2, '"1","0341"x","y"'), 4, '"3","0341"x","y"'), BRI_ACCOUNT, 2,
     "not valid CSV"),
    # encoding
    ("cp1252 byte", "bca", edit(bca(), 9, "'05/03,'BIAYA ADM,'0000,10000.00,DB,1.00").replace(
        b"BIAYA ADM", "BIAYA ADM CAFÉ".encode("cp1252")), BCA_ACCOUNT, 9, "not UTF-8"),
    ("utf-16 save", "bca", bca().decode().encode("utf-16"), BCA_ACCOUNT, 1, "UTF-16"),
    ("excel workbook", "bca", b"PK\x03\x04" + bytes(40), BCA_ACCOUNT, 1, "Excel .xlsx"),
    ("nul byte", "bri", bri().replace(b"ATMSTR", b"ATM\x00STR"), BRI_ACCOUNT, 4, "NUL byte"),
]


@pytest.mark.parametrize(
    ("bank", "data", "account", "line", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSALS],
)
def test_malformed_files_are_refused_whole(
    bank: str, data: bytes, account: str, line: int | None, reason: str
) -> None:
    error = rejected(bank, data, account)
    assert error.line == line
    assert reason in error.reason
    assert str(error).startswith(f"line {line}: " if line is not None else error.reason)
