"""Capture throughput: ``POST /v1/orders`` on a real ``lunas api`` versus the same SQL in pgbench.

One run, about a minute, everything on 127.0.0.1:

1. creates a fresh PostgreSQL database, migrates it with ``lunas migrate`` and creates a merchant
   with several payout accounts (``lunas merchants create --json``);
2. starts ``lunas api`` (one process, then two on two ports) and waits for ``/readyz``;
3. drives ``POST /v1/orders`` from a separate load process (httpx, 32 concurrent clients, a pool
   of 32 connections, a unique Idempotency-Key and merchant_order_id per request, amounts varied
   so the unique-code pool is never the bottleneck): a warm-up, then a fixed duration;
4. runs the capture transaction as raw SQL through pgbench (32 clients, 2 threads, same duration);
5. prints orders/s, p50/p99 latency, errors, pgbench tps and the ratio, with the machine, date and
   commit, and writes the same to ``bench/results/capture.json``;
6. drops the database and stops every process it started, whatever happens.

    python bench/capture.py [--duration 15] [--warmup 500] [--clients 32] [--processes 1,2]

Numbers are reported, never asserted: the load generator, the api and PostgreSQL share the
machine's cores, so read them as "on this box", not as a capacity claim.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chaos.infra import free_port
from orchestrator.tls import default_trust

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "capture.json"
ADMIN_DSN = os.environ.get("LUNAS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
ACCOUNTS = [("bca", "7000000001", "BENCH ONE"), ("bca", "7000000002", "BENCH TWO"),
            ("mandiri", "7000000003", "BENCH THREE"), ("bri", "7000000004", "BENCH FOUR")]
# Amounts are multiples of 1,000 between 10,000 and 5,000,000 rupiah: codes 1..999 keep each
# amount's transfer-amount range disjoint from the next, so ~5,000 distinct amounts x 999 codes x 4
# accounts can be held at once - far more than a run captures.
AMOUNT_STEPS = (10, 5_000)


# --------------------------------------------------------------------------- helpers


def lunas(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"lunas {' '.join(args[:2])} failed:\n{done.stderr[-2000:]}")
    return done


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in text or "(postmaster)" in text:
            # utime + stime, plus cutime + cstime: the postmaster's reaped children carry the
            # CPU of backends that exited during the window (connection churn).
            fields = text.rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(parts) - idle) / tick, sum(parts) / tick


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    pg = subprocess.run(["psql", ADMIN_DSN, "-Atc", "SHOW server_version"], capture_output=True,
                        text=True, timeout=10)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True, timeout=10)
    # The result files an earlier benchmark of the same `make bench` wrote are not a change to
    # the code measured.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)bench/results"], cwd=ROOT,
                           capture_output=True, text=True, timeout=10)
    return {
        "nproc": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kb / 2**20, 1),
        "postgresql": pg.stdout.strip() or "unknown", "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": (rev.stdout.strip() or "unknown") + ("-dirty" if dirty.stdout.strip() else ""),
    }


# --------------------------------------------------------------------------- database


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_database(tag: str = "", *, keep: bool = False) -> Iterator[tuple[str, str]]:
    """Yields (database name, SQLAlchemy URL); drops the database afterwards unless ``keep``."""
    name = f"lunas_bench_{tag + '_' if tag else ''}{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        base = ADMIN_DSN.rsplit("/", 1)[0]
        yield name, base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + name
    finally:
        if not keep:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --------------------------------------------------------------------------- api processes


class ApiProcesses:
    """``lunas api`` on ``count`` free ports; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.env, self.count = env, count
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []

    def __enter__(self) -> ApiProcesses:
        try:
            for _ in range(self.count):
                port = free_port()
                env = {**self.env, "LUNAS_HOST": "127.0.0.1", "LUNAS_PORT": str(port)}
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "orchestrator.cli", "api"], cwd=ROOT, env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                self.urls.append(f"http://127.0.0.1:{port}")
            for proc, url in zip(self.procs, self.urls, strict=True):
                _wait_ready(proc, url)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"lunas api exited with {proc.returncode}: {err[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"lunas api at {url} was not ready within 30 s")


