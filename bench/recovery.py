"""Recovery drain: N paid orders wait on a provider whose status API and webhooks are down; when it
comes back, how fast does every order settle, and does the provider ever see more than its limit?

One run, everything on 127.0.0.1, real processes:

1. a fresh PostgreSQL database (migrated with ``lunas migrate``), a merchant, both simulators in
   one subprocess with Midtrans's notifications dropped (``drop_notifications``: the webhooks are
   down), one ``lunas api`` and one ``lunas worker`` on Redis with a fresh key prefix;
2. captures N QRIS orders (served by Midtrans, the QRIS primary) with 32 raw keep-alive clients,
   and pays every one at the simulator (``POST /pay``): the money has moved, nobody is told;
3. takes Midtrans's status API down (``error_rate`` 1.0 on ``status``) before the first scheduled
   status reads come due (QRIS first gap ``--first-check`` seconds); the reads fail, the route's
   breaker opens, and every read is deferred; waits until all N are deferred;
4. brings the status API back and measures: time from recovery until every order is ``paid``,
   against the ideal N / rate (rate = ``LUNAS_STATUS_READS_PER_MINUTE_MIDTRANS`` / 60), as a
   ratio (target <= 1.2); the split between noticing the recovery (breaker wait in open, trials)
   and draining; and, from the simulator's request log, the peak number of status requests in any
   one-second window (must not exceed the rate) and any over the minute;
5. checks the outcome from the database (every order paid exactly once) and stops everything,
   deletes its Redis keys and drops the database, whatever happens.

    python bench/recovery.py [--orders 20000] [--rate 100] [--first-check 360] [--wait-open 5]
                             [--max-wait-open 15]

Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from capture import RawHttp, free_port, fresh_database, lunas, machine, write_result
from failover import (
    REDIS_URL,
    Proc,
    Simulator,
    delete_redis_keys,
    new_merchant,
    simulator_ports,
    started,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.settings import VerificationSettings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "recovery.json"
ROUTE = "qris:midtrans:qris"


def _order(ref: str, rng: random.Random) -> bytes:
    return json.dumps({
        "merchant_order_id": f"REC-{ref}", "amount": 1000 * rng.randint(10, 5_000),
        "rail": "qris",
        "customer": {"name": "Andi Wijaya", "email": "andi@example.co.id",
                     "phone": "+6281234567890"},
    }).encode()


async def _capture(url: str, api_key: str, n: int, clients: int) -> list[tuple[str, str]]:
    """N QRIS captures; returns (order id, attempt id) of each served one."""
    rng = random.Random(7)
    tag = secrets.token_hex(3)
    todo = iter(range(n))
    served: list[tuple[str, str]] = []
    failures: dict[str, int] = {}

    async def client() -> None:
        http = RawHttp(url)
        try:
            for i in todo:
                status, body = await http.exchange("/v1/orders", _order(f"{tag}-{i}", rng), {
                    "Authorization": f"Bearer {api_key}", "Idempotency-Key": f"{tag}-{i}",
                    "Content-Type": "application/json"})
                reply = json.loads(body)
                route = (reply.get("routing") or {}).get("served_by")
                if status == 201 and route == ROUTE:
                    served.append((reply["id"], reply["payment"]["attempt_id"]))
                else:
                    key = f"{status} {route}"
                    failures[key] = failures.get(key, 0) + 1
        finally:
            await http.aclose()

    await asyncio.gather(*(client() for _ in range(clients)))
    if failures:
        print(f"  captures not served by {ROUTE}: {failures}")
    return served


async def _pay_all(sim: Simulator, attempts: list[str], clients: int) -> int:
    todo = iter(attempts)
    paid = 0

    async def client() -> None:
        nonlocal paid
        http = RawHttp(sim.control_url)
        try:
            for attempt in todo:
                status, _ = await http.exchange("/pay", json.dumps({"order_id": attempt})
                                                .encode(), {"Content-Type": "application/json"})
                paid += status < 300
        finally:
            await http.aclose()

    await asyncio.gather(*(client() for _ in range(clients)))
    return paid


async def _counts(url: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM orders GROUP BY state")
        deferred = await conn.fetchval(
            "SELECT count(*) FROM payment_attempts WHERE deferred_on IS NOT NULL")
        settled_twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT order_id FROM evidence WHERE verdict = 'settle' "
            "GROUP BY order_id HAVING count(*) > 1) AS t")
    finally:
        await conn.close()
    return {**{r["state"]: int(r["n"]) for r in rows}, "deferred": int(deferred),
            "settled_twice": int(settled_twice)}


async def _debug(url: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [tuple(r) for r in await conn.fetch(
            "SELECT state, deferred_on IS NULL, next_check_at < now(), left(last_check, 40), "
            "count(*) FROM payment_attempts GROUP BY 1, 2, 3, 4")]
    finally:
        await conn.close()


def counts(url: str) -> dict[str, int]:
    return asyncio.run(_counts(url))


def wait_for(probe: Any, timeout: float, what: str, every: float = 0.25) -> float:
    started_at = time.monotonic()
    while time.monotonic() - started_at < timeout:
        if probe():
            return time.monotonic()
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def peak_in_window(times: list[float], window: float) -> int:
    """The most requests in any half-open window [t, t + window) starting at a request."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + window:
            j += 1
        best = max(best, j - i)
    return best


