"""Traces (OpenTelemetry): one trace per order flow, from capture through provider calls to paid.

How the pieces join into one trace:

- **api** — every HTTP request runs in a server span (``request_spans``); an incoming W3C
  ``traceparent`` is continued. Capture, routing and each provider call are its descendants.
- **outbox hand-off** — ``outbox.add`` (a producer span) serialises the current context as a W3C
  ``traceparent`` into each row's ``trace_context``; the relay runs each event in a consumer span
  whose parent is extracted from the row (``handling``). A row written with tracing off has no
  context, and its event starts a trace of its own.
- **order flow** — capture also keeps its context on the order (``orders.trace_context``), so
  evidence that arrives on its own (a provider webhook, a verifier's status read, a bank
  mutation) rejoins the order's trace: ``flow_span`` makes the webhook receipt and the settlement
  children of the capture, linked to the work that found the evidence.

Attributes name providers, operations, routes, outcomes, ids and HTTP statuses; never account or
VA numbers, amounts paid by whom, keys or tokens. Exception messages are not recorded (a
provider's message may quote what it was sent), only the error type.

Off by default: with no OTLP endpoint (``TelemetrySettings``) no provider is installed, every
span helper hands back one shared no-op context, and nothing is serialised into rows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import httpx
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from orchestrator.rails.base import (
    ChargeRequest,
    Instrument,
    MoreRequestsNeeded,
    PaymentProvider,
    ProviderStatus,
    Rail,
    Route,
)
from orchestrator.rails.errors import RailError, Refused
from orchestrator.settings import TelemetrySettings

if TYPE_CHECKING:  # the ASGI types only: the CLI and the worker never load litestar for tracing
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

Carrier = Mapping[str, str]
"""A serialised span context: ``{"traceparent": ..., "tracestate": ...}`` (W3C Trace Context)."""
Attributes = Mapping[str, AttributeValue]

INSTRUMENTATION = "lunas"
# W3C Trace Context whatever OTEL_PROPAGATORS says: rows outlive a process's configuration, so the
# format stored in them must not depend on it.
_PROPAGATOR = TraceContextTextMapPropagator()
_OFF: contextlib.nullcontext[Span] = contextlib.nullcontext(trace.INVALID_SPAN)


class _State:
    tracer: trace.Tracer | None = None
    """None: tracing is off."""


_provider_call: ContextVar[Span | None] = ContextVar("lunas_provider_call", default=None)


# -- set-up -------------------------------------------------------------------------------------


def configure(settings: TelemetrySettings) -> TracerProvider | None:
    """Install the process's tracer provider: an OTLP/HTTP exporter when an endpoint is set, else
    nothing (tracing off). Returns the provider so the caller can flush it at exit."""
    endpoint = settings.traces_endpoint
    if not endpoint:
        use(None)
        return None
    # Imported here: the exporter pulls in protobuf and requests, which an untraced process
    # need not load.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)  # libraries that trace share it
    use(provider)
    return provider


def use(provider: trace.TracerProvider | None) -> None:
    """Record Lunas's spans with ``provider`` from now on; None turns tracing off. Tests install
    a provider with an in-memory exporter here (the global provider can be set once only)."""
    _State.tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION)


def enabled() -> bool:
    return _State.tracer is not None


# -- spans --------------------------------------------------------------------------------------


def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL,
         attributes: Attributes | None = None) -> contextlib.AbstractContextManager[Span]:
    """A child of the current span (or a new trace); the no-op context when tracing is off."""
    tracer = _State.tracer
    if tracer is None:
        return _OFF
    return _run(tracer, name, kind=kind, attributes=attributes)


def handling(event_type: str, carrier: Carrier | None,
             attributes: Attributes) -> contextlib.AbstractContextManager[Span]:
    """The relay's span for one event: its parent is the context stored in the event's row (a
    new trace when the row has none)."""
    tracer = _State.tracer
    if tracer is None:
        return _OFF
    return _run(tracer, f"outbox.handle {event_type}", context=extract(carrier),
                kind=SpanKind.CONSUMER, attributes=attributes)


def flow_span(name: str, origin: Carrier | None, *, kind: SpanKind = SpanKind.INTERNAL,
              attributes: Attributes | None = None) -> contextlib.AbstractContextManager[Span]:
    """A span in the order's own trace (``origin``: the context capture stored on the order).

    When the current span already belongs to that trace, a plain child. Otherwise (a webhook is a
    new HTTP request; the verifier and reconciliation run on their own) a child of the order's
    origin, linked to the current span so the work that found the evidence stays reachable.
    Without an origin (captured with tracing off), a plain child of the current span."""
    tracer = _State.tracer
    if tracer is None:
        return _OFF
    parent = extract(origin) if origin else None
    here = trace.get_current_span().get_span_context()
    there = trace.get_current_span(parent).get_span_context() if parent else None
    if there is None or not there.is_valid or there.trace_id == here.trace_id:
        return _run(tracer, name, kind=kind, attributes=attributes)
    links: Sequence[Link] = [Link(here)] if here.is_valid else ()
    return _run(tracer, name, context=parent, kind=kind, links=links, attributes=attributes)


@contextlib.contextmanager
def _run(tracer: trace.Tracer, name: str, **options: Any) -> Iterator[Span]:
    """A current span that records a failure by its type only: exception messages (a
    database error quotes the values it refused, a provider its request) stay out of traces."""
    with tracer.start_as_current_span(name, record_exception=False,
                                      set_status_on_exception=False, **options) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_attribute("error.type", type(exc).__name__)
            fail(current, type(exc).__name__)
            raise


def fail(span: Span, error_type: str) -> None:
    """Mark ``span`` failed with the error's type (never its message: that can carry a payload
    or SQL parameters, and spans leave the process unredacted)."""
    span.set_status(Status(StatusCode.ERROR, error_type[:200]))


# -- propagation --------------------------------------------------------------------------------


def carrier() -> dict[str, str] | None:
    """The current context serialised for a row (None when tracing is off or no span is
    current, so untraced rows stay NULL)."""
    if _State.tracer is None:
        return None
    out: dict[str, str] = {}
    _PROPAGATOR.inject(out)
    return out or None


def extract(stored: Carrier | None) -> Context:
    """A context from a stored carrier; an empty one (a new trace) when there is none."""
    if not stored:
        return Context()
    return _PROPAGATOR.extract({k: v for k, v in stored.items() if isinstance(v, str)},
                               context=Context())


def ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, for logs; None when there is none."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# -- api: one server span per request -------------------------------------------------------------


def request_spans(app: ASGIApp) -> ASGIApp:
    """ASGI middleware (litestar ``middleware=``): a server span per HTTP request, named by the
    route template (``POST /v1/orders``), with the response status. A pass-through when off."""

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        tracer = _State.tracer
        if tracer is None or cast(str, scope["type"]) != "http":  # ScopeType is a str enum
            await app(scope, receive, send)
            return
        wanted = {b"traceparent", b"tracestate"}
        incoming = {k.decode("latin-1"): v.decode("latin-1")
                    for k, v in scope.get("headers", ()) if k in wanted}
        method = str(scope.get("method", ""))
        route = str(scope.get("path_template") or scope.get("path", ""))
        with tracer.start_as_current_span(
            f"{method} {route}", context=extract(incoming), kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        ) as current:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    current.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        fail(current, f"HTTP {status}")
                await send(message)

            await app(scope, receive, send_traced)

    return traced


# -- provider calls ---------------------------------------------------------------------------


async def note_http_status(response: httpx.Response) -> None:
    """httpx response hook: the HTTP status of a provider's answer, on its call span."""
    current = _provider_call.get()
    if current is not None:
        current.set_attribute("http.response.status_code", response.status_code)