# --------------------------------------------------------------------------- load generator


def run_load(urls: list[str], api_key: str, *, client: str, clients: int, warmup: int,
             duration: float, api: ApiProcesses) -> dict[str, Any]:
    """Run the load process against ``urls``; returns its figures plus the CPU split."""
    spec = json.dumps({"urls": urls, "api_key": api_key, "client": client, "clients": clients,
                       "warmup": warmup, "duration": duration})
    load = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_load"],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert load.stdin is not None and load.stdout is not None
        load.stdin.write(spec + "\n")
        load.stdin.flush()
        # The load process says "measuring" after its warm-up and "done" before its report;
        # CPU is sampled around the measured window only.
        if load.stdout.readline().strip() != "measuring":
            raise RuntimeError("load generator failed during warm-up")
        before = (api.cpu(), cpu_seconds(load.pid), postgres_cpu_seconds(), *machine_cpu())
        if load.stdout.readline().strip() != "done":
            raise RuntimeError("load generator failed")
        after = (api.cpu(), cpu_seconds(load.pid), postgres_cpu_seconds(), *machine_cpu())
        report: dict[str, Any] = json.loads(load.stdout.readline())
        load.wait(timeout=30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(timeout=5)
    wall = report["elapsed_s"]
    busy, total = after[3] - before[3], after[4] - before[4]
    api_cores, load_cores, pg_cores = ((after[i] - before[i]) / wall for i in range(3))
    report["cpu_cores_used"] = {
        "api": round(api_cores, 2), "load_generator": round(load_cores, 2),
        "postgres": round(pg_cores, 2),
        # Kernel work not charged to a process, and anything else running on the machine.
        "other": round(max(0.0, busy / wall - api_cores - load_cores - pg_cores), 2),
        "machine_busy_pct": round(100 * busy / total, 1) if total else None,
    }
    # CPU per order is steadier than orders/s when something else shares the machine.
    ok_per_s = report["orders_per_s"] or float("nan")
    report["cpu_ms_per_order"] = {"api": round(1000 * api_cores / ok_per_s, 3),
                                  "postgres": round(1000 * pg_cores / ok_per_s, 3)}
    return report


def _order_body(ref: str, rng: random.Random) -> bytes:
    return json.dumps({
        "merchant_order_id": f"BENCH-{ref}",
        "amount": 1000 * rng.randint(*AMOUNT_STEPS),
        "customer": {"name": "Andi Wijaya", "email": "andi@example.co.id",
                     "phone": "+6281234567890"},
        "metadata": {"cart": "bench"},
    }).encode()


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on one connection: just enough for these POSTs.

    httpx spends ~2 ms of CPU per request in pure Python; on a 2-core box shared with the api and
    PostgreSQL that makes the generator, not the server, the bottleneck. This one costs a few
    tens of microseconds, so the ``raw`` runs measure the server.
    """

    _LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        return (await self.exchange(path, body, headers))[0]

    async def exchange(self, path: str, body: bytes,
                       headers: dict[str, str]) -> tuple[int, bytes]:
        """POST and return the status and the response body."""
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                     f"Content-Length: {len(body)}\r\n{head}\r\n".encode() + body)
        response = await reader.readuntil(b"\r\n\r\n")
        length = self._LENGTH.search(response)
        if length is None:
            await self.aclose()
            raise ConnectionError("response without Content-Length")
        return int(response[9:12]), await reader.readexactly(int(length.group(1)))

    async def aclose(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def _load(spec: dict[str, Any]) -> None:
    import httpx

    clients, urls, kind = int(spec["clients"]), list(spec["urls"]), spec["client"]
    rng = random.Random()
    run = secrets.token_hex(4)  # keys and merchant order ids stay unique across runs
    counter = iter(range(10**9))
    latencies: list[float] = []
    errors: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {spec['api_key']}", "Content-Type": "application/json"}
    # httpx: one AsyncClient per api process, a pool of ``clients`` connections shared by the
    # workers. raw: one keep-alive connection per worker - the same 32 connections.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    pools = [httpx.AsyncClient(verify=default_trust(),
                               base_url=u, limits=limits, timeout=30) for u in urls] \
        if kind == "httpx" else []
    raws = [RawHttp(urls[n % len(urls)]) for n in range(clients)] if kind == "raw" else []

    async def post(n: int, body: bytes, key: str) -> int:
        if kind == "raw":
            return await asyncio.wait_for(
                raws[n].post("/v1/orders", body, {**headers, "Idempotency-Key": key}), 30)
        r = await pools[n % len(pools)].post("/v1/orders", content=body,
                                             headers={**headers, "Idempotency-Key": key})
        return r.status_code

    async def one(n: int, record: bool) -> None:
        i = next(counter)
        body = _order_body(f"{run}-{i}", rng)
        started = time.perf_counter()
        try:
            status = str(await post(n, body, f"bench-{run}-{i}"))
        except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            status = type(exc).__name__
            if raws:
                await raws[n].aclose()
        if record:
            latencies.append(time.perf_counter() - started)
            if status != "201":
                errors[status] = errors.get(status, 0) + 1

    async def worker(n: int, until: float | None, quota: int) -> None:
        while True:
            if until is None:
                if quota <= 0:
                    return
                quota -= 1
            elif time.perf_counter() >= until:
                return
            await one(n, record=until is not None)

    try:
        await asyncio.gather(*(worker(n, None, int(spec["warmup"]) // clients + 1)
                               for n in range(clients)))
        print("measuring", flush=True)
        started = time.perf_counter()
        until = started + float(spec["duration"])
        await asyncio.gather(*(worker(n, until, 0) for n in range(clients)))
        elapsed = time.perf_counter() - started
        print("done", flush=True)
    finally:
        for pool in pools:
            await pool.aclose()
        for raw in raws:
            await raw.aclose()
    latencies.sort()
    ok = len(latencies) - sum(errors.values())
    print(json.dumps({
        "requests": len(latencies), "ok": ok, "errors": errors,
        "elapsed_s": round(elapsed, 3), "orders_per_s": round(ok / elapsed, 1),
        "p50_ms": round(1000 * percentile(latencies, 50), 2),
        "p99_ms": round(1000 * percentile(latencies, 99), 2),
        "max_ms": round(1000 * latencies[-1], 2) if latencies else None,
    }), flush=True)


def load_main() -> None:
    spec = json.loads(sys.stdin.readline())
    try:
        import uvloop  # the generator should spend as little of the shared CPU as it can
    except ImportError:
        asyncio.run(_load(spec))
    else:
        uvloop.run(_load(spec))


# --------------------------------------------------------------------------- pgbench


def pgbench_script(merchant_id: str, account: tuple[str, str, str], response: dict[str, Any],
                   event: dict[str, Any]) -> str:
    """The SQL of one capture, as Lunas' capture means it (not as it happens to issue it):
    the order, the held amounts near it, the attempt, the outbox event and the idempotency row
    in one transaction. Variables only ever appear outside string literals (``-M prepared``)."""
    bank, number, holder = account

    def lit(value: Any) -> str:
        # ', ' and ': ' separators keep every ':' followed by a space, so pgbench never reads a
        # JSON colon as a variable reference.
        return "'" + json.dumps(value, separators=(", ", ": ")).replace("'", "''") + "'"

    uid = "(:client_id::text || '_' || :r::text)"
    # Every interpolated value is this script's own constant or the merchant it just created.
    return f"""\
\\set amount 1000 * random({AMOUNT_STEPS[0]}, {AMOUNT_STEPS[1]})
\\set code random(1, 999)
\\set r random(1, 999999999999)
BEGIN;
INSERT INTO orders (id, merchant_id, merchant_order_id, amount, currency, state, rail, \
customer_name, customer_email, customer_phone, metadata, created_at, updated_at, expires_at) \
VALUES ('ord_' || {uid}, '{merchant_id}', 'PGB-' || {uid}, :amount::bigint, 'IDR', \
'awaiting_payment', 'manual_transfer', 'Andi Wijaya', 'andi@example.co.id', '+6281234567890', \
'{{"cart": "bench"}}'::jsonb, now(), now(), now() + interval '1 day') \
ON CONFLICT (merchant_id, merchant_order_id) DO NOTHING RETURNING id;
SELECT transfer_amount FROM payment_attempts WHERE payout_bank = '{bank}' \
AND payout_account_number = '{number}' AND holds_code \
AND transfer_amount BETWEEN :amount::bigint + 1 AND :amount::bigint + 999;
INSERT INTO payment_attempts (id, order_id, rail, provider, state, transfer_amount, unique_code, \
payout_bank, payout_account_number, payout_account_name, holds_code, created_at, updated_at, \
expires_at) VALUES ('att_' || {uid}, 'ord_' || {uid}, 'manual_transfer', 'bank', 'active', \
:amount::bigint + :code::int, :code::int, '{bank}', '{number}', '{holder}', true, now(), now(), \
now() + interval '1 day') ON CONFLICT (payout_bank, payout_account_number, transfer_amount) \
WHERE holds_code DO NOTHING RETURNING id;
INSERT INTO outbox (event_id, event_type, aggregate_id, merchant_id, payload, status, attempts, \
created_at, available_at) VALUES ('evt_' || {uid}, 'order.captured', 'ord_' || {uid}, \
'{merchant_id}', {lit(event)}::jsonb, 'pending', 0, now(), now());
INSERT INTO idempotency_keys (merchant_id, key, request_hash, order_id, response_status, \
response_body, created_at) VALUES ('{merchant_id}', 'pgb-' || {uid}, \
'{"0" * 64}', 'ord_' || {uid}, 201, {lit(response)}::jsonb, now()) \
ON CONFLICT DO NOTHING RETURNING key;
COMMIT;
"""  # noqa: S608


def run_pgbench(db: str, script: str, *, clients: int, duration: float) -> dict[str, Any]:
    pgbench = shutil.which("pgbench") or "/usr/bin/pgbench"
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="lunas-capture-") as f:
        f.write(script)
        f.flush()
        out = subprocess.run(
            [pgbench, "-n", "-h", "127.0.0.1", "-U", "postgres", "-M", "prepared",
             "-c", str(clients), "-j", "2", "-T", str(round(duration)), "-f", f.name, db],
            capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    lat = re.search(r"latency average = ([\d.]+) ms", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if tps is None:
        raise RuntimeError(f"cannot read pgbench's tps:\n{out.stdout}")
    return {"tps": round(float(tps.group(1)), 1),
            "latency_avg_ms": float(lat.group(1)) if lat else None,
            "failed": int(failed.group(1)) if failed else 0}


# --------------------------------------------------------------------------- main


def sample_capture(url: str, api_key: str) -> dict[str, Any]:
    """One real capture, so the pgbench rows carry JSON of the size Lunas stores."""
    import httpx

    r = httpx.post(f"{url}/v1/orders", content=_order_body("sample", random.Random(0)),
                   headers={"Authorization": f"Bearer {api_key}",
                            "Content-Type": "application/json",
                            "Idempotency-Key": f"bench-sample-{os.getpid()}"}, timeout=10)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def table(result: dict[str, Any]) -> str:
    tps = result["pgbench"]["tps"] if "pgbench" in result else None
    rows = [("", "orders/s", "p50 ms", "p99 ms", "errors", "÷ pgbench")]
    for run in result["lunas"]:
        rows.append((f"lunas api x{run['processes']} ({run['client']} client)",
                     f"{run['orders_per_s']:.0f}", f"{run['p50_ms']:.1f}", f"{run['p99_ms']:.1f}",
                     str(sum(run["errors"].values())),
                     f"{run['orders_per_s'] / tps:.2f}" if tps else "-"))
    if tps:
        pg = result["pgbench"]
        rows.append(("pgbench, same SQL", f"{tps:.0f} tps", f"{pg['latency_avg_ms']:.1f} avg", "",
                     str(pg["failed"]), "1.00"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)


def _runs(text: str) -> list[tuple[str, int]]:
    runs = []
    for item in text.split(","):
        client, _, count = item.strip().partition(":")
        if client not in ("httpx", "raw") or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"expected CLIENT:PROCESSES, got {item!r}")
        runs.append((client, int(count)))
    return runs


def main() -> int:
    if sys.argv[1:2] == ["_load"]:
        load_main()
        return 0
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    p.add_argument("--warmup", type=int, default=500, help="requests before measuring")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--runs", type=_runs, default=_runs("httpx:1,raw:1,raw:2"),
                   help="CLIENT:PROCESSES,... with CLIENT httpx or raw (default "
                        "httpx:1,raw:1,raw:2)")
    p.add_argument("--no-pgbench", action="store_true")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()

    info = machine()
    print(f"lunas capture bench - {info['date']} - commit {info['commit']}")
    print(f"machine: {info['nproc']} x {info['cpu_model']}, {info['memory_gib']} GiB RAM, "
          f"PostgreSQL {info['postgresql']}, Python {info['python']}")
    result: dict[str, Any] = {"machine": info, "settings": {
        "clients": args.clients, "warmup_requests": args.warmup, "duration_s": args.duration,
        "payout_accounts": len(ACCOUNTS),
        "amounts": f"1000 x random({AMOUNT_STEPS[0]}, {AMOUNT_STEPS[1]}) rupiah"}, "lunas": []}
    with fresh_database() as (db, url):
        env = {**os.environ, "LUNAS_DATABASE_URL": url, "LUNAS_ENV": "development",
               "PYTHONPATH": str(ROOT)}
        env.pop("LUNAS_REDIS_URL", None)
        lunas("migrate", env=env)
        created = json.loads(lunas(
            "merchants", "create", "Bench", "--json",
            *(arg for a in ACCOUNTS for arg in ("--account", ":".join(a))), env=env).stdout)
        api_key, merchant_id = created["api_key"], created["merchant_id"]
        sample: dict[str, Any] | None = None
        i = 0
        while i < len(args.runs):
            count = args.runs[i][1]
            group = []  # consecutive runs with the same process count share the processes
            while i < len(args.runs) and args.runs[i][1] == count:
                group.append(args.runs[i][0])
                i += 1
            with ApiProcesses(env, count) as api:
                if sample is None:
                    sample = sample_capture(api.urls[0], api_key)
                for client in group:
                    print(f"\nlunas api x{count}, {client} client: warm-up {args.warmup} "
                          f"requests, then {args.duration:.0f} s with {args.clients} "
                          "concurrent clients ...", flush=True)
                    run = {"processes": count, "client": client, **run_load(
                        api.urls, api_key, client=client, clients=args.clients,
                        warmup=args.warmup, duration=args.duration, api=api)}
                    result["lunas"].append(run)
                    print(f"  {run['orders_per_s']:.0f} orders/s, p50 {run['p50_ms']:.1f} ms, "
                          f"p99 {run['p99_ms']:.1f} ms, errors {run['errors'] or 0}\n"
                          f"  CPU cores used: {run['cpu_cores_used']}\n"
                          f"  CPU ms per order: {run['cpu_ms_per_order']}")
        if not args.no_pgbench and sample is not None:
            print(f"\npgbench: the capture transaction as SQL, {args.clients} clients, "
                  f"{args.duration:.0f} s ...", flush=True)
            event = {"order_id": sample["id"], "merchant_order_id": sample["merchant_order_id"],
                     "status": sample["status"], "amount": sample["amount"], "currency": "IDR",
                     "payment": sample["payment"]}
            script = pgbench_script(merchant_id, ACCOUNTS[0], sample, event)
            result["pgbench"] = run_pgbench(db, script, clients=args.clients,
                                            duration=args.duration)
            for run in result["lunas"]:
                run["ratio_to_pgbench"] = round(run["orders_per_s"] / result["pgbench"]["tps"], 3)
    print("\n" + table(result))
    result["target"] = ("issue: >= 1500 orders/s with p99 < 50 ms on this 2-core machine "
                        "(reported, never asserted)")
    write_result(result, args.output)
    return 0


def write_result(result: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    shown = output.relative_to(ROOT) if output.is_relative_to(ROOT) else output
    print(f"\nwrote {shown}")


if __name__ == "__main__":
    sys.exit(main())
