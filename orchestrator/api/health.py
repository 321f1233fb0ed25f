"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from litestar import Response, get
from litestar.di import NamedDependency

from orchestrator.bootstrap import Container


@get("/healthz", tags=["health"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", tags=["health"], summary="The process can serve: the database answers")
async def readyz(container: NamedDependency[Container]) -> Response[dict[str, Any]]:
    try:
        async with container.db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure means not ready; say which
        return Response({"status": "unavailable", "database": type(exc).__name__},
                        status_code=503, headers={"Retry-After": "5"})
    return Response({"status": "ok", "database": "ok"})
