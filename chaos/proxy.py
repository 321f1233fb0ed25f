"""A TCP fault proxy: connection-level chaos (latency, resets, blackholes) in front of any server.

Toxiproxy is not available here, so this is the small part of it we need. The proxy forwards bytes
both ways without looking at them, so it sits as well in front of PostgreSQL and Redis as in front
of a simulator's HTTP port::

    proxy = FaultProxy("127.0.0.1", 0, "127.0.0.1", 6379)
    await proxy.start()              # clients now use proxy.port
    proxy.latency(200, jitter_ms=50, direction="downstream")
    proxy.reset()                    # every connection gets a RST, and so does every new one
    proxy.clear()                    # back to a plain pipe
    await proxy.stop()

Faults, all set at run time and cleared by ``clear()`` (or ``clear(kind)``):

    latency    every chunk is held ``ms`` (+ uniform ``0..jitter_ms``) before it is passed on, in
               one direction or both; existing connections feel it from their next chunk
    bandwidth  chunks are paced to ``bytes_per_s``
    reset      open connections are aborted with a RST; new ones are accepted and reset at once
    blackhole  nothing is passed on, nothing answers: bytes are read and dropped (the server's
               hang-up is held back too), so clients time out. A client's hang-up is still passed
               on, so the proxy never keeps an upstream connection its client abandoned. When the
               hole is cleared, every connection that lost bytes in it is reset, since the stream
               it carried is no longer whole; untouched connections carry on.
    cut        one-shot: drop the open connections (RST, or FIN with ``abrupt=False``) and keep
               accepting new ones, which is what a server restart looks like to its clients

The control plane (``control_app``) is a small HTTP API, so an experiment in another process can
drive the proxy:

    GET /state        listen and upstream addresses, faults in force, counters
    POST /faults      {"kind": "latency", "ms": 100, "jitter_ms": 0, "direction": "both"}
                      {"kind": "bandwidth", "bytes_per_s": 10000}
                      {"kind": "reset"} | {"kind": "blackhole"} | {"kind": "cut", "abrupt": true}
    DELETE /faults    clear them all (``?kind=latency`` for one kind)

and ``python -m chaos.proxy --listen 127.0.0.1:6380 --upstream 127.0.0.1:6379 --control-port 6390``
runs both until interrupted. Everything the proxy owns (listener, connections, their tasks) is
closed by ``stop()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import random
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar, Request, Response, delete, get, post

from chaos.sim.server import SwitchableServer

__all__ = [
    "ControlServer", "Direction", "FaultKind", "FaultProxy", "Faults", "Latency", "ProxyCounters",
    "apply_fault", "control_app", "main",
]

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
QUEUE_CHUNKS = 16  # per direction: how far reading may run ahead of a delayed writer
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


class Direction(enum.StrEnum):
    BOTH = "both"
    UPSTREAM = "upstream"  # client -> server
    DOWNSTREAM = "downstream"  # server -> client


class FaultKind(enum.StrEnum):
    LATENCY = "latency"
    BANDWIDTH = "bandwidth"
    RESET = "reset"
    BLACKHOLE = "blackhole"
    CUT = "cut"


@dataclass(frozen=True, kw_only=True)
class Latency:
    ms: float
    jitter_ms: float = 0.0
    direction: Direction = Direction.BOTH

    def applies(self, direction: Direction) -> bool:
        return self.direction in (Direction.BOTH, direction)


@dataclass(frozen=True, kw_only=True)
class Faults:
    """The faults in force, replaced as a whole on each change so a pump reads a consistent set."""

    latency: Latency | None = None
    bandwidth_bytes_per_s: int | None = None
    reset: bool = False
    blackhole: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "latency": None if self.latency is None else {
                "ms": self.latency.ms, "jitter_ms": self.latency.jitter_ms,
                "direction": self.latency.direction.value},
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "reset": self.reset,
            "blackhole": self.blackhole,
        }


@dataclass(kw_only=True)
class ProxyCounters:
    accepted: int = 0
    bytes_upstream: int = 0  # forwarded client -> server
    bytes_downstream: int = 0  # forwarded server -> client
    bytes_swallowed: int = 0  # dropped by a blackhole, either direction
    upstream_failures: int = 0  # the server could not be reached: the client was reset
    faults_applied: Counter[str] = field(default_factory=Counter)
    """Per kind: connections reset, cut or holed; chunks delayed or paced."""


@dataclass(eq=False)
class _Link:
    """One client connection and (once connected) its upstream twin."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    holed: bool = False  # lost bytes (or a hang-up) to a blackhole

    def drop(self, *, abrupt: bool = True) -> None:
        """Close both ends now and stop the link's task (from outside that task)."""
        self.close_ends(abrupt=abrupt)
        if self.task is not None:
            self.task.cancel()

    def close_ends(self, *, abrupt: bool) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _close(writer, abrupt=abrupt)


