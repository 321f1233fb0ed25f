"""The outbox's hot paths, in process against PostgreSQL: what the ordering of an order's merchant
webhooks costs a write and a delivery, and what JIT costs a claim across many merchants.

One run, a throw-away database on 127.0.0.1 (``LUNAS_BENCH_PG_DSN``), one pooled connection (so
one PostgreSQL backend, whose CPU is read from ``/proc``):

1. **write**: N merchant webhooks (``order.paid``, one order each), each in its own transaction
   through ``add_events`` as settlement writes them, against the floor of the same INSERT alone
   (no try-again-now UPDATE) and against the two statements spelt out (UPDATE, then INSERT);
2. **record**: N claimed merchant webhooks recorded delivered through ``Relay._record``, against
   the floor of the fenced ``mark_done`` alone and the two statements spelt out (``mark_done``,
   then ``release_behind``);
3. **claim**: M merchants with a pending webhook of each of T types (M x T queues for the skip
   scan), ``ANALYZE``d; the relay's capped claim (16 asked, 4 per lane) under ``EXPLAIN
   (ANALYZE, FORMAT JSON)``, JIT on and off alternately, rolled back, and the claim itself timed
   in a transaction with and without ``SET LOCAL jit = off`` first;
4. **queues** (``--queues``): N merchants, each with a few ``order.paid`` of their own orders
   waiting for a retry (not yet due), one merchant in ``--due-every`` with one due besides: the
   outbox of an incident, many merchant endpoints down. The relay's capped claim (16 asked, 4 per
   lane), one after another as the relay makes them, each rolled back so every claim meets the
   same outbox; wall time and PostgreSQL CPU per claim, and per pending queue.

Variants run alternately in rounds, so the machine's drift (other people's tests) falls on all of
them alike; the figures to compare are the per-event differences within one run. Figures are
printed and written to ``bench/results/outbox.json``; nothing is asserted.

    python bench/outbox.py [--events 2000] [--rounds 8] [--merchants 100,5000,20000] [--types 2]
                           [--backlog 0] [--queues 1000,10000,40000] [--due-every 20]
                           [--only write,record,claim,queues]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from capture import fresh_database, machine, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from orchestrator.domain.clock import SystemClock  # noqa: E402
from orchestrator.domain.events import MERCHANT_VISIBLE, ORDER_EXPIRED, ORDER_PAID  # noqa: E402
from orchestrator.domain.ids import new_id  # noqa: E402
from orchestrator.outbox import queries, writer  # noqa: E402
from orchestrator.outbox.relay import OutboxEvent, Relay, _Succeeded  # noqa: E402
from orchestrator.settings import DatabaseSettings, OutboxSettings  # noqa: E402
from orchestrator.store.engine import create_engine, migrate  # noqa: E402
from orchestrator.store.tables import outbox  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "outbox.json"
TICK = os.sysconf("SC_CLK_TCK")
MERCHANT = "mch_bench"


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) of PostgreSQL backend ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Meter:
    """Per-variant totals of wall time, this process's CPU and the backend's CPU."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.totals: dict[str, list[float]] = {}

    async def measure(self, name: str, ops: list[Callable[[], Awaitable[Any]]]) -> None:
        wall0, cpu0, pg0 = time.perf_counter(), time.process_time(), backend_cpu(self.pid)
        for op in ops:
            await op()
        t = self.totals.setdefault(name, [0.0, 0.0, 0.0, 0])
        t[0] += time.perf_counter() - wall0
        t[1] += time.process_time() - cpu0
        t[2] += backend_cpu(self.pid) - pg0
        t[3] += len(ops)

    def report(self, title: str, floor: str) -> dict[str, Any]:
        print(f"\n{title} (µs per event; n per variant)")
        print(f"  {'variant':<28}{'n':>6}{'wall':>9}{'python':>9}{'postgres':>10}"
              f"{'wall - floor':>14}")
        base = self.totals[floor]
        out: dict[str, Any] = {}
        for name, (wall, cpu, pg, n) in self.totals.items():
            per = [1e6 * x / n for x in (wall, cpu, pg)]
            over = per[0] - 1e6 * base[0] / base[3]
            print(f"  {name:<28}{n:>6}{per[0]:>9.0f}{per[1]:>9.0f}{per[2]:>10.0f}{over:>+14.0f}")
            out[name] = {"n": n, "wall_us": round(per[0], 1), "python_cpu_us": round(per[1], 1),
                         "postgres_cpu_us": round(per[2], 1)}
        return out


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one())


# --------------------------------------------------------------------------- 1. writes


