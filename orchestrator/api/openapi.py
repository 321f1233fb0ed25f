"""What the OpenAPI document says about the answers handlers build themselves.

litestar documents a handler's declared status, its parameters and its own validation error shape
(``{"status_code", "detail", "extra"}``). Lunas answers otherwise: a capture may be a 202, a
repeated ``Idempotency-Key`` replays the stored reply, headers the handler reads by hand
(``Idempotency-Key``) or sets (``Location``, ``Retry-After``) are invisible to litestar, and every
error is RFC 9457 problem+json (``api/errors.py``). A ``Contract`` states all of it for one
handler; its answers replace litestar's guesses, so the document lists exactly those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
    SecurityScheme,
)
from litestar.openapi.spec import Parameter as OpenAPIParameter

from orchestrator.api.errors import PROBLEM_JSON


class Problem(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Every error answer (RFC 9457 problem details). `code` says which problem it is, for a
    program; `detail` says what to do about it, for a person."""

    type: str
    """``/problems/<code>``."""
    title: str
    status: int
    detail: str
    code: str
    instance: str
    """The path the request was sent to."""
    field: str | None = None
    """The request field to change (422 ``invalid_order``, ``invalid_request``)."""
    existing_order_id: str | None = None
    """The order that already has this ``merchant_order_id`` (409
    ``duplicate_merchant_order_id``)."""
    routing: dict[str, Any] | None = None
    """Which routes were tried and why none served (503 ``no_route_available``)."""
    errors: list[dict[str, Any]] | None = None
    """Each field a malformed body got wrong (400 ``malformed_request``)."""
    line: int | None = None
    """The statement line that was refused (422 ``statement_rejected``)."""


@dataclass(frozen=True, kw_only=True)
class Header:
    name: str
    description: str
    max_length: int | None = None
    required: bool = True
    """Whether every answer of its status carries it (a request header: every request)."""

    def schema(self) -> Schema:
        return Schema(type=OpenAPIType.STRING, min_length=1 if self.max_length else None,
                      max_length=self.max_length)


@dataclass(frozen=True, kw_only=True)
class Answer:
    """One status a handler answers with: a body (a ``Problem`` from 400 up) and headers."""

    description: str
    headers: tuple[Header, ...] = ()
    body: Any = dict[str, Any]
    media_type: str | None = None
    """Unless said: problem+json from 400 up, JSON below."""


def problem(description: str, *headers: Header) -> Answer:
    return Answer(description=description, headers=headers, body=Problem)


@dataclass(frozen=True, kw_only=True)
class Contract:
    """Everything a handler can answer, and the headers it reads that litestar cannot see."""

    answers: Mapping[int, Answer]
    request_headers: tuple[Header, ...] = ()
    security: str | None = None
    """The name of the scheme in ``SECURITY_SCHEMES`` the endpoint authenticates with."""
    operation: type[Operation] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "operation", _operation_class(self))

    @property
    def responses(self) -> dict[int, ResponseSpec]:
        return {status: ResponseSpec(
            data_container=a.body, description=a.description, generate_examples=False,
            media_type=a.media_type or (PROBLEM_JSON if status >= 400 else "application/json"))
            for status, a in self.answers.items()}


def _operation_class(contract: Contract) -> type[Operation]:
    """An ``Operation`` that adds what ``ResponseSpec`` cannot say: request and response
    headers. (litestar builds the operation itself; ``operation_class`` is its hook.)"""

    @dataclass
    class Documented(Operation):
        def __post_init__(self) -> None:
            self.parameters = [*(self.parameters or []), *(
                OpenAPIParameter(name=h.name, param_in="header", required=h.required,
                                 description=h.description, schema=h.schema())
                for h in contract.request_headers)] or None
            if contract.security is not None:
                self.security = [{contract.security: []}]
            for status, answer in contract.answers.items():
                response = (self.responses or {}).get(str(status))
                if isinstance(response, OpenAPIResponse) and answer.headers:
                    response.headers = {h.name: OpenAPIHeader(description=h.description,
                                                              schema=h.schema(),
                                                              required=h.required)
                                        for h in answer.headers}

    return Documented


