"""Bank statement exports as finance staff download them, for tests and game-day loads."""

from __future__ import annotations

from datetime import datetime

from orchestrator.domain.clock import WIB


def bca_statement(account: str, lines: list[tuple[datetime, str, int, str]]) -> bytes:
    """A KlikBCA individual CSV (RAILS.md §4.1) with (posted, description, amount, CR/DB) lines."""
    first = min(d for d, *_ in lines).astimezone(WIB)
    last = max(d for d, *_ in lines).astimezone(WIB)
    out = [
        "Informasi Rekening - Mutasi Rekening",
        f"No. rekening : {account}",
        "Nama : TOKO UJI",
        f"Periode : {first:%d/%m/%Y} - {last:%d/%m/%Y}",
        "Kode Mata Uang : Rp",
        "",
        "Tanggal Transaksi,Keterangan,Cabang,Jumlah,,Saldo",
    ]
    balance = 10_000_000
    for posted, description, amount, direction in lines:
        balance += amount if direction == "CR" else -amount
        out.append(f"'{posted.astimezone(WIB):%d/%m},'{description},'0000,{amount}.00,"
                   f"{direction},{balance}.00")
    out += ["Saldo Awal,:,10000000.00", f"Saldo Akhir,:,{balance}.00"]
    return ("\r\n".join(out) + "\r\n").encode()