def _paid(order_id: str) -> writer.PendingEvent:
    return writer.PendingEvent(event_type=ORDER_PAID, aggregate_id=order_id, merchant_id=MERCHANT,
                               payload={"order_id": order_id, "amount": 150_000})


async def bench_writes(engine: AsyncEngine, meter: Meter, events: int, rounds: int
                       ) -> dict[str, Any]:
    async def add_events() -> None:
        async with engine.begin() as conn:
            await writer.add_events(conn, [_paid(new_id("ord"))], now=datetime.now(UTC))

    async def insert_alone() -> None:
        now = datetime.now(UTC)
        async with engine.begin() as conn:
            await conn.execute(writer._INSERT, [writer.event_row(_paid(new_id("ord")), now=now)])

    async def two_statements() -> None:
        now, event = datetime.now(UTC), _paid(new_id("ord"))
        async with engine.begin() as conn:
            await conn.execute(_TRY_AGAIN_NOW, {"w_orders": [event.aggregate_id], "w_now": now})
            await conn.execute(writer._INSERT, [writer.event_row(event, now=now)])

    variants = {"add_events (as the code is)": add_events, "INSERT alone (floor)": insert_alone,
                "UPDATE + INSERT (two)": two_statements}
    await _warm(variants.values())
    per_round = max(1, events // rounds)
    for _ in range(rounds):
        for name, op in variants.items():
            await meter.measure(name, [op] * per_round)
    return meter.report("1. one merchant webhook written per transaction",
                        "INSERT alone (floor)")


_TRY_AGAIN_NOW = (
    sa.update(outbox)
    .where(outbox.c.aggregate_id.in_(sa.bindparam("w_orders", expanding=True)),
           outbox.c.status == "pending", outbox.c.event_type.in_(sorted(MERCHANT_VISIBLE)),
           outbox.c.merchant_id.is_not(None), outbox.c.attempts > 0,
           outbox.c.available_at > sa.bindparam("w_now"), outbox.c.lease_owner.is_(None))
    .values(available_at=sa.bindparam("w_now"))
)
"""The writer's UPDATE before any folding (bench copy, so the comparison outlives a change)."""


# --------------------------------------------------------------------------- 2. records


async def bench_records(engine: AsyncEngine, meter: Meter, events: int, rounds: int
                        ) -> dict[str, Any]:
    relay = Relay(engine, {}, OutboxSettings(), "bench-relay", SystemClock(),
                  per_merchant=MERCHANT_VISIBLE)
    names = ("Relay._record (as the code is)", "mark_done alone (floor)",
             "mark_done + release_behind")
    per_round = max(1, events // rounds)
    claimed = await _claimed(engine, per_round * rounds * len(names) + 3 * len(names))
    done = _Succeeded()

    def record(event: OutboxEvent) -> Callable[[], Awaitable[None]]:
        return lambda: relay._record(event, done)

    def floor(event: OutboxEvent) -> Callable[[], Awaitable[None]]:
        return lambda: relay._write(event, queries.mark_done(
            event.id, worker_id=relay.worker_id, attempts=event.attempts,
            now=datetime.now(UTC)))

    def two(event: OutboxEvent) -> Callable[[], Awaitable[None]]:
        def run() -> Awaitable[None]:
            now = datetime.now(UTC)
            assert event.aggregate_id is not None
            return relay._write(event, queries.mark_done(
                event.id, worker_id=relay.worker_id, attempts=event.attempts, now=now),
                queries.release_behind(event.id, order_id=event.aggregate_id,
                                       merchant_id=MERCHANT, webhook_types=MERCHANT_VISIBLE,
                                       now=now))
        return run

    makers = dict(zip(names, (record, floor, two), strict=True))
    for make in makers.values():  # warm each statement's compiled and prepared forms
        for _ in range(3):
            await make(claimed.pop())()
    for _ in range(rounds):
        for name, make in makers.items():
            await meter.measure(name, [make(claimed.pop()) for _ in range(per_round)])
    return meter.report("2. one delivered merchant webhook recorded per transaction",
                        "mark_done alone (floor)")


async def _claimed(engine: AsyncEngine, n: int) -> list[OutboxEvent]:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await writer.add_events(conn, [_paid(new_id("ord")) for _ in range(n)], now=now)
    claim = queries.claim_batch("postgresql", worker_id="bench-relay", now=datetime.now(UTC),
                                lease=timedelta(hours=1), limit=n)
    async with engine.begin() as conn:
        rows = await claim.run(conn)
    assert len(rows) == n, (len(rows), n)
    return [OutboxEvent.from_row(r) for r in rows]


async def _warm(ops: Any) -> None:
    for op in ops:
        for _ in range(3):
            await op()


# --------------------------------------------------------------------------- 3. the claim


async def bench_claim(engine: AsyncEngine, merchants: int, types: int, rounds: int,
                      backlog: int) -> dict[str, Any]:
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM outbox")
        kinds = [ORDER_PAID, ORDER_EXPIRED][:types]
        now = datetime.now(UTC) - timedelta(seconds=1)
        rows = [writer.event_row(writer.PendingEvent(
            event_type=kind, aggregate_id=new_id("ord"), merchant_id=f"mch_{m:06d}",
            payload={"n": m}), now=now) for m in range(merchants) for kind in kinds]
        rows += [writer.event_row(_paid(new_id("ord")), now=now) for _ in range(backlog)]
        for i in range(0, len(rows), 5000):
            await conn.execute(writer._INSERT, rows[i:i + 5000])
    async with engine.connect() as conn:
        await (await conn.execution_options(isolation_level="AUTOCOMMIT")).exec_driver_sql(
            "VACUUM ANALYZE outbox")
    sql, params = await _claim_as_sent(engine)
    plans: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    walls: dict[str, list[float]] = {"jit on": [], "SET LOCAL jit = off": []}
    for _ in range(rounds):
        for jit in ("on", "off"):
            async with engine.connect() as conn, conn.begin() as trans:
                await conn.exec_driver_sql(f"SET LOCAL jit = {jit}")
                plan = (await conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)).scalar_one()
                await trans.rollback()
            plans[jit].append(_plan_figures(plan))
        for label in walls:
            async with engine.connect() as conn:
                start = time.perf_counter()
                async with conn.begin() as trans:
                    if label != "jit on":
                        await conn.exec_driver_sql("SET LOCAL jit = off")
                    taken = (await conn.exec_driver_sql(sql, params)).all()
                    await trans.rollback()
                walls[label].append(1e3 * (time.perf_counter() - start))
    out: dict[str, Any] = {"merchants": merchants, "queues": merchants * types,
                           "backlog": backlog, "claimed": len(taken)}
    print(f"\n3. one capped claim, {merchants:,} merchants x {types} types "
          f"({merchants * types:,} queues, {len(taken)} claimed), one merchant's backlog "
          f"{backlog:,}; medians of {rounds}")
    for jit, figures in plans.items():
        med = {k: statistics.median(f[k] for f in figures) for k in figures[0]}
        out[f"explain_jit_{jit}"] = {k: round(v, 2) for k, v in med.items()}
        print(f"  EXPLAIN ANALYZE, jit {jit:<3}: cost {med['cost']:>9,.0f}  planning "
              f"{med['planning_ms']:7.1f} ms  execution {med['execution_ms']:8.1f} ms  "
              f"of which JIT {med['jit_ms']:7.1f} ms ({med['jit_functions']:.0f} functions)")
    for label, ms in walls.items():
        out[f"claim_ms_{label}"] = round(statistics.median(ms), 2)
        print(f"  claim transaction, {label:<19}: {statistics.median(ms):8.1f} ms "
              f"(min {min(ms):.1f}, max {max(ms):.1f})")
    return out


async def _claim_as_sent(engine: AsyncEngine) -> tuple[str, Any]:
    """The relay's capped claim as the driver receives it (rolled back)."""
    claim = queries.claim_batch(
        "postgresql", worker_id="bench-claim", now=datetime.now(UTC), lease=timedelta(seconds=60),
        limit=16, cap=queries.MerchantCap(event_types=MERCHANT_VISIBLE, per_merchant=4))
    sent: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.startswith("UPDATE outbox SET attempts"):
            sent.append((statement, parameters))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with engine.connect() as conn, conn.begin() as trans:
            await claim.run(conn)
            await trans.rollback()
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", capture)
    return sent[0]


def _plan_figures(explained: Any) -> dict[str, float]:
    if isinstance(explained, str):
        explained = json.loads(explained)
    top = explained[0] if isinstance(explained, list) else explained
    jit = top.get("JIT") or {}
    timing = jit.get("Timing") or {}
    total = timing.get("Total", 0.0)  # generation + inlining + optimisation + emission
    return {"cost": float(top["Plan"]["Total Cost"]), "planning_ms": top["Planning Time"],
            "execution_ms": top["Execution Time"], "jit_ms": float(total),
            "jit_functions": float(jit.get("Functions", 0))}


# --------------------------------------------------------------------------- 4. many queues


async def bench_queues(engine: AsyncEngine, pid: int, merchants: int, due_every: int,
                       claims: int) -> dict[str, Any]:
    waiting_each = 3
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM outbox")
        rows = []
        for m in range(merchants):
            merchant = f"mch_{m:06d}"
            for k in range(waiting_each + (m % due_every == 0)):
                row = writer.event_row(writer.PendingEvent(
                    event_type=ORDER_PAID, aggregate_id=new_id("ord"), merchant_id=merchant,
                    payload={"n": m}), now=now - timedelta(minutes=5))
                due = k == waiting_each
                row.update(attempts=0 if due else 1, available_at=(
                    now - timedelta(seconds=1) if due else now + timedelta(hours=1)))
                rows.append(row)
        for i in range(0, len(rows), 5000):
            await conn.execute(writer._INSERT, rows[i:i + 5000])
    async with engine.connect() as conn:
        await (await conn.execution_options(isolation_level="AUTOCOMMIT")).exec_driver_sql(
            "VACUUM ANALYZE outbox")
    due = len(range(0, merchants, due_every))
    rotating = hasattr(queries, "QueueKey")  # the claim walks the queues from a cursor
    after: Any = None

    async def claim_once() -> int:
        nonlocal after
        kwargs = {"after": after} if rotating else {}
        claim = queries.claim_batch(
            "postgresql", worker_id="bench-queues", now=datetime.now(UTC),
            lease=timedelta(seconds=60), limit=16,
            cap=queries.MerchantCap(event_types=MERCHANT_VISIBLE, per_merchant=4), **kwargs)
        async with engine.connect() as conn, conn.begin() as trans:
            if rotating:
                taken = await claim.taking(conn)  # type: ignore[attr-defined]
                after, n = taken.after, len(taken.rows)
            else:
                n = len(await claim.run(conn))
            await trans.rollback()
        return n

    for _ in range(3):
        await claim_once()
    walls, pgs, taken = [], [], []
    for _ in range(claims):
        wall0, pg0 = time.perf_counter(), backend_cpu(pid)
        taken.append(await claim_once())
        walls.append(1e3 * (time.perf_counter() - wall0))
        pgs.append(1e3 * (backend_cpu(pid) - pg0))
    wall, pg = statistics.median(walls), sum(pgs) / len(pgs)
    print(f"\n4. one capped claim (16 asked, 4 per lane), {merchants:,} merchant queues "
          f"({merchants * waiting_each + due:,} pending, {due:,} due), {claims} claims")
    print(f"  claim: median {wall:7.2f} ms (min {min(walls):.2f}, max {max(walls):.2f}), "
          f"PostgreSQL CPU {pg:6.2f} ms; {1e3 * wall / merchants:6.2f} µs per queue; "
          f"claimed per claim: median {statistics.median(taken):.0f}, min {min(taken)}")
    return {"queues": merchants, "due": due, "claims": claims, "claim_ms": round(wall, 3),
            "claim_min_ms": round(min(walls), 3), "postgres_cpu_ms": round(pg, 3),
            "us_per_queue": round(1e3 * wall / merchants, 3),
            "claimed_median": statistics.median(taken), "claimed_min": min(taken)}


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    engine = create_engine(DatabaseSettings(url=url, pool_size=1))
    try:
        await migrate(engine)
        pid = await backend_pid(engine)
        result: dict[str, Any] = {"machine": machine(), "events": args.events,
                                  "rounds": args.rounds}
        if "write" in args.only:
            result["write"] = await bench_writes(engine, Meter(pid), args.events, args.rounds)
        if "record" in args.only:
            result["record"] = await bench_records(engine, Meter(pid), args.events, args.rounds)
        if "claim" in args.only:
            result["claim"] = [await bench_claim(engine, m, args.types, args.claim_rounds,
                                                 args.backlog) for m in args.merchants]
        if "queues" in args.only:
            result["queues"] = [await bench_queues(engine, pid, n, args.due_every,
                                                   args.queue_claims) for n in args.queues]
        return result
    finally:
        await engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--merchants", type=lambda s: [int(x) for x in s.split(",")],
                        default=[100, 5000, 20000])
    parser.add_argument("--types", type=int, default=2)
    parser.add_argument("--claim-rounds", type=int, default=5)
    parser.add_argument("--backlog", type=int, default=0,
                        help="pending webhooks of one more merchant in the claim's outbox")
    parser.add_argument("--queues", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1000, 10000, 40000], help="merchant queues, one run each")
    parser.add_argument("--due-every", type=int, default=20,
                        help="one merchant in this many has a due webhook")
    parser.add_argument("--queue-claims", type=int, default=30)
    parser.add_argument("--only", type=lambda s: set(s.split(",")),
                        default={"write", "record", "claim", "queues"})
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    with fresh_database("outbox") as (_, url):
        result = asyncio.run(run(args, url))
    write_result(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
