"""``python -m orchestrator.outbox``: one outbox relay worker delivering merchant webhooks.

Configured from ``LUNAS_*`` variables through ``Settings.from_env()``; the worker id (the lease
owner written on claimed rows) is ``LUNAS_WORKER_ID`` or ``<hostname>-<pid>``. SIGTERM or SIGINT
stops it cleanly: it claims nothing more, and the handlers in flight finish and are recorded.
A SIGKILL loses nothing either: its claimed events are reclaimed when their lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from orchestrator.settings import Settings, SettingsError

log = logging.getLogger("orchestrator.outbox")

_WORKER_ID_MAX = 64


async def run_relay_process(
    settings: Settings, stop: asyncio.Event, *, worker_id: str | None = None
) -> None:
    """Run one relay, with every handler a worker has, until ``stop`` is set."""
    from dataclasses import replace

    from orchestrator.bootstrap import build
    from orchestrator.worker import run_relay

    if worker_id:
        settings = replace(settings, worker_id=worker_id)
    container = build(settings)
    try:
        await run_relay(container, stop)
    finally:
        await container.close()


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_relay_process(settings, stop)


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # refuse to start, saying why (as ``lunas`` does)
        sys.exit(f"orchestrator.outbox: {exc}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_main(settings))


if __name__ == "__main__":
    main()
