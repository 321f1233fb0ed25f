"""Who is calling: a merchant (API key) or a person running Lunas (ops token with scopes).

Keys are looked up by hash. A short in-process cache keeps the lookup off the capture hot path;
a revoked key stops working within ``ttl`` seconds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from orchestrator.api.bad_request import BadRequest
from orchestrator.store.database import Database
from orchestrator.store.merchants import (
    Merchant,
    OpsPrincipal,
    merchant_for_key,
    ops_principal_for_token,
)

if TYPE_CHECKING:
    from litestar import Request


def bearer(request: Request[Any, Any, Any]) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BadRequest("send 'Authorization: Bearer <key>'", status=401, code="unauthorized",
                         headers={"WWW-Authenticate": 'Bearer realm="lunas"'})
    return token.strip()


class Authenticator:
    def __init__(self, db: Database, *, ttl: float = 10.0) -> None:
        self._db, self._ttl = db, ttl
        self._merchants: dict[str, tuple[float, Merchant]] = {}

    async def merchant(self, request: Request[Any, Any, Any]) -> Merchant:
        key = bearer(request)
        cached = self._merchants.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._db.read() as conn:
            found = await merchant_for_key(conn, key)
        if found is None:
            raise BadRequest("unknown or revoked API key", status=401, code="unauthorized",
                             headers={"WWW-Authenticate": 'Bearer realm="lunas"'})
        if len(self._merchants) > 10_000:
            self._merchants.clear()
        self._merchants[key] = (now + self._ttl, found)
        return found

    async def ops(self, request: Request[Any, Any, Any], scope: str, *also: str
                  ) -> OpsPrincipal:
        """The person behind the ops token, refused unless it holds ``scope`` (or one of
        ``also``: a read both finance and SREs work from)."""
        token = bearer(request)
        async with self._db.read() as conn:
            principal = await ops_principal_for_token(conn, token)
        if principal is None:
            raise BadRequest("unknown or revoked ops token", status=401, code="unauthorized",
                             headers={"WWW-Authenticate": 'Bearer realm="lunas-ops"'})
        if not {scope, *also} & set(principal.scopes):
            named = " or ".join(f"'{s}'" for s in (scope, *also))
            raise BadRequest(f"this ops token lacks the {named} scope", status=403,
                             code="forbidden")
        return principal
