"""``python -m chaos.sim``: run the Midtrans- and Xendit-style simulators until interrupted.

    python -m chaos.sim [--midtrans-port 8101] [--xendit-port 8103] [--lunas-url URL]

Each simulator serves its provider API on its port and its control API (faults, payments, call
log) on the port after it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from chaos.sim.runner import start_simulators


async def _main(args: argparse.Namespace) -> None:
    sims = await start_simulators(
        midtrans_port=args.midtrans_port, midtrans_control_port=args.midtrans_port + 1,
        xendit_port=args.xendit_port, xendit_control_port=args.xendit_port + 1,
        lunas_url=args.lunas_url,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"midtrans sim: {sims.midtrans.data_url}  control: {sims.midtrans.control_url}")
    print(f"xendit sim:   {sims.xendit.data_url}  control: {sims.xendit.control_url}")
    try:
        await stop.wait()
    finally:
        await sims.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m chaos.sim", description=__doc__)
    p.add_argument("--midtrans-port", type=int, default=8101)
    p.add_argument("--xendit-port", type=int, default=8103)
    p.add_argument("--lunas-url", default=None,
                   help="where callbacks go, e.g. http://127.0.0.1:8000")
    args = p.parse_args()
    # Each simulator takes its port and the next (control): overlapping pairs would bind twice.
    if abs(args.midtrans_port - args.xendit_port) < 2:
        p.error(f"--midtrans-port {args.midtrans_port} and --xendit-port {args.xendit_port} "
                "overlap: each simulator also takes the port after its own (control)")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
