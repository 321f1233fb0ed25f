"""The least a statement import can write, timed: is 30 s for 1,000,000 lines within reach here?

``bench/reconcile.py`` times the real import. This measures what no import design that keeps
per-order state in rows can avoid, with no parsing, no matching, no planning and no checks: the
rows already decided, written at PostgreSQL's bulk speed, by two backends at once (the BCA and
the Mandiri halves, as ``reconcile.py --together``), each in one transaction that is rolled back
(a rollback costs nothing measurable; the table is vacuumed between designs).

Designs, each run on the same 1,000,000 open orders of ``reconcile.py``'s setup:

``schema``   what the import writes today, with nothing else: COPY the mutations (foreign keys to
             orders and statements), UPDATE the paid attempts, UPDATE their orders, COPY one
             evidence row and one ``order.paid`` outbox event per paid order;
``lean``     the three design changes of PROFILE.md at once: no foreign keys on mutations, no
             evidence rows (the mutation row would be the evidence), one outbox row per import;
``bare``     the least that still records a payment: COPY the mutations with no foreign keys,
             UPDATE the orders; attempts left as they are.

    python bench/reconcile_floor.py [--orders 1000000] [--lines 1000000]

Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from capture import fresh_database, machine
from reconcile import _connect, setup

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.domain.ids import new_id  # noqa: E402

DESIGNS = ("schema", "lean", "bare")
MUTATION_COLUMNS = ["id", "bank", "account_number", "posted_at", "amount", "direction",
                    "description", "balance", "source", "fingerprint", "statement_id",
                    "match_state", "order_id", "matched_at", "matched_by", "created_at"]
EVIDENCE_COLUMNS = ["unique_key", "kind", "order_id", "attempt_id", "amount", "verdict",
                    "observed_at", "recorded_at", "details"]
OUTBOX_COLUMNS = ["event_id", "event_type", "aggregate_id", "merchant_id", "payload",
                  "status", "attempts", "created_at", "available_at"]


async def rows_of(url: str, lines: int, now: datetime) -> list[dict[str, Any]]:
    """Per account: its statement, its mutation rows (94 % paying an order), the paid pairs."""
    pg = await _connect(url)
    try:
        attempts = await pg.fetch(
            "SELECT a.id, a.order_id, a.payout_bank, a.payout_account_number, a.transfer_amount,"
            " o.merchant_id FROM payment_attempts a JOIN orders o ON o.id = a.order_id"
            " ORDER BY a.created_at, a.id")
        by_account: dict[tuple[str, str], list[Any]] = {}
        for a in attempts:
            by_account.setdefault((a["payout_bank"], a["payout_account_number"]), []).append(a)
        out = []
        for (bank, account), rows in sorted(by_account.items()):
            statement_id = new_id("stm")
            await pg.execute(
                "INSERT INTO statements (id, bank, account_number, filename, sha256, uploaded_by,"
                " counts, created_at) VALUES ($1, $2, $3, 'floor.csv', $4, 'bench', '{}', $5)",
                statement_id, bank, account, secrets.token_hex(32), now)
            per_file = lines // len(by_account)
            paying = min(len(rows), per_file * 94 // 100)
            mutations, paid, evidence, events = [], [], [], []
            for i in range(per_file):
                mid = new_id("mut")
                posted = now - timedelta(minutes=30) + timedelta(microseconds=i)
                if i < paying:
                    a = rows[i]
                    mutations.append((mid, bank, account, posted, a["transfer_amount"], "CR",
                                      f"TRSF E-BANKING CR {i}", None, "statement",
                                      secrets.token_hex(32), statement_id, "matched",
                                      a["order_id"], now, "matcher", now))
                    paid.append((a["id"], a["order_id"]))
                    evidence.append((f"mutation:{mid}", "mutation", a["order_id"], a["id"],
                                     a["transfer_amount"], "settle", posted, now,
                                     json.dumps({"mutation_id": mid, "matched_by": "matcher"})))
                    events.append((new_id("evt"), "order.paid", a["order_id"], a["merchant_id"],
                                   json.dumps({"order_id": a["order_id"], "status": "paid",
                                               "amount": a["transfer_amount"],
                                               "currency": "IDR", "evidence": "mutation"}),
                                   "pending", 0, now, now))
                else:
                    mutations.append((mid, bank, account, posted, 7_000 + i, "CR",
                                      f"TRSF E-BANKING CR {i}", None, "statement",
                                      secrets.token_hex(32), statement_id, "unmatched",
                                      None, None, None, now))
            out.append({"bank": bank, "mutations": mutations, "paid": paid,
                        "evidence": evidence, "events": events, "merchant": rows[0]["merchant_id"]})
        return out
    finally:
        await pg.close()


async def write(url: str, design: str, rows: dict[str, Any], now: datetime) -> dict[str, float]:
    """One account's rows, written as ``design`` writes them, in a transaction rolled back."""
    pg = await _connect(url)
    timings: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal mark
        t = time.perf_counter()
        timings[step] = round(t - mark, 2)
        mark = t

    started = mark
    tx = pg.transaction()
    await tx.start()
    try:
        await pg.execute("CREATE TEMPORARY TABLE floor_paid (attempt_id text, order_id text)"
                         " ON COMMIT DROP")
        await pg.copy_records_to_table("floor_paid", records=rows["paid"])
        lap("paid ids")
        await pg.copy_records_to_table("mutations", records=rows["mutations"],
                                       columns=MUTATION_COLUMNS)
        lap("mutations")
        if design != "bare":
            await pg.execute(
                "UPDATE payment_attempts a SET state = 'paid', updated_at = $1, closed_at = $1,"
                " code_held_until = $1::timestamptz + interval '24 hours' FROM floor_paid p"
                " WHERE a.id = p.attempt_id", now)
            lap("attempts")
        await pg.execute("UPDATE orders o SET state = 'paid', updated_at = $1, paid_at = $1"
                         " FROM floor_paid p WHERE o.id = p.order_id", now)
        lap("orders")
        if design == "schema":
            await pg.copy_records_to_table("evidence", records=rows["evidence"],
                                           columns=EVIDENCE_COLUMNS)
            lap("evidence")
            await pg.copy_records_to_table("outbox", records=rows["events"],
                                           columns=OUTBOX_COLUMNS)
            lap("outbox")
        elif design == "lean":
            await pg.execute(
                "INSERT INTO outbox (event_id, event_type, merchant_id, payload, status,"
                " attempts, created_at, available_at) VALUES ($1, 'statement.settled', $2,"
                " '{}', 'pending', 0, $3, $3)", new_id("evt"), rows["merchant"], now)
            lap("outbox")
        timings["total"] = round(time.perf_counter() - started, 2)
    finally:
        await tx.rollback()
        await pg.close()
    return timings


