"""Refuses, before a handler runs (and before authentication), request input that no column can
hold or that would exhaust a decoder: a NUL in the URL, a NUL or an unpaired surrogate in a JSON
body, a JSON body nested absurdly deep (``orchestrator/domain/text.py``). Each is a 400 naming
the place, where it would otherwise have been a 500 from PostgreSQL or a ``RecursionError``.
And a JSON body whose object names a member twice, which parsers read differently."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import FormMultiDict
from litestar.enums import RequestEncodingType
from litestar.params import BodyKwarg

from orchestrator.api.errors import BadRequest
from orchestrator.domain.text import MAX_NESTING, text_problem, unstorable

_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


async def refuse_unstorable_url(request: Request[Any, Any, Any]) -> None:
    """The URL alone: for the provider webhooks, which store every delivery as received and
    judge its body themselves (``services/provider_webhooks.py``), and the mutation push, which
    refuses what it cannot store and cleans free text (``reconciliation/moota.py``)."""
    scope = request.scope
    if (b"%00" in scope.get("raw_path", b"") or b"%00" in scope.get("query_string", b"")
            or text_problem(scope["path"])):
        raise BadRequest("the URL contains a NUL character (%00) or undecodable text",
                         code="unstorable_text")


async def refuse_unstorable_input(request: Request[Any, Any, Any]) -> None:
    await refuse_unstorable_url(request)
    if request.method not in _WITH_BODY:
        return
    # litestar decodes a handler's JSON ``data`` whatever Content-Type says, so a form header on
    # such a route is no reason to look away. A genuine form (the statement upload) is left to
    # its handler, which reads it after authentication, under the route's own size limit.
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(_FORMS) and not _decodes_json(request):
        return
    body = await request.body()  # cached: the handler's decoding reads the same bytes
    # Only an escape can put a NUL or a surrogate in valid JSON, and only brackets can nest it:
    # the usual body (a checkout, a webhook) skips this decoding.
    if b"\\u" in body or body.count(b"[") + body.count(b"{") > MAX_NESTING:
        try:
            decoded = msgspec.json.decode(body)
        except RecursionError:
            raise BadRequest(f"the JSON body nests deeper than {MAX_NESTING} levels",
                             code="malformed_json") from None
        except msgspec.DecodeError:
            return  # not JSON at all: the handler's own decoding says so, as it always has
        problem = unstorable(decoded)
        if problem:
            raise BadRequest(f"{problem}; such text cannot be stored",
                             code="unstorable_text")
    _refuse_repeated_names(body)


def _refuse_repeated_names(body: bytes) -> None:
    """Each object names each member once. The handlers' decoder keeps the last of two
    ``"amount"``s, many parsers the first: an order a merchant's gateway or log reads as
    Rp150.000 would be captured (and paid) as Rp1; a case resolved with two ``"action"``s would
    record the one the person's tool did not show. Which of two values counts is not for Lunas
    to guess. (A body nested too deep never gets here; one that is not JSON is left to the
    handler's decoding, which says so.)"""
    with contextlib.suppress(ValueError):  # JSONDecodeError, or a body that is not UTF-8
        json.loads(body, object_pairs_hook=_names_once)


def _names_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(names) != len(set(names)):
        repeated = next(name for name in names if names.count(name) > 1)
        raise BadRequest(f"'{repeated[:50]}' appears more than once in one object; send each "
                         "member once", code="repeated_name")
    return dict(pairs)


async def read_form(request: Request[Any, Any, Any]) -> FormMultiDict:
    """The request's form. litestar decodes each text field of a multipart form in the charset
    its part names, UTF-8 unless said, and lets the ``UnicodeDecodeError`` (or the
    ``LookupError`` of a charset Python does not know) out as a 500: the sender's bytes are at
    fault, so it is a 400 naming the problem."""
    try:
        return await request.form()
    except UnicodeDecodeError:
        pass
    except LookupError as exc:
        if isinstance(exc, KeyError | IndexError):
            raise  # a bug, not an unknown charset
    raise BadRequest("a form field is not text in its charset (UTF-8 unless the part names "
                     "another Python knows)", code="malformed_form")


def _decodes_json(request: Request[Any, Any, Any]) -> bool:
    """Whether the route's handler takes a body that litestar decodes as JSON: a ``data``
    parameter not declared as a form."""
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return False
    declared = data.kwarg_definition
    return not (isinstance(declared, BodyKwarg) and declared.media_type in (
        RequestEncodingType.MULTI_PART, RequestEncodingType.URL_ENCODED))