def windows_over(times: list[float], window: float, limit: float) -> int:
    """How many windows [t, t + window) starting at a request hold more than ``limit``."""
    over, j = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + window:
            j += 1
        over += (j - i) > limit
    return over


def main() -> int:
    if sys.argv[1:2] == ["_simulators"]:  # run by ourselves as the simulators' process
        from failover import _simulators
        asyncio.run(_simulators(int(sys.argv[2]), int(sys.argv[3])))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--orders", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=100.0,
                   help="status reads a second the provider accepts (Lunas's configured pace)")
    p.add_argument("--first-check", type=float, default=600.0,
                   help="QRIS first status read, seconds after create (room to capture and pay)")
    p.add_argument("--wait-open", type=float, default=5.0,
                   help="LUNAS_BREAKER_WAIT_OPEN: how long an open breaker waits for a trial")
    p.add_argument("--max-wait-open", type=float, default=15.0,
                   help="LUNAS_BREAKER_MAX_WAIT_OPEN: the open wait's cap after failed trials, "
                        "so the longest a recovery can go unnoticed")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()

    info = machine()
    print(f"lunas recovery bench - {info['date']} - commit {info['commit']}")
    print(f"machine: {info['nproc']} x {info['cpu_model']}, {info['memory_gib']} GiB RAM, "
          f"PostgreSQL {info['postgresql']}, Python {info['python']}")
    prefix = f"lunas-bench-recovery-{os.getpid()}-{secrets.token_hex(3)}:"
    result: dict[str, Any] = {"machine": info, "settings": {
        "orders": args.orders, "rate_per_s": args.rate, "route": ROUTE,
        "first_check_s": args.first_check, "breaker_wait_open_s": args.wait_open,
        "breaker_max_wait_open_s": args.max_wait_open,
        "pace_headroom": VerificationSettings().headroom,
        "redis": f"{REDIS_URL} prefix {prefix}"}}
    with tempfile.TemporaryDirectory(prefix="lunas-recovery-") as tmp, \
            fresh_database() as (_db, url):
        logdir = Path(tmp)
        env = {**os.environ, "LUNAS_DATABASE_URL": url, "LUNAS_ENV": "development",
               "PYTHONPATH": str(ROOT), "LUNAS_REDIS_URL": REDIS_URL,
               "LUNAS_REDIS_PREFIX": prefix,
               "LUNAS_STATUS_READS_PER_MINUTE_MIDTRANS": str(args.rate * 60),
               "LUNAS_VERIFY_SCHEDULE_QRIS": str(args.first_check),
               "LUNAS_VERIFY_RETRY_AFTER": "2", "LUNAS_BREAKER_WAIT_OPEN": str(args.wait_open),
               "LUNAS_BREAKER_MAX_WAIT_OPEN": str(args.max_wait_open)}
        try:
            lunas("migrate", env=env)
            created = new_merchant("Recovery", env)
            mt_port, xn_port = simulator_ports()
            midtrans, xendit = Simulator(mt_port), Simulator(xn_port)
            env |= {"LUNAS_MIDTRANS_URL": midtrans.data_url, "LUNAS_XENDIT_URL": xendit.data_url}
            port = free_port()
            api_url = f"http://127.0.0.1:{port}"
            env |= {"LUNAS_HOST": "127.0.0.1", "LUNAS_PORT": str(port)}
            sim_argv = [sys.executable, str(Path(__file__).resolve()), "_simulators",
                        str(mt_port), str(xn_port)]
            cli = [sys.executable, "-m", "orchestrator.cli"]
            with started("simulators", sim_argv, env, logdir, f"{midtrans.control_url}/calls"), \
                    started("api", [*cli, "api"], env, logdir, f"{api_url}/readyz"):
                midtrans._call("POST", "/config", json={"drop_notifications": True})
                worker = Proc("worker", [*cli, "worker"], env, logdir)
                try:
                    result["phases"] = run(args, url, api_url, created["api_key"], midtrans,
                                           worker)
                finally:
                    worker.stop()
        finally:
            result["settings"]["redis_keys_deleted"] = delete_redis_keys(prefix)
    print_table(result)
    write_result(result, args.output)
    return 0