def _close(writer: asyncio.StreamWriter, *, abrupt: bool) -> None:
    if not abrupt:
        writer.close()
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    # Nagle would hold small writes for ~40 ms and blur every latency measurement.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_FAULT_FIELD = {FaultKind.LATENCY: "latency", FaultKind.BANDWIDTH: "bandwidth_bytes_per_s",
                FaultKind.RESET: "reset", FaultKind.BLACKHOLE: "blackhole"}  # cut: one-shot


class FaultProxy:
    """Forwards TCP connections from ``listen`` to ``upstream``, injecting the faults in force."""

    def __init__(self, listen_host: str, listen_port: int, upstream_host: str,
                 upstream_port: int, *, connect_timeout_s: float = 5.0,
                 rng: random.Random | None = None) -> None:
        self.listen_host, self.port = listen_host, listen_port
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.connect_timeout_s = connect_timeout_s
        self.faults = Faults()
        self.counters = ProxyCounters()
        self._rng = rng or random.Random()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_host, self.port

    @property
    def active(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every connection; returns once their tasks have ended."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        links = list(self._links)
        for link in links:
            link.drop()
        await asyncio.gather(*(lk.task for lk in links if lk.task), return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    # -- faults ---------------------------------------------------------------------------------

    def latency(self, ms: float, jitter_ms: float = 0.0,
                direction: Direction | str = Direction.BOTH) -> None:
        if ms < 0 or jitter_ms < 0:
            raise ValueError("latency and jitter must not be negative")
        lat = Latency(ms=ms, jitter_ms=jitter_ms, direction=Direction(direction))
        self.faults = dataclasses.replace(self.faults, latency=lat)

    def bandwidth(self, bytes_per_s: int) -> None:
        if bytes_per_s <= 0:
            raise ValueError("bandwidth must be positive")
        self.faults = dataclasses.replace(self.faults, bandwidth_bytes_per_s=bytes_per_s)

    def reset(self) -> None:
        self.faults = dataclasses.replace(self.faults, reset=True)
        self._drop_all(FaultKind.RESET, abrupt=True)

    def blackhole(self) -> None:
        self.faults = dataclasses.replace(self.faults, blackhole=True)

    def cut_existing(self, *, abrupt: bool = True) -> None:
        self._drop_all(FaultKind.CUT, abrupt=abrupt)

    def clear(self, kind: FaultKind | str | None = None) -> None:
        kind = None if kind is None else FaultKind(kind)
        was_holed = self.faults.blackhole
        if kind is None:
            self.faults = Faults()
        else:
            field_name = _FAULT_FIELD.get(kind)
            if field_name is None:
                raise ValueError(f"{kind} is one-shot: there is nothing to clear")
            default = getattr(Faults(), field_name)
            self.faults = dataclasses.replace(self.faults, **{field_name: default})
        if was_holed and not self.faults.blackhole:
            for link in [lk for lk in self._links if lk.holed]:
                link.drop()

    def _drop_all(self, kind: FaultKind, *, abrupt: bool) -> None:
        for link in list(self._links):
            self.counters.faults_applied[kind.value] += 1
            link.drop(abrupt=abrupt)

    def state(self) -> dict[str, Any]:
        c = self.counters
        return {
            "listen": f"{self.listen_host}:{self.port}",
            "upstream": f"{self.upstream_host}:{self.upstream_port}",
            "listening": self._server is not None,
            "faults": self.faults.as_json(),
            "counters": {
                "accepted": c.accepted, "active": self.active,
                "bytes_upstream": c.bytes_upstream, "bytes_downstream": c.bytes_downstream,
                "bytes_swallowed": c.bytes_swallowed, "upstream_failures": c.upstream_failures,
                "faults_applied": dict(c.faults_applied),
            },
        }

    # -- data plane -----------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain function, not a coroutine: asyncio would report a cancelled handler task as an
        # error, and the proxy cancels link tasks on every reset, cut and stop.
        self.counters.accepted += 1
        if self.faults.reset:
            self.counters.faults_applied[FaultKind.RESET.value] += 1
            _close(writer, abrupt=True)
            return
        _nodelay(writer)
        link = _Link(client=writer)
        self._links.add(link)
        link.task = asyncio.create_task(self._run(link, reader))
        link.task.add_done_callback(lambda _: self._links.discard(link))

    async def _run(self, link: _Link, client: asyncio.StreamReader) -> None:
        try:
            if self.faults.blackhole:
                await self._swallow(link, client)
                return
            upstream = await self._connect(link)
            if upstream is None:
                return
            up_reader, up_writer = upstream
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(link, client, up_writer, Direction.UPSTREAM))
                tg.create_task(self._pump(link, up_reader, link.client, Direction.DOWNSTREAM))
            if link.holed and self.faults.blackhole:
                # The server hung up inside the hole: the client must not hear of it. clear()
                # (which resets holed links) or stop() cancels this wait.
                await asyncio.get_running_loop().create_future()
            await self._close_gracefully(link)
        except* OSError:
            pass  # one end was reset or vanished: the finally passes the reset on to the other
        except* Exception:
            log.exception("fault proxy link failed")
        finally:
            link.close_ends(abrupt=True)  # no-op after a graceful close

    async def _connect(
            self, link: _Link) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port)
        except (OSError, TimeoutError):
            self.counters.upstream_failures += 1
            return None
        _nodelay(writer)
        link.upstream = writer
        return reader, writer

    async def _swallow(self, link: _Link, client: asyncio.StreamReader) -> None:
        """A connection accepted inside the blackhole: read and drop until the client hangs up."""
        link.holed = True
        self.counters.faults_applied[FaultKind.BLACKHOLE.value] += 1
        while data := await client.read(CHUNK):
            self.counters.bytes_swallowed += len(data)

    async def _pump(self, link: _Link, src: asyncio.StreamReader,
                    dst: asyncio.StreamWriter, direction: Direction) -> None:
        """Copy one direction. Reading runs ahead of writing, so a delay holds each chunk for
        its own ``ms`` (as on a slow link) rather than adding up across chunks."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write_side(link, queue, dst, direction))
            while True:
                data = await src.read(CHUNK)
                await queue.put((self._due(direction), data))
                if not data:
                    return  # b"" marks the end of the stream for the write side

    def _due(self, direction: Direction) -> float:
        lat = self.faults.latency
        if lat is None or not lat.applies(direction):
            return 0.0
        self.counters.faults_applied[FaultKind.LATENCY.value] += 1
        return time.monotonic() + (lat.ms + self._rng.uniform(0, lat.jitter_ms)) / 1000

    async def _write_side(self, link: _Link, queue: asyncio.Queue[tuple[float, bytes]],
                          dst: asyncio.StreamWriter, direction: Direction) -> None:
        while True:
            due, data = await queue.get()
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if self.faults.blackhole and (data or direction is Direction.DOWNSTREAM):
                self._hole(link, len(data))
                if not data:
                    return  # the server's hang-up is held back with its bytes
                continue
            if not data:
                if dst.can_write_eof():
                    dst.write_eof()
                return
            await self._write(dst, data, direction)

    def _hole(self, link: _Link, n: int) -> None:
        if not link.holed:
            self.counters.faults_applied[FaultKind.BLACKHOLE.value] += 1
        link.holed = True
        self.counters.bytes_swallowed += n

    async def _write(self, dst: asyncio.StreamWriter, data: bytes, direction: Direction) -> None:
        rate = self.faults.bandwidth_bytes_per_s
        step = len(data) if rate is None else max(1, rate // 20)  # paced in ~50 ms slices
        if rate is not None:
            self.counters.faults_applied[FaultKind.BANDWIDTH.value] += 1
        for start in range(0, len(data), step):
            piece = data[start:start + step]
            dst.write(piece)
            await dst.drain()
            if direction is Direction.UPSTREAM:
                self.counters.bytes_upstream += len(piece)
            else:
                self.counters.bytes_downstream += len(piece)
            if rate is not None:
                await asyncio.sleep(len(piece) / rate)

    async def _close_gracefully(self, link: _Link) -> None:
        for writer in (link.client, link.upstream):
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


# -- control plane -------------------------------------------------------------------------------

_FAULT_FIELDS: dict[FaultKind, frozenset[str]] = {
    FaultKind.LATENCY: frozenset({"ms", "jitter_ms", "direction"}),
    FaultKind.BANDWIDTH: frozenset({"bytes_per_s"}),
    FaultKind.RESET: frozenset(),
    FaultKind.BLACKHOLE: frozenset(),
    FaultKind.CUT: frozenset({"abrupt"}),
}


def apply_fault(proxy: FaultProxy, body: Mapping[str, Any]) -> None:
    """Apply one fault given as JSON; ``ValueError``/``KeyError``/``TypeError`` when malformed."""
    kind = FaultKind(body["kind"])
    unknown = set(body) - {"kind"} - _FAULT_FIELDS[kind]
    if unknown:
        raise ValueError(f"unknown fields for {kind.value}: {sorted(unknown)}")
    if kind is FaultKind.LATENCY:
        proxy.latency(float(body["ms"]), float(body.get("jitter_ms", 0.0)),
                      Direction(body.get("direction", Direction.BOTH)))
    elif kind is FaultKind.BANDWIDTH:
        proxy.bandwidth(int(body["bytes_per_s"]))
    elif kind is FaultKind.RESET:
        proxy.reset()
    elif kind is FaultKind.BLACKHOLE:
        proxy.blackhole()
    else:
        proxy.cut_existing(abrupt=bool(body.get("abrupt", True)))


def control_app(proxy: FaultProxy) -> Litestar:
    @get("/state")
    async def state() -> dict[str, Any]:
        return proxy.state()

    @post("/faults", status_code=200)
    async def add_fault(request: Request[Any, Any, Any]) -> Response[Any]:
        try:
            body = json.loads(await request.body() or b"{}")
            apply_fault(proxy, body)
        except (KeyError, TypeError, ValueError) as exc:
            return Response({"error": f"bad fault: {exc}"}, status_code=400)
        return Response(proxy.state())

    @delete("/faults", status_code=200)
    async def clear_faults(request: Request[Any, Any, Any]) -> Response[Any]:
        try:
            proxy.clear(request.query_params.get("kind"))
        except ValueError as exc:
            return Response({"error": str(exc)}, status_code=400)
        return Response(proxy.state())

    return Litestar(route_handlers=[state, add_fault, clear_faults], openapi_config=None)


class ControlServer(SwitchableServer):
    """The control API of one proxy on its own port (``url``), in the proxy's event loop."""

    def __init__(self, proxy: FaultProxy, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(control_app(proxy), host, port)


# -- command line ---------------------------------------------------------------------------------

def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _serve(args: argparse.Namespace) -> None:
    proxy = FaultProxy(*args.listen, *args.upstream)
    await proxy.start()
    control = ControlServer(proxy, args.listen[0], args.control_port)
    try:
        await control.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"fault proxy {proxy.listen_host}:{proxy.port} -> "
              f"{proxy.upstream_host}:{proxy.upstream_port}  control: {control.url}", flush=True)
        await stop.wait()
    finally:
        await control.close()
        await proxy.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m chaos.proxy",
                                description="TCP fault proxy with an HTTP control API.")
    p.add_argument("--listen", type=_host_port, required=True, help="HOST:PORT (port 0 = free)")
    p.add_argument("--upstream", type=_host_port, required=True, help="HOST:PORT")
    p.add_argument("--control-port", type=int, default=0,
                   help="control API port on the listen host (0 = free)")
    asyncio.run(_serve(p.parse_args(argv)))


if __name__ == "__main__":
    main()
