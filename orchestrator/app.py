"""``create_app``: the litestar application over a built ``Container``."""

from __future__ import annotations

from litestar import Litestar, Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components

from orchestrator import heap
from orchestrator.api.dead_letters import DeadLettersController
from orchestrator.api.errors import to_response
from orchestrator.api.health import healthz, metrics, readyz
from orchestrator.api.input_guard import refuse_unstorable_input
from orchestrator.api.mutations import MutationsController
from orchestrator.api.openapi import SECURITY_SCHEMES
from orchestrator.api.ops import OpsController
from orchestrator.api.order_record import OrderRecordController
from orchestrator.api.orders import OrdersController
from orchestrator.api.rails import RailsController
from orchestrator.api.reconciliation import ReconciliationController
from orchestrator.api.reviews import ReviewsController
from orchestrator.api.webhooks import WebhooksController
from orchestrator.bootstrap import Container
from orchestrator.telemetry import tracing
from statuspage.app import StatusOpsController, StatusPageController


def create_app(container: Container, *, close_on_shutdown: bool = True,
               freeze_startup_heap: bool = False) -> Litestar:
    def provide_container() -> Container:
        return container

    async def startup() -> None:
        await container.start()
        if freeze_startup_heap:
            # 50-80 ms pauses off the status page's p99 at 200 requests/s (bench/statuspage.py).
            heap.freeze_startup_heap()

    async def shutdown() -> None:
        if close_on_shutdown:
            await container.close()

    http = container.settings.http
    # Statement files are the one large body; everything else is refused above max_body_bytes
    # before it is read, webhooks from strangers included.
    uploads = Router(path="/", route_handlers=[MutationsController],
                     request_max_body_size=http.max_upload_bytes)
    return Litestar(
        route_handlers=[OrdersController, uploads, ReconciliationController,
                        OpsController, DeadLettersController, OrderRecordController,
                        RailsController, ReviewsController, WebhooksController,
                        StatusPageController, StatusOpsController, healthz, readyz, metrics],
        dependencies={"container": Provide(provide_container, sync_to_thread=False)},
        exception_handlers={Exception: to_response},
        # A server span per request, when tracing is on as the app is built (no layer at all
        # otherwise: the capture path pays nothing for tracing it does not do).
        middleware=[tracing.request_spans] if tracing.enabled() else [],
        openapi_config=OpenAPIConfig(
            title="Lunas", version="0.1.0", path="/schema",
            components=Components(security_schemes=dict(SECURITY_SCHEMES))),
        request_max_body_size=http.max_body_bytes,
        before_request=refuse_unstorable_input,
        on_startup=[startup],
        on_shutdown=[shutdown],
        debug=False,
    )
