"""The game-day stack: everything Lunas runs against in production, started privately so that an
experiment may break any of it.

- a throwaway PostgreSQL and a throwaway Redis (chaos/infra.py), which experiments stop and restart;
- the Midtrans, Xendit and Moota simulators in this process, each behind a TCP fault proxy
  (chaos/proxy.py) for connection-level faults, with their own fault books for API-level ones;
- ``lunas api`` and ``lunas worker`` as real processes (experiments SIGKILL them), on a shared
  game-day clock file (orchestrator/gameday.py) so deadlines and backlog ages can be moved;
- a real Prometheus scraping both, with ops/alerts loaded as the game day's rules (prometheus.py).

Everything listens on 127.0.0.1 and lives in one temporary directory, removed on ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from chaos.gameday.prometheus import Prometheus
from chaos.infra import ThrowawayPostgres, ThrowawayRedis, dies_with_us, free_port
from chaos.proxy import FaultProxy
from chaos.sim.midtrans import MidtransSim
from chaos.sim.moota import MootaSim
from chaos.sim.runner import Simulators, start_simulators
from orchestrator.settings import DatabaseSettings, ProviderSettings
from orchestrator.store.database import Database
from orchestrator.store.engine import create_engine, migrate
from orchestrator.store.merchants import OPS_SCOPES, create_merchant, create_ops_token
from orchestrator.tls import default_trust

ROOT = Path(__file__).resolve().parents[2]

# Payout account of the game-day merchant (manual transfer) and the Moota account it watches.
PAYOUT_ACCOUNT = ("bca", "8730012345", "TOKO GAME DAY")

# A day compressed into minutes: short verification gaps, fast breakers and sweeps, a status page
# that reacts in seconds. Experiments add or override (``configuration.lunas_env``).
BASE_ENV: Mapping[str, str] = {
    "LUNAS_ENV": "development",
    "LUNAS_LOG_LEVEL": "WARNING",
    "LUNAS_PROVIDER_TIMEOUT": "1",
    "LUNAS_CAPTURE_BUDGET": "2",
    "LUNAS_BREAKER_WINDOW": "10",
    "LUNAS_BREAKER_MIN_CALLS": "4",
    "LUNAS_BREAKER_WAIT_OPEN": "2",
    "LUNAS_BREAKER_MAX_WAIT_OPEN": "4",
    "LUNAS_VERIFY_SCHEDULE_QRIS": "4,8,16",
    "LUNAS_VERIFY_SCHEDULE_EWALLET": "4,8,16",
    "LUNAS_VERIFY_SCHEDULE_VA": "6,12,24",
    "LUNAS_VERIFY_RETRY_AFTER": "2",
    "LUNAS_VERIFY_INTERVAL": "0.25",
    "LUNAS_STATUS_READS_PER_MINUTE_MIDTRANS": "3000",
    "LUNAS_STATUS_READS_PER_MINUTE_XENDIT": "3000",
    "LUNAS_FEED_POLL_INTERVAL": "1",
    "LUNAS_SWEEP_INTERVAL": "0.5",
    "LUNAS_OUTBOX_POLL": "0.1",
    "LUNAS_OUTBOX_LEASE": "10",
    "LUNAS_WEBHOOK_TIMEOUT": "2",
    "LUNAS_STATUS_INTERVAL": "1",
    "LUNAS_STATUS_WORSEN_AFTER": "2",
    "LUNAS_STATUS_RECOVER_AFTER": "3",
    "LUNAS_STATUS_CACHE_TTL": "0.5",
    "LUNAS_DATABASE_POOL_SIZE": "10",
}


class LunasProcess:
    """One ``lunas api`` or ``lunas worker``; output to a log file, never to a pipe nobody reads."""

    def __init__(self, name: str, command: str, env: Mapping[str, str], logdir: Path,
                 ready_url: str) -> None:
        self.name, self.command, self.env = name, command, dict(env)
        self.log = logdir / f"{name}.log"
        self.ready_url = ready_url
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, extra_env: Mapping[str, str] | None = None, *,
                    planned_exit: int | None = None) -> None:
        """``planned_exit``: the exit code of a process started to die on purpose; exiting with
        it counts as ready (it served, then died, maybe before readiness was polled)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603, ASYNC220 - our own binaries, quick to spawn
                dies_with_us([sys.executable, "-m", "orchestrator.cli", self.command]), cwd=ROOT,
                env={**self.env, **(extra_env or {})}, stdout=out, stderr=subprocess.STDOUT)
        await self.wait_ready(planned_exit=planned_exit)

    async def wait_ready(self, limit_s: float = 40.0, *, planned_exit: int | None = None
                         ) -> None:
        deadline = time.monotonic() + limit_s
        async with httpx.AsyncClient(verify=default_trust(), timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    if (self.proc is not None and planned_exit is not None
                            and self.proc.returncode == planned_exit):
                        return
                    raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.ready_url)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready at {self.ready_url} in {limit_s} s:\n"
                           f"{self.tail()}")

    async def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            await asyncio.to_thread(self.proc.wait, 15)

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 10)
        except subprocess.TimeoutExpired:
            await self.kill()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Stack:
    def __init__(self, lunas_env: Mapping[str, str] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lunas-gameday-"))
        self.extra_env = dict(lunas_env or {})
        self.pg = ThrowawayPostgres(max_connections=100)
        self.redis = ThrowawayRedis()
        self.sims: Simulators | None = None
        self.moota = MootaSim()
        self.proxies: dict[str, FaultProxy] = {}
        self.api_port, self.worker_metrics_port = free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.clock_file = self.tmp / "clock-offset"
        self.clock_offset = 0.0
        self.db: Database | None = None
        self.api_key = ""
        self.ops_token = ""
        self.merchant_id = ""
        self.prometheus = Prometheus(self.tmp / "prometheus", ROOT / "ops" / "alerts")
        self.api: LunasProcess | None = None
        self.worker: LunasProcess | None = None
        self.payout_account = PAYOUT_ACCOUNT
        self.merchant_endpoint_failing = False
        self._hook_server: asyncio.Server | None = None
        self.hook_port = 0  # bound by the kernel when the endpoint starts (no race for it)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self.clock_file.write_text("0")
        await self.pg.start()
        await self.redis.start()
        self.sims = await start_simulators(lunas_url=self.api_url)
        await self.moota.start()
        for name, url in (("midtrans", self.sims.midtrans.data_url),
                          ("xendit", self.sims.xendit.data_url),
                          ("moota", self.moota.data_url)):
            upstream = httpx.URL(url)
            # Port 0: the kernel picks one as the proxy binds. A port chosen earlier by
            # free_port() can meanwhile become the local end of some outgoing connection.
            proxy = FaultProxy("127.0.0.1", 0, "127.0.0.1", upstream.port or 80)
            await proxy.start()
            self.proxies[name] = proxy
        await self._start_merchant_endpoint()
        engine = create_engine(DatabaseSettings(url=self.pg.url, pool_size=4))
        await migrate(engine)
        self.db = Database(engine)
        await self._create_merchant()
        env = self.lunas_env()
        self.api = LunasProcess("api", "api", env, self.tmp, f"{self.api_url}/readyz")
        self.worker = LunasProcess("worker", "worker", env, self.tmp,
                                   f"http://127.0.0.1:{self.worker_metrics_port}/metrics")
        await self.api.start()
        await self.worker.start()
        await self.prometheus.start(
            [f"127.0.0.1:{self.api_port}", f"127.0.0.1:{self.worker_metrics_port}"])

    async def stop(self) -> None:
        # Prometheus first: the experiment is over, and stopping the processes it scrapes is
        # not an outage it should report (LunasTargetDown fired at every teardown otherwise).
        await self.prometheus.stop()
        for proc in (self.worker, self.api):
            if proc is not None:
                await proc.stop()
        for proxy in self.proxies.values():
            await proxy.stop()
        if self.sims is not None:
            await self.sims.stop()
        await self.moota.stop()
        if self._hook_server is not None:
            self._hook_server.close()
        if self.db is not None:
            await self.db.engine.dispose()
        await self.redis.aclose()
        await self.pg.aclose()
        if os.environ.get("LUNAS_GAMEDAY_KEEP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    def lunas_env(self) -> dict[str, str]:
        creds = ProviderSettings()
        proxied = {name: f"http://127.0.0.1:{p.port}" for name, p in self.proxies.items()}
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            **BASE_ENV,
            "LUNAS_DATABASE_URL": self.pg.url,
            "LUNAS_REDIS_URL": self.redis.url,
            "LUNAS_REDIS_PREFIX": "gameday:",
            "LUNAS_HOST": "127.0.0.1",
            "LUNAS_PORT": str(self.api_port),
            "LUNAS_PUBLIC_URL": self.api_url,
            "LUNAS_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            "LUNAS_MIDTRANS_URL": proxied["midtrans"],
            "LUNAS_XENDIT_URL": proxied["xendit"],
            "LUNAS_MIDTRANS_SERVER_KEY": creds.midtrans_server_key,
            "LUNAS_MOOTA_URL": proxied["moota"] + "/api/v2",
            "LUNAS_MOOTA_TOKEN": self.moota.token,
            "LUNAS_GAMEDAY_CLOCK_FILE": str(self.clock_file),
            **self.extra_env,
        }

    async def _create_merchant(self) -> None:
        assert self.db is not None
        now = self.now()
        async with self.db.transaction() as conn:
            made = await create_merchant(
                conn, name="Toko Game Day", accounts=[PAYOUT_ACCOUNT], now=now,
                webhook_url=f"http://127.0.0.1:{self.hook_port}/hooks")
            _, token = await create_ops_token(conn, name="game-day", scopes=OPS_SCOPES, now=now)
        self.merchant_id, self.api_key, self.ops_token = made.merchant_id, made.api_key, token

    async def _start_merchant_endpoint(self) -> None:
        """The merchant's webhook receiver: 200, or 500 while ``merchant_endpoint_failing``."""
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)  # the body is read, not kept
                if self.merchant_endpoint_failing:
                    writer.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n"
                                 b"connection: close\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
                                 b"connection: close\r\n\r\n")
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()

        self._hook_server = await asyncio.start_server(handle, "127.0.0.1", self.hook_port)
        self.hook_port = int(self._hook_server.sockets[0].getsockname()[1])

    # -- the game-day clock --------------------------------------------------------------------

    def now(self) -> Any:
        from datetime import UTC, datetime, timedelta
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset)

    async def advance_clock(self, seconds: float) -> None:
        """Move every Lunas process (and the game day's alert rules) ``seconds`` ahead."""
        self.clock_offset += seconds
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(str(self.clock_offset))
        tmp.replace(self.clock_file)
        await asyncio.sleep(0.5)  # the processes re-read the file every 0.2 s
        # The rules' time() moves only once the api has sampled on the new clock: the other way
        # round, its last sample looks a jump old and LunasStateSamplerStale fires on a
        # game-day artifact (production clocks do not jump).
        await self._sampled_since(time.time() + self.clock_offset - 1)
        await self.prometheus.set_clock_offset(self.clock_offset)

    async def _sampled_since(self, at: float, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(verify=default_trust(), timeout=2) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    text = (await client.get(f"{self.api_url}/metrics")).text
                    for line in text.splitlines():
                        if (line.startswith("lunas_state_sampled_timestamp_seconds ")
                                and float(line.split()[1]) >= at):
                            return
                await asyncio.sleep(0.3)

    # -- what experiments break ----------------------------------------------------------------

    @property
    def midtrans(self) -> MidtransSim:
        assert self.sims is not None
        return self.sims.midtrans

    def provider_control_url(self, provider: str) -> str:
        assert self.sims is not None
        urls = {"midtrans": self.sims.midtrans.control_url,
                "xendit": self.sims.xendit.control_url, "moota": self.moota.control_url}
        return urls[provider]
