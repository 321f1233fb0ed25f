"""The one place errors become HTTP responses: RFC 9457 problem+json with a reason to act on.

    DomainError            → 4xx per class (409 conflicts, 404 not found, 422 invalid, ...)
    BadRequest             → its status, 400 unless said (our own: a header or parameter is
                             missing or malformed, a credential refused, ...)
    litestar HTTPException → its status (400 validation, 404 route, 405, 413 too large, ...)
    RecursionError         → 400 malformed_json (a body nested past what a decoder can follow)
    database unreachable   → 503 with Retry-After (nothing was decided; a retry is safe)
    deadlock, serialization failure → 503 with Retry-After (rolled back; a retry is safe)
    anything else          → 500 with no detail and no stack trace; the log has the rest

A problem's ``title`` is its status's phrase in sentence case ("Bad request", "Not found"), and its
``code`` says which problem it is; a domain error's title names its kind ("Invalid order").
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from orchestrator.api.bad_request import BadRequest as BadRequest
from orchestrator.domain import errors as domain
from orchestrator.store.database import DEADLOCK_DETECTED, SERIALIZATION_FAILURE, rolled_back_by

log = logging.getLogger("lunas.api")

PROBLEM_JSON = "application/problem+json"

_STATUS: list[tuple[type[domain.DomainError], int, str]] = [
    (domain.NotFound, 404, "Not found"),
    (domain.IdempotencyKeyReused, 409, "Idempotency key reused"),
    (domain.IdempotencyKeyInFlight, 409, "Idempotency key in flight"),
    (domain.DuplicateMerchantOrder, 409, "Duplicate merchant order id"),
    (domain.AlreadyMatched, 409, "Already matched"),
    (domain.TransitionRefused, 409, "Not allowed in the order's current state"),
    (domain.InvalidOrder, 422, "Invalid order"),
    (domain.InvalidRequest, 422, "Invalid request"),
    (domain.StatementRejected, 422, "Statement rejected"),
    (domain.NoPayoutAccount, 422, "No payout account"),
    (domain.NotTheMerchantsAccount, 422, "Not the merchant's account"),
    (domain.UniqueCodesExhausted, 503, "Unique codes exhausted"),
    (domain.Conflict, 409, "Conflict"),
]
_STATUS_BY_CODE = {"no_route_available": (503, "No route available")}


def problem(
    request: Request[Any, Any, Any], *, status: int, title: str, detail: str, code: str,
    headers: dict[str, str] | None = None, **extra: Any,
) -> Response[dict[str, Any]]:
    body = {"type": f"/problems/{code}", "title": title, "status": status, "detail": detail,
            "code": code, "instance": request.url.path, **extra}
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON,
                    headers=headers or {})


def to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, domain.DomainError):
        return _domain_response(request, exc)
    if isinstance(exc, BadRequest):
        # A 401 titled "Bad request" would mislead a reader: each status its own phrase.
        return problem(request, status=exc.status, title=_title(exc.status),
                       detail=exc.detail, code=exc.code, headers=exc.headers)
    if isinstance(exc, ValidationException):
        if _body_missing(exc):
            return problem(request, status=400, title=_title(400), detail=BODY_REQUIRED,
                           code="malformed_request",
                           errors=[{"message": BODY_REQUIRED, "key": "data", "source": "body"}])
        return problem(request, status=400, title=_title(400),
                       detail=_validation_detail(exc), code="malformed_request",
                       errors=_jsonable(exc.extra))
    if isinstance(exc, RecursionError):
        # Only input nested past the interpreter's stack gets here (``input_guard`` refuses the
        # bodies it sees first): the body is at fault, not Lunas, and nothing was stored.
        return problem(request, status=400, title=_title(400),
                       detail="the request body nests too deep to be read",
                       code="malformed_json")
    if _rolled_back_by_a_conflict(exc):
        # PostgreSQL ended the transaction to break a deadlock (or a serialization conflict):
        # everything it did is undone, so the same request again is safe and will likely pass.
        log.warning("transaction rolled back by a conflict", extra={"path": request.url.path})
        return problem(request, status=503, title=_title(503),
                       detail="A concurrent change made Lunas undo this request; nothing was "
                              "stored. Send it again.",
                       code="retry", headers={"Retry-After": "1"})
    if _database_unreachable(exc):
        # The database (or its pool) is unreachable: nothing was decided, so a retry is safe;
        # say so fast instead of a 500 (captures are idempotent by key).
        log.warning("database unavailable", extra={"path": request.url.path})
        return problem(request, status=503, title=_title(503),
                       detail="Lunas cannot reach its database right now; retry shortly.",
                       code="database_unavailable", headers={"Retry-After": "5"})
    if isinstance(exc, HTTPException) and exc.status_code == 400 and (
            _sent_json(request) or isinstance(exc.__cause__, SerializationException)):
        # A body the JSON decoder refused, whatever the Content-Type said.
        return problem(request, status=400, title=_title(400),
                       detail=f"the request body is not valid JSON: {exc.detail}",
                       code="malformed_json")
    if isinstance(exc, HTTPException):
        return problem(request, status=exc.status_code, title=_title(exc.status_code),
                       detail=str(exc.detail), code=_title(exc.status_code).lower()
                       .replace(" ", "_"), headers=exc.headers)
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem(request, status=500, title=_title(500),
                   detail="Lunas failed to handle this request; it has been logged.",
                   code="internal_error")


_CONFLICT_SQLSTATES = frozenset({DEADLOCK_DETECTED, SERIALIZATION_FAILURE})


def _rolled_back_by_a_conflict(exc: Exception) -> bool:
    return rolled_back_by(exc, _CONFLICT_SQLSTATES)


def _database_unreachable(exc: Exception) -> bool:
    return (isinstance(exc, DBAPIError) and (exc.connection_invalidated or isinstance(
        exc, OperationalError | InterfaceError))) or isinstance(exc, ConnectionError)


def _domain_status(exc: domain.DomainError) -> tuple[int, str]:
    for cls, status, title in _STATUS:
        if isinstance(exc, cls):
            return status, title
    return _STATUS_BY_CODE.get(exc.code, (422, "Refused"))


def status_for(exc: Exception) -> int:
    """The HTTP status ``to_response`` answers ``exc`` with (for metrics that label a failure
    without building its response)."""
    if isinstance(exc, domain.DomainError):
        return _domain_status(exc)[0]
    if isinstance(exc, BadRequest):
        return exc.status
    if isinstance(exc, ValidationException | RecursionError):
        return 400
    if _rolled_back_by_a_conflict(exc) or _database_unreachable(exc):
        return 503
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 500


def _domain_response(
    request: Request[Any, Any, Any], exc: domain.DomainError
) -> Response[dict[str, Any]]:
    status, title = _domain_status(exc)
    extra: dict[str, Any] = {}
    if any(isinstance(exc, cls) for cls, _, _ in _STATUS):
        if isinstance(exc, domain.InvalidRequest) and exc.field:
            extra["field"] = exc.field
        if isinstance(exc, domain.DuplicateMerchantOrder):
            extra["existing_order_id"] = exc.existing_order_id
        if isinstance(exc, domain.StatementRejected) and exc.line is not None:
            extra["line"] = exc.line
        headers = {"Retry-After": "60"} if status == 503 else None
        if isinstance(exc, domain.IdempotencyKeyInFlight):
            headers = {"Retry-After": "1"}  # its answer comes within the capture's budget
        return problem(request, status=status, title=title, detail=exc.detail,
                       code=exc.code, headers=headers, **extra)
    if hasattr(exc, "routing"):
        extra["routing"] = exc.routing
    return problem(request, status=status, title=title, detail=exc.detail, code=exc.code,
                   headers={"Retry-After": "30"} if status == 503 else None, **extra)


def _sent_json(request: Request[Any, Any, Any]) -> bool:
    return "json" in request.headers.get("content-type", "")


BODY_REQUIRED = "a JSON body is required (Content-Type: application/json)"


def _body_missing(exc: ValidationException) -> bool:
    """No body at all: litestar reports the handler's missing ``data`` argument as the
    ``KeyError`` it caught, ``'data'``, which tells a client nothing."""
    return isinstance(exc.extra, list) and any(
        isinstance(e, dict) and e.get("source") == "body" and e.get("key") == "data"
        and e.get("message") == repr("data") for e in exc.extra)


def _validation_detail(exc: ValidationException) -> str:
    if isinstance(exc.extra, list) and exc.extra:
        first = exc.extra[0]
        if isinstance(first, dict) and "message" in first:
            return str(first["message"])
    return str(exc.detail)


def _jsonable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _title(status: int) -> str:
    """The status's phrase in sentence case: "Bad request", "Unsupported media type"."""
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.capitalize()
    except ValueError:
        return "Error"
