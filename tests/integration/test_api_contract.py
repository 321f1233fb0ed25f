"""The OpenAPI document is the checkout's contract: what it lists is what the API answers.

The document is read from the running service (``/schema/openapi.json``), and each answer it
lists for ``POST /v1/orders`` is produced by a real request: its status, its problem+json body
and the headers it promises. The set of statuses produced is the set documented, no more.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest

from chaos.sim.runner import Simulators, start_simulators
from orchestrator.api.openapi import Problem
from orchestrator.api.replies import OrderList, OrderOut
from orchestrator.bootstrap import Container, build
from orchestrator.domain.money import UniqueCodeRange
from orchestrator.services.merchant_routing import set_routing
from orchestrator.settings import ProviderSettings, RedisSettings, UniqueCodeSettings
from orchestrator.store.merchants import create_ops_token
from orchestrator.tls import default_trust
from tests.support import ShopFixture, new_merchant, order_body, serve


@dataclass
class Api:
    container: Container
    sims: Simulators
    client: httpx.AsyncClient
    shop: ShopFixture
    document: dict[str, Any]

    def operation(self, method: str, path: str) -> dict[str, Any]:
        op: dict[str, Any] = self.document["paths"][path][method]
        return op

    async def capture(self, body: dict[str, Any] | None = None, *, key: str | None = None,
                      **headers: str) -> httpx.Response:
        sent = {**self.shop.headers, "Idempotency-Key": key or str(uuid.uuid4()), **headers}
        return await self.client.post(
            "/v1/orders", headers={k: v for k, v in sent.items() if v},
            json=order_body(f"C-{uuid.uuid4().hex[:12]}") if body is None else body)


@pytest.fixture
async def api(container: Container) -> AsyncIterator[Api]:
    sims = await start_simulators()
    base = container.settings
    c = build(replace(
        base,
        providers=ProviderSettings(midtrans_url=sims.midtrans.data_url,
                                   xendit_url=sims.xendit.data_url),
        # One code: a second open transfer of the same amount on one account has none left.
        unique_codes=UniqueCodeSettings(codes=UniqueCodeRange(low=7, high=7)),
        redis=RedisSettings(url=base.redis.url,
                            key_prefix=f"{base.redis.key_prefix}{uuid.uuid4().hex[:8]}:")))
    await c.start()
    try:
        shop = await new_merchant(c)
        async with serve(c) as url, httpx.AsyncClient(verify=default_trust(),
                                                      base_url=url, timeout=30) as client:
            document = (await client.get("/schema/openapi.json")).json()
            yield Api(c, sims, client, shop, document)
    finally:
        await c.close()
        await sims.stop()


async def _every_capture_answer(api: Api) -> dict[int, httpx.Response]:
    """One real request for each way a capture can be answered."""
    answers: dict[int, httpx.Response] = {}
    body = order_body(f"C-{uuid.uuid4().hex[:12]}", 210_000)
    key = str(uuid.uuid4())
    answers[201] = await api.capture(body, key=key)
    answers[409] = await api.capture({**body, "amount": 210_001}, key=key)
    # Same amount, the one code held by the first: no transfer amount left on the account.
    answers[503] = await api.capture(order_body(f"C-{uuid.uuid4().hex[:12]}", 210_000))
    answers[400] = await api.capture(**{"Idempotency-Key": ""})
    answers[401] = await api.capture(Authorization="")
    answers[422] = await api.capture(order_body(f"C-{uuid.uuid4().hex[:12]}", 0))
    answers[413] = await api.client.post(
        "/v1/orders", content=b" " * (api.container.settings.http.max_body_bytes + 1),
        headers={**api.shop.headers, "Idempotency-Key": str(uuid.uuid4()),
                 "Content-Type": "application/json"})
    await _no_fallback(api)
    await _providers_down(api)
    answers[202] = await api.capture(order_body(f"C-{uuid.uuid4().hex[:12]}", rail="va",
                                                channel="bca"))
    return answers


async def _no_fallback(api: Api) -> None:
    await set_routing(api.container.db, merchant_id=api.shop.merchant_id, actor="test",
                      reason=None, now=datetime.now(UTC), allow_fallback=False)


async def _providers_down(api: Api) -> None:
    for sim in (api.sims.midtrans, api.sims.xendit):
        async with httpx.AsyncClient(verify=default_trust()) as control:
            (await control.post(f"{sim.control_url}/faults", json={"kind": "down"})
             ).raise_for_status()


_SHAPES: dict[str, type[msgspec.Struct]] = {"OrderOut": OrderOut, "OrderList": OrderList,
                                            "Problem": Problem}


def assert_conforms(documented: dict[str, Any], reply: httpx.Response) -> None:
    """The reply is the documented media type, and its body decodes into the Struct the
    document's schema names, strictly and with no field the document does not list."""
    [(media_type, content)] = documented[str(reply.status_code)]["content"].items()
    assert reply.headers["content-type"].startswith(media_type), reply.headers
    name = content["schema"]["$ref"].rsplit("/", 1)[1]
    msgspec.json.decode(reply.content, type=_SHAPES[name], strict=True)


