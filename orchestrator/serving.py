"""uvicorn servers that leave signal handling to the process that runs them, and the sockets
they listen on, bound before anything is started or announced.

``uvicorn.Server.serve`` installs its own SIGINT/SIGTERM handlers for as long as it runs. With the
api, the worker and (embedded) the simulators in one process, each server would steal the
signals from the others and from the process's own shutdown event; so ours take none, and the
process stops them all through one ``asyncio.Event``.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Generator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class CannotListen(Exception):
    """A port Lunas must listen on cannot be bound; the message says why and which setting
    moves it."""


def listen(host: str, port: int, *, setting: str) -> list[socket.socket]:
    """The api's listening sockets, bound now as asyncio's ``create_server`` binds them (each
    address ``host`` resolves to, ``SO_REUSEADDR``, IPv6 sockets v6-only) and handed to uvicorn.

    Bound before the banner, the worker or the simulators start: a second ``lunas run`` used to
    announce itself, start a worker, and only then die of uvicorn's "address already in use".
    Holding the socket from here on also leaves no moment for another process to take the port.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise CannotListen(f"cannot listen on {host}: no address is known by that name "
                           f"(LUNAS_HOST)") from error
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen()  # from now on a client waits in the backlog rather than being refused
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise CannotListen(why_cannot_listen(host, port, error, setting=setting)) from error
    return sockets


def why_cannot_listen(host: str, port: int, error: OSError, *, setting: str) -> str:
    """One line for an operator: where, why, and the setting that chooses another port."""
    where = f"cannot listen on {host}:{port}"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {host} is not an address of this machine (LUNAS_HOST)"
    reason = {errno.EADDRINUSE: "the port is in use (is another lunas running?)",
              errno.EACCES: "not permitted (ports below 1024 need privileges)",
              }.get(error.errno or 0, error.strerror or str(error))
    return f"{where}: {reason}; choose another port with {setting}"