@contextlib.contextmanager
def _provider_span(provider: str, operation: str, route: Route) -> Iterator[Span]:
    tracer = _State.tracer
    if tracer is None:
        yield trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(
        f"provider.{operation}", kind=SpanKind.CLIENT, record_exception=False,
        set_status_on_exception=False,
        attributes={"lunas.provider": provider, "lunas.operation": operation,
                    "lunas.route": route.key},
    ) as current:
        token = _provider_call.set(current)
        try:
            yield current
        except RailError as exc:
            current.set_attribute("lunas.outcome", _outcome_of(exc))
            current.set_attribute("error.type", type(exc).__name__)
            if not isinstance(exc, Refused):  # a business refusal is an answer, not a fault
                fail(current, type(exc).__name__)
            raise
        except MoreRequestsNeeded:  # an answer, read again with a larger allowance
            current.set_attribute("lunas.outcome", "more_requests_needed")
            raise
        except BaseException as exc:  # cancelled: the capture budget ran out mid-call
            current.set_attribute("lunas.outcome", "cancelled" if isinstance(
                exc, asyncio.CancelledError) else "error")
            current.set_attribute("error.type", type(exc).__name__)
            fail(current, type(exc).__name__)
            raise
        finally:
            _provider_call.reset(token)


def _outcome_of(exc: RailError) -> str:
    """``OutcomeUnknown`` → ``outcome_unknown``, ``TransientBeforeSend`` → ..., in snake case."""
    name = type(exc).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class TracedProvider:
    """A ``PaymentProvider`` whose create / status / cancel each run in a client span.

    Wraps an adapter in ``bootstrap`` so adapters stay thin (STYLE rule 8) and every caller
    (router, status reads, cancels) is covered at once."""

    def __init__(self, inner: PaymentProvider) -> None:
        self._inner = inner
        self.name = inner.name

    def idempotent_create(self, rail: Rail) -> bool:
        return self._inner.idempotent_create(rail)

    def channels(self, rail: Rail) -> tuple[str, ...]:
        return self._inner.channels(rail)

    def status_requests(self, provider_ref: str | None, route: Route) -> int:
        return self._inner.status_requests(provider_ref, route)

    async def create(self, request: ChargeRequest) -> Instrument:
        with _provider_span(self.name, "create", request.route) as current:
            instrument = await self._inner.create(request)
            current.set_attribute("lunas.outcome", "created")
            current.set_attribute("lunas.attempt_id", request.reference)
            return instrument

    async def status(self, reference: str, provider_ref: str | None, route: Route, *,
                     requests_allowed: int | None = None,
                     payment_known: bool = False,
                     expires_at: datetime | None = None) -> ProviderStatus:
        with _provider_span(self.name, "status", route) as current:
            current.set_attribute("lunas.attempt_id", reference)
            answer = await self._inner.status(reference, provider_ref, route,
                                              requests_allowed=requests_allowed,
                                              payment_known=payment_known,
                                              expires_at=expires_at)
            current.set_attribute("lunas.outcome", answer.status.value)
            return answer

    async def cancel(self, reference: str, provider_ref: str | None, route: Route) -> None:
        with _provider_span(self.name, "cancel", route) as current:
            current.set_attribute("lunas.attempt_id", reference)
            await self._inner.cancel(reference, provider_ref, route)
            current.set_attribute("lunas.outcome", "cancelled")


def order_attributes(order_id: str | None = None, attempt_id: str | None = None,
                     **more: Any) -> dict[str, AttributeValue]:
    """Span attributes for ids, leaving out what is unknown."""
    out: dict[str, AttributeValue] = {}
    if order_id:
        out["lunas.order_id"] = order_id
    if attempt_id:
        out["lunas.attempt_id"] = attempt_id
    for key, value in more.items():
        if value is not None:
            out[f"lunas.{key}"] = value
    return out