IDEMPOTENCY_KEY = Header(
    name="Idempotency-Key", max_length=255,
    description="One key per order, sent once. The same key with the same body again answers "
                "what the first request answered (Idempotent-Replayed: true); with another body, "
                "409 idempotency_key_reused. A key may be any text of 1-255 characters, e.g. a "
                "UUID.")
LOCATION = Header(name="Location", description="Where to read the order: /v1/orders/{id}.")
REPLAYED = Header(name="Idempotent-Replayed", required=False,
                  description="`true` when this is the stored reply to an earlier request "
                              "with the same Idempotency-Key; absent otherwise.")
RETRY_AFTER = Header(name="Retry-After", description="Seconds to wait before trying again.")
WWW_AUTHENTICATE = Header(name="WWW-Authenticate", description='Bearer realm="lunas"')
WWW_AUTHENTICATE_OPS = Header(name="WWW-Authenticate", description='Bearer realm="lunas-ops"')

BAD_REQUEST = problem(
    "The request cannot be read: malformed_json, malformed_request (a field of the wrong "
    "type; `errors` lists them), unstorable_text (a NUL or undecodable text), repeated_name "
    "(an object of the JSON body names a member twice), or a header or parameter this "
    "endpoint needs (its own code).")
UNAUTHORIZED = problem("No API key, or an unknown or revoked one (unauthorized).",
                       WWW_AUTHENTICATE)
OPS_UNAUTHORIZED = problem("No ops token, or an unknown or revoked one (unauthorized).",
                           WWW_AUTHENTICATE_OPS)
FORBIDDEN = problem("The ops token lacks the scope this endpoint needs (forbidden).")
TOO_LARGE = problem("The body is larger than Lunas accepts (LUNAS_MAX_BODY_BYTES).")
UNAVAILABLE = problem(
    "Nothing was decided; the same request again is safe. database_unavailable (Retry-After "
    "5), retry (a concurrent change undid it; Retry-After 1)", RETRY_AFTER)


def contract(caller: str | None, answers: Mapping[int, Answer], *, body: bool = False,
             request_headers: tuple[Header, ...] = ()) -> Contract:
    """``answers`` over what every endpoint may answer: 400 for input no column can hold
    (``input_guard``) or a malformed body, 503 when the database is out of reach, 401 (and 403
    for ops) by ``caller`` ("merchant", "ops" or None: the endpoint checks its own credential),
    413 for an endpoint that reads a ``body``."""
    common: dict[int, Answer] = {400: BAD_REQUEST, 503: UNAVAILABLE}
    if caller == "merchant":
        common[401] = UNAUTHORIZED
    elif caller == "ops":
        common |= {401: OPS_UNAUTHORIZED, 403: FORBIDDEN}
    if body:
        common[413] = TOO_LARGE
    return Contract(answers=dict(sorted({**common, **answers}.items())),
                    request_headers=request_headers,
                    security={"merchant": MERCHANT_KEY, "ops": OPS_TOKEN}.get(caller or ""))


MERCHANT_KEY, OPS_TOKEN = "merchantKey", "opsToken"
SECURITY_SCHEMES = {
    MERCHANT_KEY: SecurityScheme(
        type="http", scheme="bearer",
        description="The merchant's API key (`lunas merchants create` prints it once)."),
    OPS_TOKEN: SecurityScheme(
        type="http", scheme="bearer",
        description="A person's ops token (`lunas ops-tokens create`), with the scope the "
                    "endpoint needs: `reconciliation` or `ops`."),
}
"""For ``OpenAPIConfig(components=...)`` (app.py): what ``Contract.security`` names."""
