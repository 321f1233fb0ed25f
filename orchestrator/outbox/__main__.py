"""``python -m orchestrator.outbox``: one outbox relay worker delivering merchant webhooks.

Configured from ``LUNAS_*`` variables through ``Settings.from_env()``; the worker id (the lease
owner written on claimed rows) is ``LUNAS_WORKER_ID`` or ``<hostname>-<pid>``. SIGTERM or SIGINT
stops it cleanly: the batch in hand finishes and is recorded, unstarted events are handed back.
A SIGKILL loses nothing either: its claimed events are reclaimed when their lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import httpx

from orchestrator.domain.clock import SystemClock
from orchestrator.notify.delivery import MerchantWebhookHandler, merchant_webhook_handlers
from orchestrator.outbox.relay import Relay
from orchestrator.settings import Settings
from orchestrator.store.engine import create_engine

log = logging.getLogger("orchestrator.outbox")

_WORKER_ID_MAX = 64


def default_worker_id(configured: str = "") -> str:
    """``LUNAS_WORKER_ID`` (``Settings.worker_id``) if set, else ``<hostname>-<pid>``, trimmed to
    fit ``lease_owner``."""
    given = configured.strip()
    if given:
        return given[:_WORKER_ID_MAX]
    suffix = f"-{os.getpid()}"
    return socket.gethostname()[: _WORKER_ID_MAX - len(suffix)] + suffix


async def run_relay_process(
    settings: Settings, stop: asyncio.Event, *, worker_id: str | None = None
) -> None:
    """Build the relay with the merchant webhook handlers and run it until ``stop`` is set.

    Owns (and closes) its engine and HTTP client, so it can run beside other loops.
    """
    engine = create_engine(settings.database)
    try:
        async with httpx.AsyncClient(
            timeout=settings.webhooks.timeout.total_seconds(), follow_redirects=False
        ) as http:
            handler = MerchantWebhookHandler(engine, http, settings.webhooks.timeout)
            relay = Relay(
                engine,
                merchant_webhook_handlers(handler),
                settings.outbox,
                worker_id or default_worker_id(settings.worker_id),
                SystemClock(),
            )
            log.info("outbox relay started", extra={"worker_id": relay.worker_id})
            await relay.run(stop)
            log.info("outbox relay stopped", extra={"worker_id": relay.worker_id})
    finally:
        await engine.dispose()


async def _main() -> None:
    settings = Settings.from_env()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_relay_process(settings, stop)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_main())


if __name__ == "__main__":
    main()
