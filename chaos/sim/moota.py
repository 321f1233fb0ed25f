"""A Moota-style bank-mutation feed simulator (API v2, RAILS.md §3.1–3.2) with fault injection.

Data plane, behind ``Authorization: Bearer <token>`` (401 otherwise):

    GET /api/v2/mutation?type=&bank=&start_date=&end_date=&page=&per_page=

Answers a Laravel-style page (``current_page, data[], first_page_url, from, last_page,
last_page_url, links[], next_page_url, path, per_page, prev_page_url, to, total``) of mutation
objects, newest first as Moota lists them; amounts are decimal strings (``"150123.00"``), ``date``
is ``YYYY-MM-DD HH:MM:SS`` WIB and ``start_date`` / ``end_date`` filter on its calendar day
(inclusive). ``per_page`` defaults to 20 and is capped at 100.

Faults (``FaultBook``) apply to channel ``mutations``, operation ``list``, before authentication:
DOWN stops the data server (connection refused), HANG never answers, SLOW adds delay,
ERROR_BURST / ERROR_RATE / BODY_ERROR answer ``status`` with ``{"error":true,...}``, RATE_LIMIT
answers 429, MAINTENANCE answers 503.

Control plane (no auth): ``POST /mutations {account_number, amount, type, description, date?,
bank_id?, listed_as?}`` adds a mutation and returns it; ``GET /mutations``; ``POST/GET/DELETE
/faults``; ``GET/DELETE /calls``. ``listed_as`` is a fault on one item: fields the data plane lists
instead of the true ones (``null`` leaves a field out), e.g. ``{"amount": "1.500.000,00 IDR"}``;
the mutation is still filtered, paged and balanced by its true fields. ``POST
/mutations/{mutation_id}/repair`` lists it truly again, as Moota does once a bank corrects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from litestar import Litestar, Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from chaos.sim.control import fault_routes
from chaos.sim.faults import Fault, FaultBook, FaultKind
from chaos.sim.server import SwitchableServer

WIB = timezone(timedelta(hours=7), "WIB")
CHANNEL, OPERATION = "mutations", "list"
DEFAULT_PER_PAGE, MAX_PER_PAGE = 20, 100
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: dict[str, list[str]] | None = None
                 ) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.errors = status, message, errors

    def response(self) -> Response[Any]:
        body: dict[str, Any] = ({"message": self.message, "errors": self.errors}
                                if self.errors else {"error": True, "message": self.message})
        return Response(body, status_code=self.status)


def _invalid(name: str, why: str) -> ApiError:
    return ApiError(422, "The given data was invalid.", {name: [why]})


def _day(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise _invalid(name, f"The {name} must be a date YYYY-MM-DD.") from exc


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise _invalid(name, f"The {name} must be an integer.") from exc
    if number < 1:
        raise _invalid(name, f"The {name} must be at least 1.")
    return number


class MootaSim:
    """The simulated Moota account: its mutations, its faults and the two servers."""

    # A local test double's own token, not a secret of any real account.
    def __init__(self, *, token: str = "moota-sim-token", host: str = "127.0.0.1",  # noqa: S107
                 data_port: int = 0, control_port: int = 0, bank_id: str = "bkSimLunas01",
                 hang_max_s: float = 300.0) -> None:
        self.token, self.bank_id, self.hang_max_s = token, bank_id, hang_max_s
        self.faults = FaultBook()
        self.mutations: list[dict[str, Any]] = []
        self.listed_as: dict[str, dict[str, Any]] = {}
        """Per ``mutation_id``: the fields listed instead of the true ones (a malformed item)."""
        self._release = asyncio.Event()
        self._revivals: set[asyncio.Task[None]] = set()
        self.data_app = Litestar(route_handlers=data_routes(self), openapi_config=None)
        self.control_app = Litestar(route_handlers=control_routes(self), openapi_config=None)
        self._data = SwitchableServer(self.data_app, host, data_port)
        self._control = SwitchableServer(self.control_app, host, control_port)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def data_url(self) -> str:
        """The API base the client is configured with (``LUNAS_MOOTA_URL``)."""
        return f"{self._data.url}/api/v2"

    @property
    def control_url(self) -> str:
        return self._control.url

    @property
    def data_listening(self) -> bool:
        return self._data.listening

    async def start(self) -> None:
        await self._control.start()
        if not self.faults.is_down():
            await self._data.start()

    async def stop(self) -> None:
        """Stop for good: both servers and their port reservations."""
        self._release_hangs()
        for task in list(self._revivals):
            task.cancel()
        await asyncio.gather(*self._revivals, return_exceptions=True)
        await self._data.close()
        await self._control.close()

    # -- mutations -------------------------------------------------------------------------

    def add_mutation(self, body: dict[str, Any]) -> dict[str, Any]:
        """A mutation as the bank reported it to Moota; returned with its ``mutation_id``."""
        account = body.get("account_number")
        if isinstance(account, bool) or not isinstance(account, str | int) or account == "":
            raise _invalid("account_number", "The account number field is required.")
        amount = body.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise _invalid("amount", "The amount must be a positive whole number of rupiah.")
        kind = str(body.get("type", "CR")).upper()
        if kind not in ("CR", "DB"):
            raise _invalid("type", "The type must be CR or DB.")
        now = datetime.now(UTC).astimezone(WIB)
        if body.get("date"):
            try:
                posted = datetime.strptime(str(body["date"]), DATE_FORMAT)
            except ValueError as exc:
                raise _invalid("date", "The date must be YYYY-MM-DD HH:MM:SS.") from exc
        else:
            posted = now.replace(tzinfo=None, microsecond=0)
        balance = sum(int(m["amount"].split(".")[0]) * (1 if m["type"] == "CR" else -1)
                      for m in self.mutations if m["account_number"] == str(account))
        balance += amount if kind == "CR" else -amount
        stamp = now.strftime(DATE_FORMAT)
        mutation_id = secrets.token_urlsafe(8)
        mutation = {
            "mutation_id": mutation_id, "token": mutation_id,
            "bank_id": str(body.get("bank_id") or self.bank_id),
            "account_number": str(account), "date": posted.strftime(DATE_FORMAT),
            "description": str(body.get("description") or ""), "amount": f"{amount}.00",
            "type": kind, "balance": f"{balance}.00", "note": "", "created_at": stamp,
            "updated_at": stamp, "taggings": [],
        }
        listed_as = body.get("listed_as")
        if listed_as is not None:
            if not isinstance(listed_as, dict):
                raise _invalid("listed_as", "The listed as must be an object.")
            self.listed_as[mutation_id] = dict(listed_as)
        self.mutations.append(mutation)
        return dict(mutation)

    def repair(self, mutation_id: str) -> dict[str, Any]:
        if self.listed_as.pop(mutation_id, None) is None:
            raise ApiError(404, f"no malformed mutation {mutation_id}")
        return next(dict(m) for m in self.mutations if m["mutation_id"] == mutation_id)

    def listed(self, mutation: dict[str, Any]) -> dict[str, Any]:
        """The mutation as the data plane lists it."""
        instead = self.listed_as.get(mutation["mutation_id"])
        if instead is None:
            return dict(mutation)
        shown = {**mutation, **instead}
        return {k: v for k, v in shown.items() if v is not None}

    def page(self, query: dict[str, str], path: str) -> dict[str, Any]:
        kind = (query.get("type") or "").upper()
        if kind and kind not in ("CR", "DB"):
            raise _invalid("type", "The selected type is invalid.")
        start = _day(query.get("start_date"), "start_date")
        end = _day(query.get("end_date"), "end_date")
        on = _day(query.get("date"), "date")
        bank = query.get("bank") or ""
        page = _int(query.get("page"), "page", 1)
        per_page = min(_int(query.get("per_page"), "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)

        def wanted(m: dict[str, Any]) -> bool:
            day = date.fromisoformat(m["date"][:10])
            return ((not kind or m["type"] == kind) and (not bank or m["bank_id"] == bank)
                    and (start is None or day >= start) and (end is None or day <= end)
                    and (on is None or day == on))

        # Newest first; the insertion index breaks ties, so pages are stable between requests.
        found = [m for _, m in sorted(enumerate(m for m in self.mutations if wanted(m)),
                                      key=lambda im: (im[1]["date"], im[0]), reverse=True)]
        total = len(found)
        last = max(1, math.ceil(total / per_page))
        rows = found[(page - 1) * per_page: page * per_page]

        def url(n: int | None) -> str | None:
            if n is None:
                return None
            keep = {k: v for k, v in query.items() if k != "page"}
            return f"{path}?{urlencode({**keep, 'page': n})}"

        return {
            "current_page": page, "data": [self.listed(m) for m in rows],
            "first_page_url": url(1),
            "from": (page - 1) * per_page + 1 if rows else None, "last_page": last,
            "last_page_url": url(last),
            "links": [{"url": url(page - 1) if page > 1 else None, "label": "&laquo; Previous",
                       "active": False},
                      *({"url": url(n), "label": str(n), "active": n == page}
                        for n in range(1, last + 1)),
                      {"url": url(page + 1) if page < last else None, "label": "Next &raquo;",
                       "active": False}],
            "next_page_url": url(page + 1) if page < last else None, "path": path,
            "per_page": per_page, "prev_page_url": url(page - 1) if page > 1 else None,
            "to": (page - 1) * per_page + len(rows) if rows else None, "total": total,
        }

    # -- the gate every data-plane request passes -------------------------------------------

    async def serve(self, request: Request[Any, Any, Any]) -> Response[Any]:
        decision = self.faults.decide(CHANNEL, OPERATION)
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        fault = decision.fault
        if fault is not None:
            return await self._fault_response(fault)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 self.token.encode()):
            return Response({"message": "Unauthenticated."}, status_code=401)
        try:
            path = str(request.url).split("?")[0]
            return Response(self.page(dict(request.query_params), path), status_code=200)
        except ApiError as exc:
            return exc.response()

    async def _fault_response(self, fault: Fault) -> Response[Any]:
        if fault.kind in (FaultKind.HANG, FaultKind.TIMEOUT_AFTER_SUCCESS):
            release = self._release
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), timeout=self.hang_max_s)
            return ApiError(503, "the simulator stopped").response()
        if fault.kind is FaultKind.MAINTENANCE:
            return ApiError(503, "Sedang dalam perbaikan").response()
        if fault.kind is FaultKind.RATE_LIMIT:
            reset = fault.until - time.monotonic() if fault.until is not None else 60.0
            return Response({"message": "Too Many Attempts."}, status_code=429,
                            headers={"Retry-After": str(max(1, math.ceil(reset)))})
        status = fault.status if fault.status >= 400 else 500
        return ApiError(status, "Server Error").response()

    def _release_hangs(self) -> None:
        self._release.set()
        self._release = asyncio.Event()

    # -- fault control ---------------------------------------------------------------------

    async def add_fault(self, fault: Fault) -> None:
        self.faults.add(fault)
        if fault.kind is FaultKind.DOWN:
            self._release_hangs()
            await self._data.stop()
            if fault.until is not None:
                task = asyncio.create_task(self._revive_at(fault.until))
                self._revivals.add(task)
                task.add_done_callback(self._revivals.discard)

    async def clear_faults(self, channel: str | None = None) -> None:
        self.faults.clear(channel)
        if not self.faults.is_down() and not self._data.listening:
            await self._data.start()

    async def _revive_at(self, until: float) -> None:
        await asyncio.sleep(max(until - time.monotonic(), 0) + 0.01)
        if not self.faults.is_down() and not self._data.listening:
            await self._data.start()


# -- apps --------------------------------------------------------------------------------------

def data_routes(sim: MootaSim) -> list[HTTPRouteHandler]:
    @get("/api/v2/mutation")
    async def list_mutations(request: Request[Any, Any, Any]) -> Response[Any]:
        return await sim.serve(request)

    return [list_mutations]


async def _json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    body = await request.json()
    if not isinstance(body, dict):
        raise ApiError(422, "The body must be a JSON object.")
    return body


async def _control(work: Callable[[], Awaitable[Any]]) -> Response[Any]:
    try:
        return Response(await work(), status_code=200)
    except ApiError as exc:
        return exc.response()
    except (KeyError, TypeError, ValueError) as exc:
        return ApiError(400, str(exc)).response()


def control_routes(sim: MootaSim) -> list[HTTPRouteHandler]:
    @post("/mutations", status_code=200)
    async def add_mutation(request: Request[Any, Any, Any]) -> Response[Any]:
        async def work() -> dict[str, Any]:
            return sim.add_mutation(await _json(request))
        return await _control(work)

    @get("/mutations")
    async def all_mutations() -> Response[Any]:
        async def work() -> list[dict[str, Any]]:
            return [dict(m) for m in sim.mutations]
        return await _control(work)

    @post("/mutations/{mutation_id:str}/repair", status_code=200)
    async def repair(mutation_id: FromPath[str]) -> Response[Any]:
        async def work() -> dict[str, Any]:
            return sim.repair(mutation_id)
        return await _control(work)

    return [add_mutation, all_mutations, repair, *fault_routes(sim)]
