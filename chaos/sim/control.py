"""The fault-injection part of a simulator's control API, shared by every simulator.

    POST /faults      add a fault (``Fault.from_json``; kind "down" closes the data port)
    GET /faults       the faults in force
    DELETE /faults    clear them (``?channel=`` for one channel); a "down" data port reopens
    GET /calls        what reached the data plane, by channel, operation and outcome
    GET /calls/log    every request with its time (``?operation=status&since=<unix time>``)
    DELETE /calls     reset those counts and the log
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from litestar import Request, Response, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromQuery

from chaos.sim.faults import Fault, FaultBook


class FaultControlled(Protocol):
    faults: FaultBook

    @property
    def data_listening(self) -> bool: ...

    async def add_fault(self, fault: Fault) -> None: ...

    async def clear_faults(self, channel: str | None) -> None: ...


def fault_routes(sim: FaultControlled) -> list[HTTPRouteHandler]:
    def state() -> dict[str, Any]:
        return {"faults": len(sim.faults.faults), "data_listening": sim.data_listening}

    @post("/faults", status_code=200)
    async def add_fault(request: Request[Any, Any, Any]) -> Response[Any]:
        try:
            body = json.loads(await request.body() or b"{}")
            fault = Fault.from_json(body)
        except (KeyError, TypeError, ValueError) as exc:
            return Response({"error": f"bad fault: {exc}"}, status_code=400)
        await sim.add_fault(fault)
        return Response(state())

    @get("/faults")
    async def list_faults() -> list[dict[str, Any]]:
        return [{"kind": f.kind.value, "channel": f.channel, "operation": f.operation,
                 "status": f.status, "count": f.count} for f in sim.faults.faults]

    @delete("/faults", status_code=200)
    async def clear_faults(request: Request[Any, Any, Any]) -> dict[str, Any]:
        await sim.clear_faults(request.query_params.get("channel"))
        return state()

    return [add_fault, list_faults, clear_faults, *call_routes(sim.faults)]


def call_routes(faults: FaultBook) -> list[HTTPRouteHandler]:
    """``GET /calls``, ``GET /calls/log`` and ``DELETE /calls`` over one simulator's book."""

    @get("/calls")
    async def calls() -> list[dict[str, Any]]:
        return faults.call_counts()

    @get("/calls/log")
    async def call_log(operation: FromQuery[str | None] = None,
                       since: FromQuery[float] = 0.0) -> list[dict[str, Any]]:
        return faults.request_log(operation, since)

    @delete("/calls", status_code=200)
    async def reset_calls() -> dict[str, Any]:
        faults.reset_counts()
        return {}

    return [calls, call_log, reset_calls]
