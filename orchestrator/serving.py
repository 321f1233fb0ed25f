"""uvicorn servers that leave signal handling to the process that runs them.

``uvicorn.Server.serve`` installs its own SIGINT/SIGTERM handlers for as long as it runs. With the
api, the worker and (embedded) the simulators in one process, each server would steal the
signals from the others and from the process's own shutdown event; so ours take none, and the
process stops them all through one ``asyncio.Event``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
