"""Rail availability for checkout pages: what works right now and, if not, why."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency

from orchestrator.api.openapi import Answer, contract
from orchestrator.bootstrap import Container
from orchestrator.services.availability import rails_for
from orchestrator.services.order_view import iso

RAILS = contract("merchant", {200: Answer(description="`data`: each rail and channel, "
                                                      "available or not and why")})

class RailsController(Controller):
    path = "/v1/rails"
    tags = ("rails",)

    @get("/", summary="Every rail and channel with whether it can take a payment now",
         responses=RAILS.responses, operation_class=RAILS.operation)
    async def list_rails(self, request: Request[Any, Any, Any],
                         container: NamedDependency[Container]) -> dict[str, Any]:
        merchant = await container.auth.merchant(request)
        data = await rails_for(container.db, container.issuance, container.router, merchant.id)
        return {"data": data, "checked_at": iso(container.clock.now())}
