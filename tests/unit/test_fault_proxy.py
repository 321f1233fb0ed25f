"""The TCP fault proxy (chaos/proxy.py) forwards bytes faithfully and injects each fault it offers.

Real sockets on 127.0.0.1 throughout: an echo server upstream (and the shared Redis for one test),
clients that are plain asyncio streams, redis-py and httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import redis.asyncio as aioredis

from chaos.proxy import ControlServer, FaultProxy
from orchestrator.tls import default_trust

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    p = FaultProxy("127.0.0.1", 0, "127.0.0.1", echo_port)
    await p.start()
    yield p
    await p.stop()
    assert p.active == 0


@contextlib.asynccontextmanager
async def connected(proxy: FaultProxy) -> AsyncIterator[Stream]:
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def roundtrip(stream: Stream, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    reader, writer = stream
    writer.write(payload)
    await writer.drain()
    async with asyncio.timeout(timeout):
        return await reader.readexactly(len(payload))


async def timed_roundtrip(stream: Stream) -> float:
    start = time.monotonic()
    assert await roundtrip(stream) == b"ping"
    return time.monotonic() - start


async def assert_dropped(stream: Stream) -> None:
    """The proxy has closed this connection: reading ends in a reset or at end of stream."""
    reader, _ = stream
    async with asyncio.timeout(2):
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read(100) == b""


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# -- a plain pipe ----------------------------------------------------------------------------------

async def test_bytes_pass_through_unchanged_both_ways(proxy: FaultProxy) -> None:
    payload = os.urandom(1_000_000) + bytes(range(256))
    async with connected(proxy) as (reader, writer):
        writer.write(payload)
        writer.write_eof()  # the half-close reaches the echo server, which then hangs up
        async with asyncio.timeout(5):
            echoed = await reader.read(-1)
    assert echoed == payload
    await wait_until(lambda: proxy.active == 0)
    counters = proxy.state()["counters"]
    assert counters["accepted"] == 1
    assert counters["bytes_upstream"] == counters["bytes_downstream"] == len(payload)


async def test_a_real_redis_answers_ping_through_the_proxy() -> None:
    p = FaultProxy("127.0.0.1", 0, "127.0.0.1", 6379)
    await p.start()
    client = aioredis.Redis(host="127.0.0.1", port=p.port, socket_timeout=2)
    try:
        assert await client.ping() is True
        assert await client.echo("lunas fault proxy") == b"lunas fault proxy"
        assert p.active == 1
    finally:
        await client.aclose()
        await p.stop()
    assert p.state()["counters"]["bytes_downstream"] > 0


async def test_an_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # bound, never listening: connection refused
        p = FaultProxy("127.0.0.1", 0, "127.0.0.1", dead_port)
        await p.start()
        try:
            async with connected(p) as stream:
                await assert_dropped(stream)
            assert p.counters.upstream_failures == 1
        finally:
            await p.stop()


# -- faults ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("direction", "expected_s"),
                         [("both", 0.16), ("upstream", 0.08), ("downstream", 0.08)])
async def test_latency_adds_at_least_the_configured_delay(
        proxy: FaultProxy, direction: str, expected_s: float) -> None:
    # Bounds are relative to the injected delay, never a speed target: with the fault, at least
    # the delay; once cleared, less than one direction's delay (the fault no longer applies).
    async with connected(proxy) as stream:
        assert await roundtrip(stream) == b"ping"
        proxy.latency(80, jitter_ms=10, direction=direction)  # felt by the open connection
        assert await timed_roundtrip(stream) >= expected_s
        proxy.clear()
        assert await timed_roundtrip(stream) < 0.08
    assert proxy.counters.faults_applied["latency"] >= 1


async def test_latency_holds_each_chunk_once_rather_than_adding_up(proxy: FaultProxy) -> None:
    proxy.latency(100, direction="downstream")
    async with connected(proxy) as (reader, writer):
        start = time.monotonic()
        for _ in range(5):  # five separate chunks in flight at once
            writer.write(b"x" * 10)
            await writer.drain()
            await asyncio.sleep(0.01)
        async with asyncio.timeout(2):
            await reader.readexactly(50)
        # Five chunks each held 100 ms: at least one delay, and less than five (adding up).
        assert 0.1 <= time.monotonic() - start < 0.5


async def test_bandwidth_paces_the_stream(proxy: FaultProxy) -> None:
    proxy.bandwidth(20_000)  # paced in 1,000-byte slices
    async with connected(proxy) as stream:
        start = time.monotonic()
        assert await roundtrip(stream, b"b" * 8_000) == b"b" * 8_000
        assert time.monotonic() - start >= 0.35  # the eighth slice may leave after 7 x 50 ms
    assert proxy.counters.faults_applied["bandwidth"] >= 2


async def test_reset_breaks_open_connections_and_refuses_new_ones_until_cleared(
        proxy: FaultProxy) -> None:
    async with connected(proxy) as stream:
        assert await roundtrip(stream) == b"ping"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            await stream[0].read(100)
    async with connected(proxy) as stream:
        with pytest.raises((ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError)):
            await roundtrip(stream)
    assert proxy.counters.faults_applied["reset"] == 2

    proxy.clear()
    async with connected(proxy) as stream:
        assert await roundtrip(stream) == b"ping"
    assert proxy.state()["faults"]["reset"] is False


async def test_blackhole_swallows_requests_so_clients_time_out(proxy: FaultProxy) -> None:
    async with connected(proxy) as before:
        assert await roundtrip(before) == b"ping"
        proxy.blackhole()
        with pytest.raises(TimeoutError):
            await roundtrip(before, timeout=0.3)  # an open connection goes silent
        async with connected(proxy) as during:  # a new one is accepted, then nothing
            with pytest.raises(TimeoutError):
                await roundtrip(during, timeout=0.3)
            assert proxy.counters.bytes_swallowed >= 8

            proxy.clear()  # the holed connections lost bytes: they are reset, not resumed
            await assert_dropped(before)
            await assert_dropped(during)
    async with connected(proxy) as after:
        assert await roundtrip(after) == b"ping"


async def test_blackhole_holds_back_the_servers_hang_up(proxy: FaultProxy) -> None:
    async with connected(proxy) as (reader, writer):
        assert await roundtrip((reader, writer)) == b"ping"
        proxy.blackhole()
        writer.write_eof()  # the client's hang-up goes through; the echo server closes...
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(100)  # ...but the client never hears of it
        assert proxy.active == 1
        proxy.clear()
        await assert_dropped((reader, writer))


async def test_cut_drops_open_connections_and_keeps_accepting(proxy: FaultProxy) -> None:
    async with connected(proxy) as first, connected(proxy) as second:
        assert await roundtrip(first) == await roundtrip(second) == b"ping"
        proxy.cut_existing()
        with pytest.raises(ConnectionResetError):
            await first[0].read(100)
        await assert_dropped(second)
        async with connected(proxy) as fresh:
            assert await roundtrip(fresh) == b"ping"
    assert proxy.counters.faults_applied["cut"] == 2


async def test_a_gentle_cut_closes_with_end_of_stream(proxy: FaultProxy) -> None:
    async with connected(proxy) as stream:
        assert await roundtrip(stream) == b"ping"
        proxy.cut_existing(abrupt=False)
        async with asyncio.timeout(2):
            assert await stream[0].read(100) == b""


async def test_stop_closes_every_connection_and_leaves_no_tasks(echo_port: int) -> None:
    before = asyncio.all_tasks()
    p = FaultProxy("127.0.0.1", 0, "127.0.0.1", echo_port)
    await p.start()
    p.latency(5_000)  # a link asleep in a delay must not hold stop() up
    async with connected(p) as idle, connected(p) as busy:
        busy[1].write(b"stuck")
        await wait_until(lambda: p.active == 2)
        start = time.monotonic()
        await p.stop()
        assert time.monotonic() - start < 5  # not held up by the link's 5 s delay
        await assert_dropped(idle)
        await assert_dropped(busy)
    assert p.active == 0
    assert asyncio.all_tasks() - before <= {asyncio.current_task()}
    with pytest.raises(OSError):
        await asyncio.open_connection(*p.address)


# -- control plane ---------------------------------------------------------------------------------

async def test_control_api_round_trip(proxy: FaultProxy) -> None:
    control = ControlServer(proxy)
    await control.start()
    try:
        async with httpx.AsyncClient(verify=default_trust(),
                                     base_url=control.url, timeout=2) as http:
            state = (await http.get("/state")).json()
            assert state["listen"] == f"127.0.0.1:{proxy.port}"
            assert state["faults"]["latency"] is None

            r = await http.post("/faults", json={"kind": "latency", "ms": 50,
                                                 "direction": "downstream"})
            assert r.status_code == 200
            assert r.json()["faults"]["latency"] == {"ms": 50, "jitter_ms": 0,
                                                     "direction": "downstream"}
            async with connected(proxy) as stream:
                assert await timed_roundtrip(stream) >= 0.05
            await http.post("/faults", json={"kind": "bandwidth", "bytes_per_s": 1000})
            await http.post("/faults", json={"kind": "blackhole"})
            state = (await http.post("/faults", json={"kind": "reset"})).json()
            assert state["faults"] == {"latency": {"ms": 50, "jitter_ms": 0,
                                                   "direction": "downstream"},
                                       "bandwidth_bytes_per_s": 1000, "reset": True,
                                       "blackhole": True}

            state = (await http.delete("/faults", params={"kind": "reset"})).json()
            assert state["faults"]["reset"] is False and state["faults"]["blackhole"] is True
            state = (await http.delete("/faults")).json()
            assert state["faults"] == {"latency": None, "bandwidth_bytes_per_s": None,
                                       "reset": False, "blackhole": False}

            async with connected(proxy) as stream:
                assert await roundtrip(stream) == b"ping"
                state = (await http.post("/faults", json={"kind": "cut"})).json()
                await assert_dropped(stream)
            assert state["counters"]["faults_applied"]["cut"] == 1

            for bad in ({"kind": "flood"}, {"kind": "latency"},
                        {"kind": "reset", "ms": 1}, {"kind": "bandwidth", "bytes_per_s": 0}):
                assert (await http.post("/faults", json=bad)).status_code == 400
            assert (await http.delete("/faults", params={"kind": "cut"})).status_code == 400
    finally:
        await control.close()


async def test_command_line_runs_the_proxy_and_its_control_api(echo_port: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chaos.proxy", "--listen", "127.0.0.1:0",
        "--upstream", f"127.0.0.1:{echo_port}", "--control-port", "0",
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(15):
            banner = (await proc.stdout.readline()).decode()
        listen = banner.split()[2]  # "fault proxy HOST:PORT -> HOST:PORT  control: URL"
        control_url = banner.rsplit(" ", 1)[1].strip()
        async with httpx.AsyncClient(verify=default_trust(),
                                     base_url=control_url, timeout=2) as http:
            await http.post("/faults", json={"kind": "latency", "ms": 60})
            host, port = listen.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            assert await timed_roundtrip((reader, writer)) >= 0.12
            writer.close()
            assert (await http.get("/state")).json()["counters"]["accepted"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
