"""Statement import throughput: 1,000,000 bank lines against 1,000,000 open orders, vs. COPY.

One run, everything on 127.0.0.1:

1. creates a fresh PostgreSQL database, migrates it with our migrations, creates a merchant with
   one BCA and one Mandiri payout account, and COPYs ``--orders`` open manual-transfer orders,
   each with an active attempt holding a distinct transfer amount on one of the two accounts
   (half each; setup, not timed as import);
2. generates a KlikBCA CSV and a Mandiri MCM CSV of ``--lines`` lines in all (half each): most
   credits pay an order's exact transfer amount, some credits pay nothing open, some lines are
   debits, a few credits name their order in the description and a few pay an order twice;
3. imports both through ``ReconciliationService.import_statement`` (the real path: parse,
   fingerprint, store, match, settle, outbox) and reports lines/s for parsing, matching and
   storing, the total, and the process's peak memory (``ru_maxrss``);
4. COPYs the same mutation rows into a scratch table shaped like ``mutations`` (same indexes),
   in the same run: the floor an import cannot beat, and the ratio import / COPY;
5. checks the outcome: every paying line matched, orders paid == first payments, no mutation
   matched twice, one evidence row and one ``order.paid`` event per paid order, a review case
   per second payment; writes ``bench/results/reconcile.json``; drops the database.

    python bench/reconcile.py [--lines 1000000] [--orders 1000000] [--keep] [--together]

Figures are reported, never asserted: PostgreSQL and the importer share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from capture import ADMIN_DSN, fresh_database, machine, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.domain.clock import WIB, SystemClock  # noqa: E402
from orchestrator.domain.ids import new_id  # noqa: E402
from orchestrator.services.reconciliation import ReconciliationService  # noqa: E402
from orchestrator.settings import DatabaseSettings  # noqa: E402
from orchestrator.store.database import Database  # noqa: E402
from orchestrator.store.engine import create_engine, migrate  # noqa: E402
from orchestrator.store.merchants import create_merchant  # noqa: E402
from orchestrator.telemetry.metrics import Metrics  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reconcile.json"
BCA, MANDIRI = ("bca", "7100000001"), ("mandiri", "1370012345678")
QUARANTINE = timedelta(hours=24)
# Per 10,000 lines of each file: debits, credits nobody is waiting for, credits that name their
# order in the description, and credits repeating an earlier payment (a second payment).
MIX = {"debit": 300, "unmatched": 300, "reference": 5, "twice": 2}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# --------------------------------------------------------------------------- setup




async def setup(
    url: str, orders: int, now: datetime
) -> tuple[str, dict[str, list[tuple[str, int]]]]:
    """Merchant, accounts and ``orders`` open orders; returns the merchant id and, per bank,
    the (order id, transfer amount) of its orders."""
    engine = create_engine(DatabaseSettings(url=url, pool_size=2))
    await migrate(engine)
    db = Database(engine)
    async with db.transaction() as conn:
        created = await create_merchant(conn, name="Bench", webhook_url=None, now=now, accounts=[
            (BCA[0], BCA[1], "TOKO BENCH"), (MANDIRI[0], MANDIRI[1], "TOKO BENCH")])
    await engine.dispose()
    created_at = now - timedelta(hours=1)
    expires_at = now + timedelta(days=1)
    by_bank: dict[str, list[tuple[str, int]]] = {BCA[0]: [], MANDIRI[0]: []}
    order_rows, attempt_rows = [], []
    for i in range(orders):
        bank, account = BCA if i % 2 == 0 else MANDIRI
        # Distinct transfer amounts per account (the partial unique index): the base amount
        # varies with the order, the code cycles through 1..999.
        transfer = 100_000 + i
        code = 1 + i % 999
        order_id = new_id("ord")
        order_rows.append((order_id, created.merchant_id, f"BENCH-{i}", transfer - code, "IDR",
                           "awaiting_payment", "manual_transfer", "Andi Wijaya",
                           "andi@example.co.id", "+6281234567890", created_at, created_at,
                           expires_at))
        attempt_rows.append((new_id("att"), order_id, "manual_transfer", "bank", "active",
                             transfer, code, bank, account, "TOKO BENCH", True, created_at,
                             created_at, expires_at))
        by_bank[bank].append((order_id, transfer))
    pg = await _connect(url)
    try:
        async with pg.transaction():
            await pg.copy_records_to_table("orders", records=order_rows, columns=[
                "id", "merchant_id", "merchant_order_id", "amount", "currency", "state", "rail",
                "customer_name", "customer_email", "customer_phone", "created_at",
                "updated_at", "expires_at"])
            await pg.copy_records_to_table("payment_attempts", records=attempt_rows, columns=[
                "id", "order_id", "rail", "provider", "state", "transfer_amount", "unique_code",
                "payout_bank", "payout_account_number", "payout_account_name", "holds_code",
                "created_at", "updated_at", "expires_at"])
        await pg.execute("ANALYZE")
    finally:
        await pg.close()
    return created.merchant_id, by_bank


async def _connect(url: str) -> Any:
    import asyncpg

    return await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))


# --------------------------------------------------------------------------- statements


def plan_lines(count: int, orders: list[tuple[str, int]], rng: random.Random
               ) -> tuple[list[tuple[str, int, str]], dict[str, int]]:
    """``count`` (kind, amount, order id or "") lines for one account, shuffled."""
    n = {k: count * per // 10_000 for k, per in MIX.items()}
    paying = min(count - sum(n.values()), len(orders) - n["reference"])
    paid = rng.sample(orders, paying + n["reference"])
    lines = [("pay", amount, oid) for oid, amount in paid[:paying]]
    lines += [("reference", amount, oid) for oid, amount in paid[paying:]]
    lines += [("twice", amount, oid) for oid, amount in paid[:n["twice"]]]
    # Debits are what a merchant account pays out: admin fees and withdrawals, never a
    # customer's coded amount (a debit of one is a possible reversal, a review case each; every
    # amount from 100,000 up is some order's here, so a random debit would nearly always be one).
    lines += [("debit", rng.randrange(5, 31) * 500 if rng.random() < 0.5
               else rng.randrange(40, 200) * 50_000 + 50_000_000, "")
              for _ in range(n["debit"])]
    # Nobody holds these: transfer amounts are 100,000 + order number, below 50,000,000.
    lines += [("unmatched", 50_000_000 + j, "") for j in range(count - len(lines))]
    rng.shuffle(lines)
    counts = {"paying": paying + n["reference"], "twice": n["twice"], "debit": n["debit"],
              "unmatched": count - paying - n["reference"] - n["twice"] - n["debit"]}
    return lines, counts


def _description(kind: str, amount: int, order_id: str, i: int) -> str:
    if kind == "reference":
        return f"TRSF E-BANKING CR {order_id.upper()} {amount}.00 SITI"
    if kind == "debit":
        return "BIAYA ADM" if i % 2 else f"TARIKAN ATM {i % 28 + 1:02d}/01"
    return f"TRSF E-BANKING CR 0101/FTSCY/WS{95031 + i % 9000} {amount}.00 ANDI {i}"


def bca_file(account: str, lines: list[tuple[str, int, str]], day: datetime) -> bytes:
    """KlikBCA individual CSV (RAILS.md §4.1), separate CR/DB column, all lines on ``day``."""
    out = ["Informasi Rekening - Mutasi Rekening", f"No. rekening : {account}",
           "Nama : TOKO BENCH", f"Periode : {day:%d/%m/%Y} - {day:%d/%m/%Y}",
           "Kode Mata Uang : Rp", "", "Tanggal Transaksi,Keterangan,Cabang,Jumlah,,Saldo"]
    balance = opening = 10_000_000_000
    credit = debit = 0
    for i, (kind, amount, order_id) in enumerate(lines):
        direction = "DB" if kind == "debit" else "CR"
        balance += -amount if direction == "DB" else amount
        credit += amount if direction == "CR" else 0
        debit += amount if direction == "DB" else 0
        out.append(f"'{day:%d/%m},'{_description(kind, amount, order_id, i)},'0000,"
                   f"{amount}.00,{direction},{balance}.00")
    out += [f"Saldo Awal,:,{opening}.00", f"Mutasi Kredit,:,{credit}.00",
            f"Mutasi Debet,:,{debit}.00", f"Saldo Akhir,:,{balance}.00"]
    return ("\r\n".join(out) + "\r\n").encode()


def mandiri_file(account: str, lines: list[tuple[str, int, str]], start: datetime) -> bytes:
    """Mandiri MCM semicolon CSV (RAILS.md §4.3), one line per second from ``start`` (WIB)."""
    out = ["AccountNo;Ccy;PostDate;Remarks;AdditionalDesc;Credit Amount;Debit Amount;"
           "Close Balance"]
    balance = 10_000_000_000
    for i, (kind, amount, order_id) in enumerate(lines):
        at = start + timedelta(seconds=i % 3600)
        credit, debit = (0, amount) if kind == "debit" else (amount, 0)
        balance += credit - debit
        remark = _description(kind, amount, order_id, i).replace("TRSF E-BANKING CR",
                                                                 "TRANSFER DARI")
        out.append(f"{account};IDR;{at.day:02d} {_MONTHS[at.month - 1]} {at.year} "
                   f"{at:%H:%M:%S};{remark:<32};MCM InhouseTrf ;{credit}.00;{debit}.00;"
                   f"{balance}.00")
    return ("\n".join(out) + "\n").encode()


# --------------------------------------------------------------------------- runs


async def import_files(url: str, files: list[tuple[str, str, bytes]], *,
                       together: bool) -> list[dict[str, Any]]:
    """One file after the other, or (``together``) all at once, each in its own transaction on
    its own connection, as when the BCA and the Mandiri statements are uploaded at the same
    moment (imports of different accounts do not wait for each other)."""
    engine = create_engine(DatabaseSettings(url=url, pool_size=max(2, len(files))))
    service = ReconciliationService(Database(engine), clock=SystemClock(),
                                    quarantine=QUARANTINE, metrics=Metrics())

    async def one(bank: str, account: str, data: bytes) -> dict[str, Any]:
        timings: dict[str, float] = {}
        report = await service.import_statement(bank=bank, account_number=account,
                                                data=data, filename=f"{bank}.csv",
                                                actor="bench", timings=timings)
        print(f"  {bank:<8} {report.parsed:>9,} lines in {timings['total']:6.2f} s  "
              f"(parse {timings['parse']:.2f}, match {timings['match']:.2f}, "
              f"store {timings['store']:.2f})  matched {report.matched:,}, "
              f"unmatched {report.unmatched:,}, ignored {report.ignored_debits:,}, "
              f"review {report.needs_review:,}", flush=True)
        return {"bank": bank, "bytes": len(data), "report": vars(report),
                "seconds": {k: round(v, 3) for k, v in timings.items()}}

    try:
        if together:
            return list(await asyncio.gather(*(one(*f) for f in files)))
        return [await one(*f) for f in files]
    finally:
        await engine.dispose()


async def copy_floor(url: str) -> dict[str, Any]:
    """COPY the rows the import stored into a scratch table of the same shape and indexes."""
    pg = await _connect(url)
    try:
        rows = await pg.fetch("SELECT * FROM mutations ORDER BY created_at, id")
        columns = list(rows[0].keys())
        records = [tuple(r.values()) for r in rows]
        del rows
        await pg.execute("CREATE TABLE bench_copy (LIKE mutations INCLUDING ALL)")
        started = time.perf_counter()
        async with pg.transaction():
            await pg.copy_records_to_table("bench_copy", records=records, columns=columns)
        seconds = time.perf_counter() - started
        await pg.execute("DROP TABLE bench_copy")
    finally:
        await pg.close()
    return {"rows": len(records), "seconds": round(seconds, 3)}


async def verify(url: str, expected: dict[str, int]) -> dict[str, Any]:
    pg = await _connect(url)
    try:
        q = {
            "mutations": "SELECT count(*) FROM mutations",
            "matched": "SELECT count(*) FROM mutations WHERE match_state = 'matched'",
            "matched_without_order": "SELECT count(*) FROM mutations "
                                     "WHERE match_state = 'matched' AND order_id IS NULL",
            "mutations_with_two_evidence": "SELECT count(*) FROM (SELECT unique_key FROM "
                                           "evidence GROUP BY 1 HAVING count(*) > 1) x",
            "evidence": "SELECT count(*) FROM evidence",
            "evidence_without_matched_mutation": (
                "SELECT count(*) FROM evidence e LEFT JOIN mutations m ON "
                "'mutation:' || m.id = e.unique_key AND m.match_state = 'matched' "
                "AND m.order_id = e.order_id WHERE m.id IS NULL"),
            "orders_paid": "SELECT count(*) FROM orders WHERE state = 'paid'",
            "orders_settled_twice": "SELECT count(*) FROM (SELECT order_id FROM evidence WHERE "
                                    "verdict = 'settle' GROUP BY 1 HAVING count(*) > 1) x",
            "order_paid_events": "SELECT count(*) FROM outbox WHERE event_type = 'order.paid'",
            "paid_orders_without_one_event": (  # outbox.aggregate_id has no index: join
                "SELECT count(*) FROM orders o LEFT JOIN (SELECT aggregate_id, count(*) AS n "
                "FROM outbox WHERE event_type = 'order.paid' GROUP BY 1) e "
                "ON e.aggregate_id = o.id WHERE o.state = 'paid' AND coalesce(e.n, 0) <> 1"),
            "second_payment_cases": "SELECT count(*) FROM review_cases "
                                    "WHERE reason = 'second_payment'",
            "attempts_paid_holding_quarantine": (
                "SELECT count(*) FROM payment_attempts WHERE state = 'paid' AND holds_code "
                "AND code_held_until IS NOT NULL AND closed_at IS NOT NULL"),
        }
        found = {k: int(await pg.fetchval(sql)) for k, sql in q.items()}
    finally:
        await pg.close()
    want = {
        "mutations": expected["lines"], "matched": expected["paying"] + expected["twice"],
        "matched_without_order": 0, "mutations_with_two_evidence": 0,
        "evidence": expected["paying"] + expected["twice"],
        "evidence_without_matched_mutation": 0, "orders_paid": expected["paying"],
        "orders_settled_twice": 0, "order_paid_events": expected["paying"],
        "paid_orders_without_one_event": 0, "second_payment_cases": expected["twice"],
        "attempts_paid_holding_quarantine": expected["paying"],
    }
    wrong = {k: {"found": found[k], "expected": v} for k, v in want.items() if found[k] != v}
    return {"ok": not wrong, "found": found, "wrong": wrong}


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mib() -> float:
    """VmRSS: the resident set now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return max_rss_mib()


