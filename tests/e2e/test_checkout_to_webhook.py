"""End to end, as a checkout frontend and a finance person use Lunas: the real ``lunas`` processes
(api and worker) on PostgreSQL, driven over HTTP; the merchant's webhook endpoint is a real server.

capture → transfer instructions → statement import → paid → exactly one signed ``order.paid``,
saying when it was paid as the order API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.notify.signing import verify
from orchestrator.tls import default_trust
from tests.conftest import create_database, drop_database
from tests.support import bca_statement, free_port, order_body

LUNAS = str(Path(sys.executable).with_name("lunas"))


class WebhookReceiver:
    """A merchant's endpoint: records every delivery with its headers and raw body."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.decode().split("\r\n")[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.deliveries.append((headers, body))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()


def lunas(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run([LUNAS, *args], env=env, check=True, capture_output=True, text=True,
                         timeout=60)
    return dict(json.loads(out.stdout)) if "--json" in args else {}


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    url = await create_database("lunas_e2e")
    yield url
    await drop_database(url)


@contextlib.contextmanager
def running(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([LUNAS, *args], env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.seek(0)
            output = log.read().decode(errors="replace")
            if "Traceback" in output:
                print(f"--- lunas {' '.join(args)} stderr ---\n{output}")


async def wait_until_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(verify=default_trust()) as c:
        for _ in range(150):
            if proc.poll() is not None:
                raise AssertionError(f"api exited with {proc.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await c.get(f"{base}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("api did not become ready")


async def test_a_frontend_and_finance_take_an_order_from_capture_to_a_signed_webhook(
    pg_database: str,
) -> None:
    receiver = WebhookReceiver()
    await receiver.start()
    port, worker_metrics = free_port(), free_port()
    env = {**os.environ, "LUNAS_DATABASE_URL": pg_database, "LUNAS_PORT": str(port),
           "LUNAS_OUTBOX_POLL": "0.05", "LUNAS_SWEEP_INTERVAL": "0.2",
           "LUNAS_WORKER_METRICS_PORT": str(worker_metrics)}
    try:
        lunas(env, "migrate")
        with ThreadPoolExecutor(2) as pool:  # two operators at once, each their own `lunas`
            made = pool.submit(lunas, env, "merchants", "create", "Toko Batik", "--json",
                               "--webhook-url", f"http://127.0.0.1:{receiver.port}/hooks/lunas",
                               "--account", "bca:0123456789:TOKO BATIK")
            finance = lunas(env, "ops-tokens", "create", "finance", "--actor", "e2e", "--json")
            shop = made.result()
        base = f"http://127.0.0.1:{port}"
        with running(env, "api") as api, running(env, "worker"):
            await wait_until_ready(base, api)
            async with httpx.AsyncClient(verify=default_trust(), base_url=base, timeout=30) as c:
                created = await c.post(
                    "/v1/orders", json=order_body("BATIK-001", 325_000),
                    headers={"Authorization": f"Bearer {shop['api_key']}",
                             "Idempotency-Key": str(uuid.uuid4())})
                assert created.status_code == 201, created.text
                order = created.json()
                pay = order["payment"]
                assert (pay["bank"], pay["account_number"]) == ("bca", "0123456789")

                statement = bca_statement("0123456789", [
                    (datetime.now(UTC), f"TRSF E-BANKING CR {pay['transfer_amount']}.00 ANDI",
                     pay["transfer_amount"], "CR")])
                imported = await c.post(
                    "/v1/mutations/statements",
                    headers={"Authorization": f"Bearer {finance['token']}"},
                    files={"file": ("mutasi.csv", statement, "text/csv")},
                    data={"bank": "bca", "account_number": "0123456789"})
                assert imported.status_code == 201 and imported.json()["matched"] == 1

                read = await c.get(f"/v1/orders/{order['id']}",
                                   headers={"Authorization": f"Bearer {shop['api_key']}"})
                assert read.json()["status"] == "paid"
                settled = read.json()

            for _ in range(100):
                if any(json.loads(b)["type"] == "order.paid" for _, b in receiver.deliveries):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # give a duplicate, if there were one, time to arrive
            # each process is its own scrape target
            async with httpx.AsyncClient(verify=default_trust()) as c:
                from_worker = (await c.get(f"http://127.0.0.1:{worker_metrics}/metrics")).text
                from_api = (await c.get(f"{base}/metrics")).text
            assert "lunas_verification_reads_total" in from_worker
            assert "lunas_outbox_backlog" not in from_worker  # sampled state: the api's alone
            assert "lunas_outbox_backlog 0.0" in from_api  # the paid event was delivered
    finally:
        await receiver.stop()

    paid = [(h, b) for h, b in receiver.deliveries if json.loads(b)["type"] == "order.paid"]
    assert len(paid) == 1, receiver.deliveries
    headers, body = paid[0]
    event = json.loads(body)
    assert event["data"]["order_id"] == order["id"]
    assert event["data"]["status"] == "paid"
    # When it was paid and its deadline, in UTC and in WIB, exactly as the order API says.
    assert {k: event["data"][k] for k in ("amount", "expires_at", "paid_at", "display")} == {
        k: settled[k] for k in ("amount", "expires_at", "paid_at", "display")}
    assert event["data"]["paid_at"].endswith("Z")
    assert event["data"]["display"]["paid_at"].endswith(" WIB")
    assert headers["lunas-event-id"] == event["id"]
    now_ts = int(datetime.now(UTC).timestamp())
    assert verify(shop["webhook_secret"], body, headers["lunas-signature"], now_ts)
    assert not verify("whsec_wrong", body, headers["lunas-signature"], now_ts)
