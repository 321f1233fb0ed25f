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
        self._answering = False

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
        self._answering = True
        config = uvicorn.Config(self._gate, host=self.host, port=self.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=1,
                                interface="asgi3")  # a bound method: auto would guess ASGI 2
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
        self._answering = False
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=5)
        # uvicorn shuts down the connections it knows of, but one accepted just before the
        # listener closed can register itself after that sweep and go on serving keep-alive
        # requests: a provider "down" that still answers (a CI run saw a feed poll succeed
        # through its fault). Abort whatever is left once pending accepts have run.
        for _ in range(3):
            await asyncio.sleep(0)
            for connection in list(server.server_state.connections):
                connection.transport.abort()

    async def _gate(self, scope: Any, receive: Any, send: Any) -> None:
        """The app, unless the server has been stopped: then no request on any connection still
        open gets an answer from the provider, only a 503 that closes the connection."""
        if scope["type"] == "http" and not self._answering:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"connection", b"close"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def serving(*servers: SwitchableServer) -> AsyncIterator[None]:
    for s in servers:
        await s.start()
    try:
        yield
    finally:
        await asyncio.gather(*(s.close() for s in servers))