def _import_child(url: str, paths: list[tuple[str, str, str]], together: bool,
                  out: Any) -> None:
    """The import in a process of its own, as ``lunas reconcile import`` or the API runs it:
    its peak memory (``ru_maxrss``) is the interpreter, the modules, the statement files and the
    import, and nothing the bench's setup left behind (a setup of 1,000,000 orders leaves
    several hundred MiB the allocator keeps, which an in-process reading counted)."""
    files = [(bank, account, Path(path).read_bytes()) for bank, account, path in paths]
    baseline = rss_mib()
    wall = time.perf_counter()
    runs = asyncio.run(import_files(url, files, together=together))
    wall = time.perf_counter() - wall
    out.send({"runs": runs, "peak_rss_mib": max_rss_mib(), "baseline_rss_mib": baseline,
              "wall": wall})
    out.close()


def import_in_child(url: str, files: list[tuple[str, str, bytes]], together: bool
                    ) -> tuple[list[dict[str, Any]], float, float, float]:
    """(runs, the child's peak RSS, its RSS with the files read before importing, the wall
    clock of the import itself)."""
    import multiprocessing
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lunas-bench-") as tmp:
        paths = []
        for bank, account, data in files:
            path = Path(tmp) / f"{bank}.csv"
            path.write_bytes(data)
            paths.append((bank, account, str(path)))
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_import_child, args=(url, paths, together, send))
        child.start()
        send.close()
        try:
            result = receive.recv()
        except EOFError:
            child.join()
            raise SystemExit(f"the import process died (exit code {child.exitcode})") from None
        child.join()
    return result["runs"], result["peak_rss_mib"], result["baseline_rss_mib"], result["wall"]


