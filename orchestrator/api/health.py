"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import contextlib
from typing import Any

import sqlalchemy as sa
from litestar import Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST

from orchestrator.api.openapi import RETRY_AFTER, Answer, Contract
from orchestrator.bootstrap import Container

READY = Contract(answers={
    200: Answer(description="The database answers"),
    # Not problem+json: a load balancer's probe reads the status, a person the body.
    503: Answer(description="Not ready: `database` names what failed", headers=(RETRY_AFTER,),
                media_type="application/json")})


@get("/healthz", tags=["health"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics", tags=["health"], summary="Prometheus metrics", include_in_schema=False)
async def metrics(container: NamedDependency[Container]) -> Response[bytes]:
    # A database outage must not hide the other metrics; the sampled gauges then freeze, and
    # lunas_state_sampled_timestamp_seconds (LunasStateSamplerStale) says so.
    with contextlib.suppress(Exception):
        await container.state_sampler.refresh()
    return Response(container.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@get("/readyz", tags=["health"], summary="The process can serve: the database answers",
     responses=READY.responses, operation_class=READY.operation)
async def readyz(container: NamedDependency[Container]) -> Response[dict[str, Any]]:
    try:
        async with container.db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure means not ready; say which
        return Response({"status": "unavailable", "database": type(exc).__name__},
                        status_code=503, headers={"Retry-After": "5"})
    return Response({"status": "ok", "database": "ok"})