def run(args: argparse.Namespace, url: str, api_url: str, api_key: str, midtrans: Simulator,
        worker: Proc) -> dict[str, Any]:
    t0 = time.monotonic()
    print(f"capturing {args.orders} QRIS orders ...", flush=True)
    served = asyncio.run(_capture(api_url, api_key, args.orders, args.clients))
    captured_s = time.monotonic() - t0
    print(f"  {len(served)} served by {ROUTE} in {captured_s:.1f} s; paying each at the "
          "simulator (notifications dropped) ...", flush=True)
    paid = asyncio.run(_pay_all(midtrans, [a for _, a in served], args.clients))
    ready_s = time.monotonic() - t0
    print(f"  {paid} paid at the provider, {ready_s:.1f} s after the first capture", flush=True)
    if ready_s > args.first_check * 0.9:
        raise RuntimeError("capture and payment took longer than --first-check: raise it")
    midtrans._call("POST", "/faults", json={"kind": "error_rate", "operation": "status",
                                            "probability": 1.0, "status": 503})
    n = len(served)
    print(f"status API down; waiting for the first reads (due {args.first_check:.0f} s after "
          "each create) to fail and every read to be deferred ...", flush=True)
    # Every read deferred, bar the breaker's half-open trials (3 by default), which fail and
    # are retried while the provider is still down.
    try:
        wait_for(lambda: counts(url)["deferred"] >= n - 3, args.first_check + 120,
                 "every read deferred", every=1.0)
    except RuntimeError:
        print(worker.tail())
        print(asyncio.run(_debug(url)))
        raise
    before = counts(url)
    print(f"  deferred {before['deferred']}; orders {before}", flush=True)

    recovered_wall = time.time()
    recovered = time.monotonic()
    cpu_at_recovery = worker.cpu()
    midtrans._call("DELETE", "/faults")
    ideal = n / args.rate
    done = wait_for(lambda: counts(url).get("paid", 0) >= n, ideal * 3 + 120,
                    "every order paid", every=0.5)
    elapsed = done - recovered
    drain_cpu = worker.cpu() - cpu_at_recovery
    log = midtrans._call("GET", f"/calls/log?operation=status&since={recovered_wall}")
    times = sorted(r["at"] for r in log)
    after = counts(url)
    first_read = times[0] - recovered_wall if times else None
    drain = (times[-1] - times[0]) if len(times) > 1 else None
    return {
        "captured": n, "capture_s": round(captured_s, 1), "paid_at_provider": paid,
        "deferred_before_recovery": before["deferred"],
        "recovery_to_all_paid_s": round(elapsed, 2), "ideal_s": round(ideal, 2),
        "ratio_to_ideal": round(elapsed / ideal, 3),
        "first_read_after_recovery_s": round(first_read, 2) if first_read is not None else None,
        "drain_s": round(drain, 2) if drain is not None else None,
        "drain_ratio_to_ideal": round(drain / ideal, 3) if drain else None,
        "status_requests_after_recovery": len(times),
        "peak_requests_in_1s": peak_in_window(times, 1.0),
        "peak_requests_in_60s": peak_in_window(times, 60.0),
        "one_second_windows_over_limit": windows_over(times, 1.0, args.rate),
        "limit_per_s": args.rate, "limit_per_60s": args.rate * 60,
        "orders_after": {k: v for k, v in after.items() if k != "deferred"},
        "worker_cpu_s": round(worker.cpu(), 1),
        # The worker's CPU from recovery until every order was paid, per order settled: what the
        # drain costs it (at 100 reads/s, 10 ms is the whole of one core).
        "worker_cpu_ms_per_order_after_recovery": round(drain_cpu / n * 1000, 2),
    }


def print_table(result: dict[str, Any]) -> None:
    ph = result.get("phases") or {}
    if not ph:
        return
    print("\n| measure | value |\n|---|---|")
    rows = [
        ("orders (paid at provider, webhooks dropped)", ph["captured"]),
        ("recovery -> every order paid", f"{ph['recovery_to_all_paid_s']} s"),
        ("ideal N / rate", f"{ph['ideal_s']} s"),
        ("ratio (target <= 1.2)", ph["ratio_to_ideal"]),
        ("first status read after recovery", f"{ph['first_read_after_recovery_s']} s"),
        ("drain (first to last read) / ideal", ph["drain_ratio_to_ideal"]),
        ("status requests after recovery", ph["status_requests_after_recovery"]),
        ("peak in any 1 s (limit)", f"{ph['peak_requests_in_1s']} ({ph['limit_per_s']:.0f})"),
        ("1 s windows over the limit (of the requests after recovery)",
         ph["one_second_windows_over_limit"]),
        ("peak in any 60 s (limit)",
         f"{ph['peak_requests_in_60s']} ({ph['limit_per_60s']:.0f})"),
        ("orders settled twice", ph["orders_after"].get("settled_twice")),
        ("worker CPU per order after recovery",
         f"{ph['worker_cpu_ms_per_order_after_recovery']} ms"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    sys.exit(main())