async def vacuum(url: str) -> None:
    pg = await _connect(url)
    try:
        await pg.execute("VACUUM ANALYZE mutations, payment_attempts, orders, evidence, outbox")
    finally:
        await pg.close()


async def drop_mutation_fks(url: str) -> list[tuple[str, str]]:
    """Drops the foreign keys of ``mutations``; returns (name, definition) to restore them."""
    pg = await _connect(url)
    try:
        fks = [(r["conname"], r["def"]) for r in await pg.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint"
            " WHERE conrelid = 'mutations'::regclass AND contype = 'f'")]
        for name, _ in fks:
            await pg.execute(f'ALTER TABLE mutations DROP CONSTRAINT "{name}"')
        return fks
    finally:
        await pg.close()


async def restore_mutation_fks(url: str, fks: list[tuple[str, str]]) -> None:
    pg = await _connect(url)
    try:
        for name, definition in fks:
            await pg.execute(f'ALTER TABLE mutations ADD CONSTRAINT "{name}" {definition}')
    finally:
        await pg.close()


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    print(f"setup: {args.orders:,} open orders ...", flush=True)
    await setup(url, args.orders, now)
    accounts = await rows_of(url, args.lines, now)
    await vacuum(url)
    results: dict[str, Any] = {}
    for design in args.designs:
        fks = await drop_mutation_fks(url) if design != "schema" else []
        wall = time.perf_counter()
        per_account = await asyncio.gather(*(write(url, design, a, now) for a in accounts))
        wall = time.perf_counter() - wall
        await restore_mutation_fks(url, fks)
        await vacuum(url)
        timed = list(zip(accounts, per_account, strict=True))
        results[design] = {"wall_seconds": round(wall, 2),
                           "accounts": {a["bank"]: t for a, t in timed}}
        print(f"{design:<7} both accounts at once: {wall:6.2f} s wall", flush=True)
        for a, t in timed:
            steps = ", ".join(f"{k} {v:.2f}" for k, v in t.items() if k != "total")
            print(f"  {a['bank']:<8} {t['total']:6.2f} s  ({steps})", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--designs", nargs="+", choices=DESIGNS, default=list(DESIGNS))
    parser.add_argument("--output", type=Path,
                        default=ROOT / "bench" / "results" / "reconcile-floor.json")
    args = parser.parse_args()
    with fresh_database("floor") as (_, url):
        results = asyncio.run(run(args, url))
    args.output.write_text(json.dumps({"machine": machine(), "orders": args.orders,
                                       "lines": args.lines, "designs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