def _problem_fields(document: dict[str, Any]) -> list[str]:
    required: list[str] = document["components"]["schemas"]["Problem"]["required"]
    return required


async def test_a_capture_answers_exactly_the_statuses_the_document_lists(api: Api) -> None:
    documented = api.operation("post", "/v1/orders")["responses"]
    answers = await _every_capture_answer(api)
    for status, reply in answers.items():
        assert reply.status_code == status, (status, reply.text)
    assert set(answers) == {int(s) for s in documented}


async def test_each_answer_carries_the_body_and_headers_the_document_promises(
    api: Api,
) -> None:
    documented = api.operation("post", "/v1/orders")["responses"]
    problem_fields = _problem_fields(api.document)
    for status, reply in (await _every_capture_answer(api)).items():
        promised = documented[str(status)]
        [media_type] = promised["content"]
        assert_conforms(documented, reply)
        if status >= 400:
            assert media_type == "application/problem+json"
            problem = reply.json()
            assert set(problem_fields) <= set(problem), (status, problem)
            assert problem["status"] == status
        for name, header in promised.get("headers", {}).items():
            if header["required"]:
                assert name in reply.headers, (status, name, dict(reply.headers))


async def test_the_idempotency_key_is_a_documented_required_header(api: Api) -> None:
    params = api.operation("post", "/v1/orders")["parameters"]
    [key] = [p for p in params if p["name"] == "Idempotency-Key"]
    assert key["in"] == "header" and key["required"] is True
    assert key["schema"]["maxLength"] == 255


async def test_a_replayed_capture_says_so_in_its_documented_header(api: Api) -> None:
    headers = api.operation("post", "/v1/orders")["responses"]["201"]["headers"]
    assert headers["Idempotent-Replayed"]["required"] is False
    body, key = order_body(f"C-{uuid.uuid4().hex[:12]}", 220_000), str(uuid.uuid4())
    first = await api.capture(body, key=key)
    again = await api.capture(body, key=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()


async def test_no_order_endpoint_documents_litestars_own_error_shape(api: Api) -> None:
    """Every error Lunas sends is problem+json; litestar's default validation error
    (``status_code``/``detail``/``extra``) is never what a client receives."""
    for path, item in api.document["paths"].items():
        if not path.startswith("/v1/orders"):
            continue
        for method, op in item.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        method, path, status)
                    assert response["content"]["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"}, (method, path, status)


async def test_documented_order_endpoint_answers_can_all_be_produced(api: Api) -> None:
    """The other order endpoints: each documented status, produced."""
    h = api.shop.headers
    placed = (await api.capture(order_body(f"C-{uuid.uuid4().hex[:12]}", 230_000))).json()
    c = api.client
    got: dict[tuple[str, str], set[int]] = {}

    def seen(method: str, path: str, reply: httpx.Response) -> None:
        got.setdefault((method, path), set()).add(reply.status_code)
        assert_conforms(api.operation(method, path)["responses"], reply)

    one, find = "/v1/orders/{order_id}", "/v1/orders"
    seen("get", one, await c.get(f"/v1/orders/{placed['id']}", headers=h))
    seen("get", one, await c.get("/v1/orders/ord_nope", headers=h))
    seen("get", one, await c.get("/v1/orders/ord_nope"))
    seen("get", one, await c.get("/v1/orders/ord%00", headers=h))
    seen("get", find, await c.get("/v1/orders", params={
        "merchant_order_id": placed["merchant_order_id"]}, headers=h))
    seen("get", find, await c.get("/v1/orders", headers=h))
    seen("get", find, await c.get("/v1/orders"))
    cancel = "/v1/orders/{order_id}/cancel"
    seen("post", cancel, await c.post(f"/v1/orders/{placed['id']}/cancel", headers=h))
    seen("post", cancel, await c.post(f"/v1/orders/{placed['id']}/cancel", headers=h))
    seen("post", cancel, await c.post("/v1/orders/ord_nope/cancel", headers=h))
    seen("post", cancel, await c.post("/v1/orders/ord_nope/cancel"))
    seen("post", cancel, await c.post("/v1/orders/ord%00/cancel", headers=h))
    seen("post", cancel, await c.post(
        "/v1/orders/ord_nope/cancel", headers={**h, "Content-Type": "application/json"},
        content=b" " * (api.container.settings.http.max_body_bytes + 1)))
    switch = "/v1/orders/{order_id}/payment"
    other = (await api.capture(order_body(f"C-{uuid.uuid4().hex[:12]}", 240_000))).json()
    to = f"/v1/orders/{other['id']}/payment"
    seen("post", switch, await c.post(to, json={"rail": "qris"}, headers=h))
    seen("post", switch, await c.post(to, json={"rail": "cheque"}, headers=h))
    seen("post", switch, await c.post(to, json={"rail": "qris"}))
    seen("post", switch, await c.post(to, json={"rail": 1}, headers=h))
    seen("post", switch, await c.post("/v1/orders/ord_nope/payment", json={"rail": "qris"},
                                      headers=h))
    seen("post", switch, await c.post(f"/v1/orders/{placed['id']}/payment",
                                      json={"rail": "qris"}, headers=h))
    seen("post", switch, await c.post(
        to, headers={**h, "Content-Type": "application/json"},
        content=b" " * (api.container.settings.http.max_body_bytes + 1)))
    await _no_fallback(api)
    await _providers_down(api)
    no_route = await c.post(to, json={"rail": "ewallet", "channel": "gopay"}, headers=h)
    assert no_route.json()["code"] == "no_route_available", no_route.text
    assert no_route.headers["Retry-After"] and no_route.json()["routing"]["tried"]
    seen("post", switch, no_route)
    for (method, path), statuses in got.items():
        documented = {int(s) for s in api.operation(method, path)["responses"]}
        # 503 (database unreachable) is every endpoint's; the capture test produces one.
        assert statuses | {503} == documented | {503}, (method, path)


