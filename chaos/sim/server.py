"""Serving a simulator: a data-plane ASGI app that can stop listening (provider down, connection
refused) and start again on the same port, beside a control-plane app that always answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from orchestrator.serving import EmbeddedServer


def bind_socket(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # accepted sockets inherit proto 0 otherwise; Nagle then adds ~40 ms to every response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # SO_REUSEPORT lets the listener share the port with the placeholder that reserves it.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class SwitchableServer:
    """A uvicorn server on a fixed port whose listener can be closed and reopened.

    A bound but never-listening placeholder socket holds the port for the server's whole life:
    while the listener is closed the kernel still refuses connections (RST, "provider down"),
    and no other socket (an outgoing connection's ephemeral port, under load) can take the port,
    so the listener can always come back on it.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.host, self.port = app, host, port
        self._placeholder: socket.socket | None = None  # reserved on first start()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        if self._placeholder is None:
            self._placeholder = bind_socket(self.host, self.port)
            self.port = int(self._placeholder.getsockname()[1])
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=1)
        server = EmbeddedServer(config)
        sock = bind_socket(self.host, self.port)
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        for _ in range(500):
            if server.started:
                break
            if self._task.done():
                await self._task
            await asyncio.sleep(0.01)
        self._server = server

    async def close(self) -> None:
        """Stop for good: the listener and the port reservation."""
        await self.stop()
        self.release_port()

    def release_port(self) -> None:
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    async def stop(self) -> None:
        """Close the listener and drop open connections: clients now get connection refused."""
        server, task = self._server, self._task
        self._server, self._task = None, None
        if server is None or task is None:
            return
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=5)


@contextlib.asynccontextmanager
async def serving(*servers: SwitchableServer) -> AsyncIterator[None]:
    for s in servers:
        await s.start()
    try:
        yield
    finally:
        for s in servers:
            await s.close()
