"""Moota API v2 mutation feed (RAILS.md §3.1): ``GET /mutation`` by date window, page by page.

Items are parsed by the push parser (``orchestrator.reconciliation.moota``): a list item and a
webhook item are the same mutation object (RAILS.md §3.2), so both paths yield ``MootaMutation``
with the same ``mutation_id`` and therefore the same fingerprint.

Errors are mapped into the rail error tree (``orchestrator.rails.errors``), so the feed's breaker
counts them like any provider call:

    httpx ConnectError / ConnectTimeout / PoolTimeout   TransientBeforeSend (never sent)
    other timeouts, a dropped connection, 5xx            Unavailable (a read: safe to repeat)
    401 / 403                                            Misconfigured (the token is wrong)
    429                                                  Throttled
    other 4xx, a body that is not a page of mutations    Unavailable

An item of a good page that is not a mutation Lunas can read (no id, an amount that is not one)
does not fail the page: it comes back in ``FeedPage.unreadable``, so one odd item cannot stall
the feed; the poller decides what to do with it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx

from orchestrator.rails.errors import (
    Misconfigured,
    RailError,
    Throttled,
    TransientBeforeSend,
    Unavailable,
)
from orchestrator.reconciliation.moota import (
    MootaMutation,
    UnreadableItem,
    decode_moota_json,
    read_moota_items,
)

PROVIDER = "moota"
OPERATION = "list_mutations"
MAX_PER_PAGE = 100


@dataclass(frozen=True, kw_only=True)
class FeedPage:
    items: list[MootaMutation]
    current_page: int
    last_page: int
    unreadable: tuple[UnreadableItem, ...] = ()


class MootaFeedClient:
    def __init__(self, *, base_url: str, token: str, client: httpx.AsyncClient,
                 timeout: float, per_page: int = MAX_PER_PAGE) -> None:
        self._base_url = base_url.rstrip("/")
        self._token, self._client, self._timeout = token, client, timeout
        self._per_page = max(1, min(per_page, MAX_PER_PAGE))

    async def list_mutations(self, start: date, end: date, page: int = 1) -> FeedPage:
        """One page of the mutations dated ``start``..``end`` (WIB calendar days, inclusive)."""
        params = {"start_date": start.isoformat(), "end_date": end.isoformat(),
                  "page": str(page), "per_page": str(self._per_page)}
        try:
            # httpx bounds each phase, not the call: twice the timeout bounds a trickling answer.
            async with asyncio.timeout(2 * self._timeout):
                response = await self._client.get(
                    f"{self._base_url}/mutation", params=params, timeout=self._timeout,
                    headers={"Authorization": f"Bearer {self._token}",
                             "Accept": "application/json"})
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _error(TransientBeforeSend, f"not sent: {type(exc).__name__}") from exc
        except (httpx.RequestError, TimeoutError) as exc:  # a read, so safe to repeat
            raise _error(Unavailable, f"no answer: {type(exc).__name__}") from exc
        status = response.status_code
        if status in (401, 403):
            raise _error(Misconfigured, f"HTTP {status}: the token is refused")
        if status == 429:
            raise Throttled(f"HTTP {status}", provider=PROVIDER, operation=OPERATION,
                            retry_after=_retry_after(response))
        if status != 200:
            raise _error(Unavailable, f"HTTP {status}")
        return _page(response.content)


def _page(raw: bytes) -> FeedPage:
    try:
        body = decode_moota_json(raw)  # amounts as Decimal, nesting capped, as for a push
    except ValueError as exc:
        raise _error(Unavailable, f"the answer is not JSON ({exc})") from exc
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise _error(Unavailable, "the answer is not a page of mutations")
    try:
        current, last = int(body.get("current_page") or 1), int(body.get("last_page") or 1)
    except (TypeError, ValueError) as exc:
        raise _error(Unavailable, f"malformed pagination: {exc}") from exc
    read = read_moota_items(body["data"])
    return FeedPage(items=read.mutations, current_page=current, last_page=max(last, 1),
                    unreadable=read.unreadable)


def _error(kind: type[RailError], detail: str) -> RailError:
    return kind(detail, provider=PROVIDER, operation=OPERATION)


def _retry_after(response: httpx.Response) -> float | None:
    raw: Any = response.headers.get("retry-after")
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None
