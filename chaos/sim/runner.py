"""Start both provider simulators together, for ``python -m chaos.sim``, ``lunas run`` and tests.

Real-time retry schedules (Midtrans: minutes to hours) are scaled down so a demo or a test sees
redeliveries within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from chaos.sim.midtrans import MidtransSim
from chaos.sim.xendit import XenditSim
from orchestrator.settings import ProviderSettings


@dataclass(kw_only=True)
class Simulators:
    midtrans: MidtransSim
    xendit: XenditSim

    async def stop(self) -> None:
        # Together: each uvicorn server notices it should exit only at its next 0.1 s tick.
        await asyncio.gather(self.xendit.stop(), self.midtrans.stop())


async def start_simulators(
    *, credentials: ProviderSettings | None = None, host: str = "127.0.0.1",
    midtrans_port: int = 0, midtrans_control_port: int = 0, xendit_port: int = 0,
    xendit_control_port: int = 0, lunas_url: str | None = None,
) -> Simulators:
    creds = credentials or ProviderSettings()  # the same development keys Lunas defaults to
    midtrans = MidtransSim(server_key=creds.midtrans_server_key, host=host,
                           data_port=midtrans_port, control_port=midtrans_control_port)
    xendit = XenditSim(secret_key=creds.xendit_secret_key,
                       callback_token=creds.xendit_callback_token,
                       callback_url=f"{lunas_url}/v1/webhooks/xendit" if lunas_url else None,
                       retry_scale=1 / 3600, host=host, data_port=xendit_port,
                       control_port=xendit_control_port)
    await midtrans.start()
    try:
        await xendit.start()
    except BaseException:
        await midtrans.stop()
        raise
    return Simulators(midtrans=midtrans, xendit=xendit)


@contextlib.asynccontextmanager
async def simulators(**kwargs: object) -> AsyncIterator[Simulators]:
    sims = await start_simulators(**kwargs)  # type: ignore[arg-type]
    try:
        yield sims
    finally:
        await sims.stop()