# ---------------------------------------------------------------------------------------------
# the rest of the API: every error is a problem; credentials answered as documented
# ---------------------------------------------------------------------------------------------


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in document["paths"].items()
            for method, op in item.items()]


async def test_every_error_any_endpoint_documents_is_a_problem(api: Api) -> None:
    for method, path, op in _operations(api.document):
        statuses = {int(s) for s in op["responses"]}
        if path.startswith("/v1/"):
            # Input no column can hold, and a database out of reach, reach every endpoint.
            assert {400, 503} <= statuses, (method, path)
        for status, response in op["responses"].items():
            if int(status) < 400 or (path, status) == ("/readyz", "503"):
                continue
            assert response["content"] == {"application/problem+json": {"schema": {
                "$ref": "#/components/schemas/Problem"}}}, (method, path, status)


async def test_every_endpoint_that_answers_401_names_the_credential_it_takes(api: Api) -> None:
    schemes = api.document["components"]["securitySchemes"]
    assert {s["scheme"] for s in schemes.values()} == {"bearer"}
    for method, path, op in _operations(api.document):
        if "401" not in op["responses"] or path.startswith(("/v1/webhooks/",
                                                             "/v1/mutations/push")):
            continue  # a provider's or Moota's signature, not a bearer credential
        [requirement] = op["security"]
        [scheme] = requirement
        assert scheme in schemes, (method, path)
        assert ("403" in op["responses"]) == (scheme == "opsToken"), (method, path)


def _filled(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "nope", path)


async def test_a_read_without_credentials_is_answered_as_documented(api: Api) -> None:
    reads = [(path, op) for method, path, op in _operations(api.document)
             if method == "get" and path.startswith("/v1/")]
    assert len(reads) >= 10
    for path, op in reads:
        reply = await api.client.get(_filled(path))
        documented = {int(s) for s in op["responses"]}
        assert reply.status_code == 401 and 401 in documented, (path, reply.text)
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert "WWW-Authenticate" in reply.headers


async def test_ops_answers_a_token_short_of_its_scope_and_a_page_after_nothing_as_documented(
    api: Api,
) -> None:
    async with api.container.db.transaction() as conn:
        _, finance = await create_ops_token(conn, name="finance", scopes=("reconciliation",),
                                            now=api.container.clock.now())
    as_finance = {"Authorization": f"Bearer {finance}"}
    for path in ("/v1/ops/routes", "/v1/ops/maintenance", "/v1/ops/outbox/dead",
                 "/v1/ops/status/components"):
        reply = await api.client.get(path, headers=as_finance)
        assert reply.status_code == 403, (path, reply.text)
        assert "403" in api.operation("get", path)["responses"]
    for path in ("/v1/reviews", "/v1/reconciliation/unmatched", "/v1/reconciliation/unreadable"):
        reply = await api.client.get(path, params={"after": "nope"}, headers=as_finance)
        assert reply.status_code == 404 and reply.json()["code"] == "not_found", reply.text
        assert "404" in api.operation("get", path)["responses"], path
    merchant = await api.client.get("/v1/reviews", headers=api.shop.headers)
    assert merchant.status_code == 401