def rate(lines: int, seconds: float) -> str:
    return f"{lines / seconds:>12,.0f}" if seconds else "           -"


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    started = time.perf_counter()
    print(f"setup: {args.orders:,} open manual-transfer orders ...", flush=True)
    _, by_bank = await setup(url, args.orders, now)
    rng = random.Random(args.seed)
    half = args.lines // 2
    bca_lines, bca_counts = plan_lines(half, by_bank[BCA[0]], rng)
    man_lines, man_counts = plan_lines(args.lines - half, by_bank[MANDIRI[0]], rng)
    del by_bank
    day = now.astimezone(WIB)
    files = [(BCA[0], BCA[1], bca_file(BCA[1], bca_lines, day)),
             (MANDIRI[0], MANDIRI[1], mandiri_file(MANDIRI[1], man_lines,
                                                   day.replace(tzinfo=None, microsecond=0)))]
    del bca_lines, man_lines
    expected = {k: bca_counts[k] + man_counts[k] for k in bca_counts}
    expected["lines"] = args.lines
    setup_s = time.perf_counter() - started
    print(f"  {setup_s:.1f} s; statements: BCA {len(files[0][2]) / 2**20:.1f} MiB, "
          f"Mandiri {len(files[1][2]) / 2**20:.1f} MiB; rss {max_rss_mib():.0f} MiB")
    rss_setup = max_rss_mib()
    del bca_counts, man_counts
    print("import (ReconciliationService.import_statement in a process of its own, one "
          f"transaction per file, "
          f"{'both files at once' if args.together else 'one file after the other'}):",
          flush=True)
    runs, import_peak, import_baseline, wall = await asyncio.to_thread(
        import_in_child, url, files, args.together)
    del files
    # Phases summed over the files; with --together they overlap, so the total is the wall clock
    # from the first file's start to the last file's end.
    seconds = {k: sum(r["seconds"][k] for r in runs) for k in ("parse", "match", "store",
                                                               "total")}
    if args.together:
        seconds["total"] = wall
    print("COPY of the same rows into a scratch table shaped like mutations ...", flush=True)
    floor = await copy_floor(url)
    check = await verify(url, expected)
    lines = args.lines
    result = {
        "settings": {"lines": lines, "orders": args.orders, "mix_per_10000": MIX,
                     "seed": args.seed, "files_imported": "together" if args.together else
                     "one after the other"},
        "expected": expected, "runs": runs,
        "import": {"seconds": {k: round(v, 3) for k, v in seconds.items()},
                   "lines_per_s": {k: round(lines / v) if v else None
                                   for k, v in seconds.items()},
                   "peak_rss_mib": round(import_peak, 1),
                   "peak_rss_covers": "the importing process (ru_maxrss): interpreter, "
                                      "modules, statement files and import",
                   "rss_mib_before_import": round(import_baseline, 1),
                   "max_rss_mib_setup": round(rss_setup, 1)},
        "copy": floor,
        "ratio_import_to_copy": round(seconds["total"] / floor["seconds"], 2),
        "verify": check,
        "target": "issue: the whole import under 30 s and 1 GiB on this machine; the floor is "
                  "PostgreSQL's COPY of the same rows (reported, never asserted)",
    }
    print(f"\n{'':<10}{'seconds':>10}{'lines/s':>13}")
    for k in ("parse", "match", "store", "total"):
        print(f"{k:<10}{seconds[k]:>10.2f}{rate(lines, seconds[k])}")
    print(f"{'COPY':<10}{floor['seconds']:>10.2f}{rate(floor['rows'], floor['seconds'])}"
          f"   ({floor['rows']:,} rows)")
    print(f"import / COPY: {result['ratio_import_to_copy']:.1f}x;  peak RSS of the importing "
          f"process {import_peak:.0f} MiB ({import_baseline:.0f} MiB with the files read, "
          f"before importing; the bench's setup process reached {rss_setup:.0f} MiB)")
    print(f"verify: {'ok' if check['ok'] else 'FAILED'} {check['found']}")
    if check["wrong"]:
        print(f"  wrong: {check['wrong']}")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--orders", type=int, default=None, help="default: --lines")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep", action="store_true", help="keep the database (print its name)")
    p.add_argument("--together", action="store_true",
                   help="import the two files at once (two transactions, two connections); "
                        "total = wall clock, phases summed over the files")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()
    args.orders = args.orders or args.lines
    info = machine()
    print(f"lunas reconcile bench - {info['date']} - commit {info['commit']}")
    print(f"machine: {info['nproc']} x {info['cpu_model']}, {info['memory_gib']} GiB RAM, "
          f"PostgreSQL {info['postgresql']}, Python {info['python']}")
    with fresh_database("reconcile", keep=args.keep) as (db, url):
        result = asyncio.run(run(args, url))
        if args.keep:
            print(f"kept database {db} ({ADMIN_DSN.rsplit('/', 1)[0]}/{db})")
    write_result({"machine": info, **result}, args.output)
    return 0 if result["verify"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
