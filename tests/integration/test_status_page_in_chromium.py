"""The status page as a customer's phone shows it: rendered by headless Chromium (no JavaScript
needed) when healthy, with one rail down, during maintenance, and for an order lookup.

Screenshots land in ``test-artifacts/statuspage/`` on every run; with ``LUNAS_UPDATE_DOCS=1``
they are also copied to ``docs/statuspage/`` for the README.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.bootstrap import Container
from orchestrator.worker import status_recorder
from tests.integration.test_status_page import SLOW, Page, status_stack
from tests.support import new_ops_token

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "statuspage"
DOCS = ROOT / "docs" / "statuspage"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is installed by `make test` (scripts/ensure-services.sh)")


async def chromium(url: str, name: str, tmp: Path) -> str:
    """Screenshot ``url`` at a phone's width and return the DOM Chromium built from it."""
    assert CHROMIUM is not None, "chromium missing: `make services` installs it"
    shot = ARTIFACTS / f"{name}.png"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    common = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
              "--disable-javascript", "--hide-scrollbars", "--no-first-run",
              f"--user-data-dir={tmp / ('profile-' + name)}", "--window-size=412,1600"]
    for extra in ([f"--screenshot={shot}"], ["--dump-dom"]):
        proc = await asyncio.create_subprocess_exec(
            *common, *extra, url, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, f"chromium failed on {url}"
    width, height = png_size(shot)
    assert (width, height) == (412, 1600), (width, height)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank
    if os.environ.get("LUNAS_UPDATE_DOCS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, DOCS / shot.name)
    return out.decode()


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


async def _settle(p: Page, seconds: int) -> None:
    recorder = status_recorder(p.container)
    now = p.clock.now()
    await recorder.evaluate(now)
    await recorder.evaluate(now + timedelta(seconds=seconds))
    p.clock.advance(timedelta(seconds=seconds))
    p.container.status_page.snapshots.invalidate()


async def test_the_status_page_renders_in_chromium(container: Container, tmp_path: Path) -> None:
    async with status_stack(container, run_the_worker=False, page=SLOW) as p:
        base = str(p.client.base_url)
        await _settle(p, 1)
        dom = await chromium(f"{base}/status", "healthy", tmp_path)
        assert "Semua sistem berjalan normal" in dom
        assert 'data-status="operational"' in dom and "<script" not in dom

        # QRIS down on both of its providers.
        for key in ("qris:midtrans:qris", "qris:xendit:qris"):
            p.container.breakers.get(key).force_open("provider outage")
        await _settle(p, 61)
        dom = await chromium(f"{base}/status", "rail-down", tmp_path)
        assert 'data-status="major_outage"' in dom and "Gangguan pada QRIS" in dom
        dom = await chromium(f"{base}/status?lang=en", "rail-down-en", tmp_path)
        assert "Disruption affecting QRIS" in dom
        for key in ("qris:midtrans:qris", "qris:xendit:qris"):
            p.container.breakers.get(key).release_force("recovered")
        await _settle(p, 301)

        token = await new_ops_token(p.container)
        now = p.clock.now()
        r = await p.client.post("/v1/ops/maintenance", json={
            "route": "ewallet:midtrans:*", "starts_at": (now - timedelta(minutes=1)).isoformat(),
            "ends_at": (now + timedelta(hours=2)).isoformat(),
            "reason": "GoPay maintenance by Midtrans"},
            headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        await _settle(p, 1)
        dom = await chromium(f"{base}/status", "maintenance", tmp_path)
        assert 'data-status="under_maintenance"' in dom
        assert "Pemeliharaan terjadwal: GoPay" in dom
        assert "GoPay maintenance by Midtrans" not in dom  # the operator's reason stays inside

        body = {"merchant_order_id": f"SP-{uuid.uuid4().hex[:8]}", "amount": 249_000,
                "rail": "manual_transfer",
                "customer": {"name": "Siti", "email": "siti@example.co.id",
                             "phone": "081234567891"}}
        r = await p.client.post("/v1/orders", json=body, headers={
            **p.shop.headers, "Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 201, r.text
        found = await p.client.post("/status/orders", data={
            "code": r.json()["id"], "contact": "siti@example.co.id"})
        assert found.status_code == 200
        # Chromium cannot POST a form from the command line: it renders the page the server
        # answered, saved as a file.
        page = tmp_path / "lookup.html"
        page.write_text(found.text, encoding="utf-8")
        dom = await chromium(page.as_uri(), "order-lookup", tmp_path)
        assert 'data-state="awaiting_payment"' in dom and "Menunggu pembayaran" in dom
