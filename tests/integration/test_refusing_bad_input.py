"""Input the API cannot store is refused at the edge with a 4xx naming the problem, never a 500
from the database or a decoder: NUL characters and unpaired surrogates (PostgreSQL's ``text`` and
``jsonb`` hold neither), bodies nested to exhaust a decoder, amounts beyond any real transfer,
dates with no UTC, and text longer than the column that keeps it. Every case here answered 500 on
PostgreSQL before (found by fuzzing the running service)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.store.tables import mutations, provider_deliveries, statements
from tests.support import (
    ShopFixture,
    bca_statement,
    new_merchant,
    new_ops_token,
    order_body,
    signed_push,
)


@pytest.fixture(scope="module")
async def ops(container: Container) -> dict[str, str]:
    return {"Authorization": f"Bearer {await new_ops_token(container)}"}


@pytest.fixture(scope="module")
async def shop(container: Container) -> ShopFixture:
    return await new_merchant(container)


def _refused(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = dict(r.json())
    if code is not None:
        assert body["code"] == code, body
    return body


async def _create(client: httpx.AsyncClient, shop: ShopFixture, raw: str) -> httpx.Response:
    return await client.post("/v1/orders", content=raw.encode(), headers={
        **shop.headers, "Idempotency-Key": str(uuid.uuid4()),
        "Content-Type": "application/json"})


def _order_json(**customer: str) -> str:
    body = order_body(f"INV-{uuid.uuid4().hex[:10]}")
    body["customer"] = {**body["customer"], **customer}  # type: ignore[dict-item]
    return json.dumps(body)


# -- text no column can hold ----------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/v1/orders/%00", "/v1/orders/ord%00abc", "/v1/orders?merchant_order_id=%00",
    "/v1/reviews?status=%00", "/v1/reconciliation/unmatched?account_number=%00"])
async def test_a_nul_in_the_url_is_refused(client: httpx.AsyncClient, shop: ShopFixture,
                                           ops: dict[str, str], path: str) -> None:
    headers = ops if "orders" not in path else shop.headers
    _refused(await client.get(path, headers=headers), 400, "unstorable_text")


@pytest.mark.parametrize(("raw_name", "code", "named"), [
    ('"a\\u0000b"', "unstorable_text", "customer.name contains a NUL character"),
    # msgspec refuses these itself, as JSON no UTF-8 text can come from
    ('"\\ud800"', "malformed_json", "surrogate"),
])
async def test_a_nul_or_a_lone_surrogate_in_a_json_field_is_refused_by_name(
    client: httpx.AsyncClient, shop: ShopFixture, raw_name: str, code: str, named: str,
) -> None:
    raw = _order_json(name="PLACEHOLDER").replace('"PLACEHOLDER"', raw_name)
    problem = _refused(await _create(client, shop, raw), 400, code)
    assert named in problem["detail"]


@pytest.mark.parametrize("content_type", [
    "text/plain", None, "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz"])
async def test_the_body_is_checked_whatever_its_content_type_says(
    client: httpx.AsyncClient, shop: ShopFixture, content_type: str | None,
) -> None:
    """litestar decodes a handler's JSON body whatever the header says, so the guard must too."""
    headers = {**shop.headers, "Idempotency-Key": str(uuid.uuid4())}
    if content_type:
        headers["Content-Type"] = content_type
    raw = _order_json(name="PLACEHOLDER").replace('"PLACEHOLDER"', '"a\\u0000b"')
    _refused(await client.post("/v1/orders", content=raw.encode(), headers=headers), 400,
             "unstorable_text")
    deep = '{"metadata":' + "[" * 100_000 + "]" * 100_000 + "}"
    _refused(await client.post("/v1/orders", content=deep.encode(), headers=headers), 400,
             "malformed_json")


async def test_a_nul_in_a_metadata_key_is_refused(client: httpx.AsyncClient,
                                                  shop: ShopFixture) -> None:
    raw = json.dumps({**order_body(f"INV-{uuid.uuid4().hex[:10]}"), "metadata": {"k": 1}})
    raw = raw.replace('"k"', '"k\\u0000"')
    _refused(await _create(client, shop, raw), 400, "unstorable_text")


async def test_escaped_emoji_a_surrogate_pair_is_accepted(client: httpx.AsyncClient,
                                                          shop: ShopFixture) -> None:
    raw = _order_json(name="PLACEHOLDER").replace('"PLACEHOLDER"', '"Andi \\ud83d\\ude00"')
    r = await _create(client, shop, raw)
    assert r.status_code == 201, r.text
    assert r.json()["customer"]["name"] == "Andi \U0001f600"


@pytest.mark.parametrize("path", ["/v1/orders", "/v1/ops/maintenance",
                                  "/v1/reconciliation/matches", "/v1/reviews/rc_x/resolve",
                                  "/v1/ops/status/incidents"])
@pytest.mark.parametrize("content_type", [
    "application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz"])
async def test_a_body_nested_to_exhaust_the_decoder_is_refused_before_auth(
    client: httpx.AsyncClient, path: str, content_type: str,
) -> None:
    raw = '{"metadata":' + "[" * 100_000 + "]" * 100_000 + "}"
    r = await client.post(path, content=raw, headers={"Content-Type": content_type})
    _refused(r, 400, "malformed_json")


def test_a_decoder_out_of_recursion_is_a_malformed_body_not_a_500() -> None:
    """Whatever decoder a body reaches past the guard, running out of stack on it says the body
    nests too deep: the sender's fault, answered as such."""
    from litestar.testing import RequestFactory

    from orchestrator.api.errors import status_for, to_response

    try:
        json.loads("[" * 100_000 + "]" * 100_000)
    except RecursionError as exc:
        exhausted = exc
    assert status_for(exhausted) == 400
    response = to_response(RequestFactory().post("/v1/orders"), exhausted)
    assert response.status_code == 400 and response.content["code"] == "malformed_json"


async def test_a_refusal_is_titled_for_its_status(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    from orchestrator.store.merchants import create_ops_token

    merchant = await new_merchant(container)
    async with container.db.transaction() as conn:
        _, ops_only = await create_ops_token(conn, name="ops-only", scopes=("ops",),
                                             now=container.clock.now())
    refusals = [
        (await client.get("/v1/reviews", headers=ops, params={"limit": "x"}), 400,
         "Bad request"),
        (await client.get("/v1/reviews"), 401, "Unauthorized"),
        (await client.get("/v1/reviews", headers=merchant.headers), 401, "Unauthorized"),
        (await client.get("/v1/reviews", headers={"Authorization": f"Bearer {ops_only}"}),
         403, "Forbidden"),
        (await client.post("/v1/ops/routes/zz:zz:zz/pause", headers=ops,
                           json={"reason": "x"}), 404, "Not found"),
        (await client.post("/v1/mutations/statements", headers=ops, content=b"x"), 415,
         "Unsupported media type"),
    ]
    for r, status, title in refusals:
        assert (r.status_code, r.json()["title"]) == (status, title), r.text


async def test_every_refusal_of_one_status_has_one_title(
    client: httpx.AsyncClient, shop: ShopFixture, ops: dict[str, str],
) -> None:
    """"Bad request", "Malformed request" and "Bad Request" named three 400s (review): the title
    is the status's phrase, in sentence case; the code says which problem it is."""
    key = {**shop.headers, "Idempotency-Key": str(uuid.uuid4())}
    refusals = [
        await client.post("/v1/orders", headers=key),  # no body
        await client.post("/v1/orders", headers=key, content=b"{"),  # not JSON, no Content-Type
        await _create(client, shop, "{"),  # not JSON
        await _create(client, shop, json.dumps({**order_body("INV-t"), "amount": "1000"})),
        await client.get("/v1/reviews", headers=ops, params={"status": "bogus"}),
        await client.get("/v1/orders/%00", headers=shop.headers),
    ]
    assert [(r.status_code, r.json()["title"]) for r in refusals] == [(400, "Bad request")] * 6
    assert [r.json()["code"] for r in refusals] == [
        "malformed_request", "malformed_json", "malformed_json", "malformed_request",
        "bad_status", "unstorable_text"]
    missing = [await client.get("/v1/no-such-thing"),
               await client.get("/v1/orders/ord_none", headers=shop.headers)]
    assert [(r.status_code, r.json()["title"]) for r in missing] == [(404, "Not found")] * 2


@pytest.mark.parametrize(("path", "who"), [
    ("/v1/orders", "merchant"), ("/v1/orders/ord_x/payment", "merchant"),
    ("/v1/ops/routes/va:xendit:bca/resume", "ops"), ("/v1/ops/routes/va:xendit:bca/pause", "ops"),
    ("/v1/ops/routes/va:xendit:bca/breaker", "ops"), ("/v1/ops/outbox/dead/evt_x/discard", "ops"),
    ("/v1/ops/outbox/dead/redeliver", "ops"), ("/v1/reviews/rc_x/resolve", "ops"),
    ("/v1/ops/maintenance", "ops"), ("/v1/ops/status/incidents", "ops"),
    ("/v1/reconciliation/matches", "ops"),
])
@pytest.mark.parametrize("content_type", ["application/json", None])
async def test_an_empty_body_is_answered_that_a_json_body_is_required(
    client: httpx.AsyncClient, shop: ShopFixture, ops: dict[str, str], path: str, who: str,
    content_type: str | None,
) -> None:
    """It said ``detail: "'data'"``: litestar's name for the handler argument it lacked."""
    headers = {**(shop.headers if who == "merchant" else ops),
               "Idempotency-Key": str(uuid.uuid4())}
    if content_type:
        headers["Content-Type"] = content_type
    problem = _refused(await client.post(path, headers=headers), 400, "malformed_request")
    assert problem["detail"] == "a JSON body is required (Content-Type: application/json)"
    assert "'data'" not in json.dumps(problem)


# -- provider webhooks: stored as received, never trusted, never a 500 --------------------------


async def _deliveries(container: Container, delivery_id: str) -> list[Any]:
    async with container.db.read() as conn:
        return list((await conn.execute(sa.select(
            provider_deliveries.c.verified, provider_deliveries.c.outcome,
            provider_deliveries.c.attempt_id).where(
            provider_deliveries.c.id == delivery_id))).all())


@pytest.mark.parametrize(("provider", "raw", "outcome"), [
    ("midtrans", '{"order_id":"a\\u0000b","status_code":"200","gross_amount":"1",'
                 '"signature_key":"x"}', "malformed: order_id contains a NUL character"),
    ("midtrans", '{"order_id":"a","status_code":"200","gross_amount":"1",'
                 '"signature_key":"\\ud800"}', "malformed: signature_key contains an unpaired"),
    ("xendit", '{"payment_id":"p","external_id":"\\ud800","amount":1}',
     "malformed: external_id contains an unpaired"),
    ("xendit", "[" * 100_000, "malformed: not a JSON object"),
    ("xendit", '{"' + "k" * 600 + '":"a\\u0000b"}', "malformed: " + "k" * 40),
])
async def test_a_webhook_no_provider_would_send_is_stored_and_answered_400(
    client: httpx.AsyncClient, container: Container, provider: str, raw: str, outcome: str,
) -> None:
    r = await client.post(f"/v1/webhooks/{provider}", content=raw,
                          headers={"Content-Type": "application/json"})
    problem = _refused(r, 400, "malformed_notification")
    delivery_id = problem["detail"].rsplit("stored as ", 1)[1].rstrip(")")
    [(verified, stored_outcome, attempt_id)] = await _deliveries(container, delivery_id)
    assert (verified, attempt_id) == (False, None)
    assert stored_outcome.startswith(outcome)


async def test_a_body_over_the_limit_is_refused_before_it_is_stored(
    client: httpx.AsyncClient, container: Container,
) -> None:
    async with container.db.read() as conn:
        before = (await conn.execute(sa.select(sa.func.count())
                                     .select_from(provider_deliveries))).scalar_one()
    big = b'{"payment_id":"p","pad":"' + b"x" * (container.settings.http.max_body_bytes + 1) + b'"}'
    r = await client.post("/v1/webhooks/xendit", content=big,
                          headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    async with container.db.read() as conn:
        after = (await conn.execute(sa.select(sa.func.count())
                                    .select_from(provider_deliveries))).scalar_one()
    assert after == before


# -- amounts and dates ------------------------------------------------------------------------


async def _upload(client: httpx.AsyncClient, ops: dict[str, str], shop: ShopFixture,
                  data: bytes, filename: str = "mutasi.csv") -> httpx.Response:
    return await client.post("/v1/mutations/statements", headers=ops,
                             files={"file": (filename, data, "text/csv")},
                             data={"bank": "bca", "account_number": shop.account_number})


@pytest.mark.parametrize("amount", ["9223372036854775808.00", "9999999999999999999999999.00"])
async def test_a_statement_amount_beyond_any_transfer_refuses_the_file(
    client: httpx.AsyncClient, ops: dict[str, str], shop: ShopFixture, amount: str,
) -> None:
    data = bca_statement(shop.account_number, [(datetime.now(UTC), "TRSF CR 1", 100_001, "CR")])
    data = data.replace(b"100001.00", amount.encode())
    problem = _refused(await _upload(client, ops, shop, data), 422, "statement_rejected")
    assert "beyond" in problem["detail"] and problem["line"] == 8


async def test_a_statement_dated_year_one_is_refused(
    client: httpx.AsyncClient, ops: dict[str, str], shop: ShopFixture,
) -> None:
    data = bca_statement(shop.account_number, [(datetime(2026, 1, 1, 1, tzinfo=UTC),
                                                "TRSF CR 1", 100_001, "CR")])
    data = data.replace(b"01/01/2026 - 01/01/2026", b"01/01/0001 - 01/01/0001")
    _refused(await _upload(client, ops, shop, data), 422, "statement_rejected")


async def test_a_statement_for_an_account_number_longer_than_any_bank_uses_is_refused(
    client: httpx.AsyncClient, ops: dict[str, str],
) -> None:
    account = "1" * 41  # 40 digits is the widest account number Lunas keeps
    data = bca_statement(account, [(datetime.now(UTC), "TRSF CR 1", 100_001, "CR")])
    r = await client.post("/v1/mutations/statements", headers=ops,
                          files={"file": ("mutasi.csv", data, "text/csv")},
                          data={"bank": "bca", "account_number": account})
    assert "account number" in _refused(r, 422, "statement_rejected")["detail"]


async def test_a_long_filename_is_kept_shortened(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], shop: ShopFixture,
) -> None:
    data = bca_statement(shop.account_number, [(datetime.now(UTC), "TRSF CR 9", 100_009, "CR")])
    r = await _upload(client, ops, shop, data, filename="m" * 400 + ".csv")
    assert r.status_code == 201, r.text
    async with container.db.read() as conn:
        kept = (await conn.execute(sa.select(statements.c.filename).where(
            statements.c.id == r.json()["statement_id"]))).scalar_one()
    assert kept == "m" * 300


def _push_item(account: str, **fields: Any) -> dict[str, Any]:
    return {"mutation_id": uuid.uuid4().hex[:11], "bank_id": "bk7Hq2Lm9Zs",
            "account_number": account, "date": "2026-11-20 10:00:00", "description": "TRSF CR",
            "amount": "100000.00", "type": "CR", "balance": "2150123.00", **fields}


@pytest.mark.parametrize("fields", [
    {"amount": 10**20}, {"amount": "9" * 30}, {"balance": -(10**20)},
    {"date": "0001-01-01 00:00:00"}, {"account_number": "1" * 500},
    {"account_number": "12\u00003"},
])
async def test_a_pushed_item_with_a_value_no_bank_sends_is_set_aside_not_stored(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], fields: dict[str, Any],
) -> None:
    """Not stored as a mutation (nothing could hold it), not refused with the readable item
    beside it either: kept as received for a person."""
    shop = await new_merchant(container)
    odd = _push_item(shop.account_number, **fields)
    r = await signed_push(client, container, [odd, _push_item(shop.account_number)])
    assert r.status_code == 200, r.text
    assert (r.json()["new"], r.json()["unreadable"]) == (1, 1)
    listed: list[dict[str, Any]] = []
    after = ""
    while True:  # every page: the shared database holds every other test's open items too
        page = (await client.get("/v1/reconciliation/unreadable", headers=ops,
                                 params={"limit": "1000", "after": after})).json()
        assert not {i["id"] for i in page["data"]} & {i["id"] for i in listed}  # never again
        listed += page["data"]
        if not (after := page["next_after"] or ""):
            break
    assert [i["state"] for i in listed if i["mutation_ref"] == odd["mutation_id"]] == ["open"]


async def test_a_signed_push_nested_to_the_interpreters_limit_is_refused_whole(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """Just under the recursion limit json.loads reads such a body, and keeping its item for a
    person (writing it back as JSON) then ran out of stack: a 500. Every depth near the limit
    is refused whole, as any other body that is not an array of mutations."""
    import sys

    limit = sys.getrecursionlimit()
    for depth in range(limit - 100, limit + 1):
        body = b"[" + b"[" * depth + b"]" * depth + b"]"
        signature = hmac.new(container.settings.mutation_push_secret.encode(), body,
                             hashlib.sha256).hexdigest()
        r = await client.post("/v1/mutations/push", content=body, headers={
            "Signature": signature, "Content-Type": "application/json"})
        _refused(r, 422, "statement_rejected")


@pytest.mark.parametrize("customer", [
    {"name": " " * 150 + "x" * 200}, {"phone": "08" + " " * 40 + "1234567890"}])
async def test_customer_details_longer_than_kept_are_refused(
    client: httpx.AsyncClient, shop: ShopFixture, customer: dict[str, str],
) -> None:
    problem = _refused(await _create(client, shop, _order_json(**customer)), 422)
    assert problem["field"] == f"customer.{next(iter(customer))}"


async def test_a_merchant_order_id_with_a_trailing_newline_is_not_a_second_order(
    client: httpx.AsyncClient, shop: ShopFixture,
) -> None:
    """The merchant order id is unique so that a customer cannot pay the same invoice twice:
    "INV-1" and "INV-1\\n" must not both become orders."""
    merchant_order_id = f"INV-{uuid.uuid4().hex[:10]}"
    first = await _create(client, shop, json.dumps(order_body(merchant_order_id)))
    assert first.status_code == 201, first.text
    again = await _create(client, shop, json.dumps(order_body(merchant_order_id + "\n")))
    assert _refused(again, 422, "invalid_order")["field"] == "merchant_order_id"


@pytest.mark.parametrize(("field", "value"), [
    ("merchant_order_id", "a" * 100 + "\n"),
    ("customer.email", "andi@example.co.id\n"),
    ("customer.phone", "+6281234567890\n"),
    ("channel", "bca\n"),
])
async def test_a_trailing_newline_is_no_part_of_an_identifier(
    client: httpx.AsyncClient, shop: ShopFixture, field: str, value: str,
) -> None:
    body = order_body(f"INV-{uuid.uuid4().hex[:10]}")
    if field.startswith("customer."):
        body["customer"] = {**body["customer"], field.split(".")[1]: value}  # type: ignore[dict-item]
    else:
        body[field] = value
    problem = _refused(await _create(client, shop, json.dumps(body)), 422, "invalid_order")
    assert problem["field"] == field


async def test_metadata_is_measured_in_the_utf_8_bytes_it_is_kept_in(
    client: httpx.AsyncClient, container: Container, shop: ShopFixture,
) -> None:
    """"é" is two bytes kept, not the six of its \\u00e9 escape."""
    most = container.settings.checkout.max_metadata_bytes
    fits = (most - len('{"note":""}')) // 2

    def with_note(note: str) -> str:
        return json.dumps({**order_body(f"INV-{uuid.uuid4().hex[:10]}"),
                           "metadata": {"note": note}})

    r = await _create(client, shop, with_note("é" * fits))
    assert r.status_code == 201, r.text
    too_big = with_note("é" * (fits + 1))
    assert _refused(await _create(client, shop, too_big), 422)["field"] == "metadata"


async def test_two_idempotency_keys_are_refused_not_one_of_them_picked(
    client: httpx.AsyncClient, shop: ShopFixture,
) -> None:
    """Which of two keys a proxy passes on first is not something to build "done once" on."""
    headers = [*shop.headers.items(), ("Content-Type", "application/json"),
               ("Idempotency-Key", str(uuid.uuid4())), ("Idempotency-Key", str(uuid.uuid4()))]
    r = await client.post("/v1/orders", content=_order_json(), headers=headers)
    _refused(r, 400, "idempotency_key_repeated")


@pytest.mark.parametrize("path", [
    "/v1/reviews", "/v1/reconciliation/unmatched", "/v1/reconciliation/unreadable"])
async def test_a_list_limit_is_plain_decimal_digits(
    client: httpx.AsyncClient, ops: dict[str, str], path: str,
) -> None:
    for odd in ["1e3", "1.0", "+5", "1_000", "0x10", "\u0663", "\uff11", " 5", ""]:
        _refused(await client.get(path, headers=ops, params={"limit": odd}), 400, "bad_limit")
    for bounds in ["0", "1001"]:
        _refused(await client.get(path, headers=ops, params={"limit": bounds}), 400,
                 "bad_limit")
    r = await client.get(path, headers=ops, params={"limit": "1000"})
    assert r.status_code == 200, r.text


# -- ops: route keys, reasons, windows -----------------------------------------------------------


async def test_route_keys_must_name_a_route_lunas_has(client: httpx.AsyncClient,
                                                      ops: dict[str, str]) -> None:
    reason = {"reason": "test"}
    _refused(await client.post("/v1/ops/routes/va:xendit:bca%0A/pause", headers=ops,
                               json=reason), 400, "bad_route")
    _refused(await client.post(f"/v1/ops/routes/{'a' * 40}:b:c/pause", headers=ops,
                               json=reason), 400, "bad_route")
    _refused(await client.post("/v1/ops/routes/zz:zz:zz/pause", headers=ops, json=reason),
             404, "unknown_route")
    _refused(await client.post("/v1/ops/routes/zz:zz:zz/breaker", headers=ops,
                               json={"action": "force_open", "reason": "x"}), 404,
             "unknown_route")
    # Releasing an unknown route is refused the same way: it created a breaker, and with it
    # lunas_breaker_state series, for every well-formed key posted.
    _refused(await client.post("/v1/ops/routes/zz:zz:yy/breaker", headers=ops,
                               json={"action": "release", "reason": "x"}), 404,
             "unknown_route")
    listed = (await client.get("/v1/ops/routes", headers=ops)).json()["data"]
    assert "zz:zz:zz" not in [route["route"] for route in listed]
    assert 'route="zz:zz:yy"' not in (await client.get("/metrics")).text


async def test_reasons_and_notes_are_kept_to_their_length(client: httpx.AsyncClient,
                                                          ops: dict[str, str]) -> None:
    _refused(await client.post("/v1/ops/routes/va:xendit:bca/pause", headers=ops,
                               json={"reason": "x" * 3000}), 400)
    _refused(await client.post("/v1/reconciliation/matches", headers=ops, json={
        "mutation_id": "mut_x", "order_id": "ord_x", "reason": "x" * 3000}), 400)
    _refused(await client.post("/v1/reviews/rc_x/resolve", headers=ops,
                               json={"action": "honour", "note": "n" * 2001}), 400)
    _refused(await client.delete("/v1/ops/maintenance/mw_x", headers=ops,
                                 params={"reason": "r" * 3000}), 400, "reason_too_long")


@pytest.mark.parametrize(("when", "code"), [
    ({"starts_at": 1_796_000_000}, "malformed_request"),
    ({"ends_at": 1_796_000_000}, "malformed_request"),
    ({"starts_at": 1.5e9}, "malformed_request"),
    ({"starts_at": "tomorrow"}, "bad_datetime"),
    ({"starts_at": "2026-12-01T00:00:00"}, "naive_datetime"),
])
async def test_a_window_time_is_an_iso_8601_string_not_an_epoch_number(
    client: httpx.AsyncClient, ops: dict[str, str], when: dict[str, object], code: str,
) -> None:
    """An epoch number says nothing of the zone a person meant; a window is written as
    2026-12-01T00:00:00+07:00."""
    window = {"route": "va:*:*", "starts_at": "2026-12-01T00:00:00+07:00",
              "ends_at": "2026-12-01T02:00:00+07:00", "reason": "r", **when}
    _refused(await client.post("/v1/ops/maintenance", headers=ops, json=window), 400, code)


async def test_an_incident_body_longer_than_an_audit_reason_is_accepted(
    client: httpx.AsyncClient, ops: dict[str, str],
) -> None:
    r = await client.post("/v1/ops/status/incidents", headers=ops, json={
        "name": "Pesanan lambat", "components": ["intake"], "body": "b" * 2500})
    assert r.status_code == 201, r.text


async def test_a_window_with_no_utc_time_and_an_unknown_review_status_are_refused(
    client: httpx.AsyncClient, ops: dict[str, str],
) -> None:
    _refused(await client.post("/v1/ops/maintenance", headers=ops, json={
        "route": "va:*:*", "starts_at": "0001-01-01T00:00:00+14:00",
        "ends_at": "2026-12-01T00:00:00+07:00", "reason": "r"}), 400, "bad_datetime")
    _refused(await client.get("/v1/reviews", headers=ops, params={"status": "bogus"}), 400,
             "bad_status")


async def test_a_pushed_description_is_made_storable_not_refused(
    client: httpx.AsyncClient, container: Container,
) -> None:
    """Free text from the bank: refusing it would stall the feed that carries it, page after
    page, so an odd character is dropped instead."""
    shop = await new_merchant(container)
    item = _push_item(shop.account_number, description="TRSF\u0000 CR \ud800ANDI")
    body = json.dumps([item]).encode()
    signature = hmac.new(container.settings.mutation_push_secret.encode(), body,
                         hashlib.sha256).hexdigest()
    r = await client.post("/v1/mutations/push", content=body,
                          headers={"Signature": signature, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    async with container.db.read() as conn:
        stored = (await conn.execute(sa.select(mutations.c.description).where(
            mutations.c.account_number == shop.account_number))).scalars().all()
    assert stored == ["TRSF CR ?ANDI"]


async def test_a_statement_file_may_be_larger_than_other_bodies(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str], shop: ShopFixture,
) -> None:
    """Statement uploads keep their own, larger limit: a file over the usual 1 MiB is read (and
    judged as a statement, here refused whole), not turned away at the door."""
    limits = container.settings.http
    r = await _upload(client, ops, shop, b"x" * (limits.max_body_bytes * 2))
    _refused(r, 422, "statement_rejected")
    r = await _upload(client, ops, shop, b"x" * (limits.max_upload_bytes + 1))
    assert r.status_code == 413


async def test_a_corrected_push_of_a_set_aside_item_closes_it(
    client: httpx.AsyncClient, container: Container, ops: dict[str, str],
) -> None:
    shop = await new_merchant(container)

    async def push(item: dict[str, Any]) -> dict[str, Any]:
        r = await signed_push(client, container, [item])
        assert r.status_code == 200, r.text
        return dict(r.json())

    odd = _push_item(shop.account_number, amount="100.000,00")
    assert (await push(odd))["unreadable"] == 1
    assert (await push({**odd, "amount": "100000.00"}))["new"] == 1
    listed = (await client.get("/v1/reconciliation/unreadable", headers=ops,
                               params={"status": "read"})).json()["data"]
    assert [i["closed_by"] for i in listed if i["mutation_ref"] == odd["mutation_id"]] == ["feed"]


async def test_a_request_a_rule_refuses_is_named_for_what_it_is_not_an_invalid_order(
    client: httpx.AsyncClient, shop: ShopFixture, ops: dict[str, str],
) -> None:
    """Reviews, maintenance windows, incidents, dead letters and feed items answered 422
    ``invalid_order`` "Invalid order" (review): only an order is an invalid order."""
    refused = [
        (await client.post("/v1/reviews/rc_x/resolve", headers=ops,
                           json={"action": "honour", "note": " "}), "note"),
        (await client.post("/v1/ops/maintenance", headers=ops, json={
            "route": "va:xendit:*", "starts_at": "2020-01-01T00:00:00+07:00",
            "ends_at": "2020-01-02T00:00:00+07:00", "reason": "r"}), "ends_at"),
        (await client.post("/v1/ops/status/incidents", headers=ops, json={
            "name": "Pembayaran lambat", "components": ["intake"], "impact": "apocalyptic",
            "body": "b"}),
         "impact"),
        (await client.post("/v1/ops/outbox/dead/redeliver", headers=ops,
                           json={"event_ids": ["evt_x"], "reason": " "}), "reason"),
        (await client.post("/v1/reconciliation/unreadable/ufi_x/handled", headers=ops,
                           json={"note": " "}), "note"),
    ]
    for r, field in refused:
        problem = _refused(r, 422, "invalid_request")
        assert (problem["title"], problem["field"]) == ("Invalid request", field), problem
    body = {**order_body(f"INV-{uuid.uuid4().hex[:10]}"), "amount": 0}
    order = _refused(await _create(client, shop, json.dumps(body)), 422, "invalid_order")
    assert (order["title"], order["field"]) == ("Invalid order", "amount")


def _multipart(fields: list[tuple[str, bytes, str]]) -> tuple[bytes, dict[str, str]]:
    """A multipart body built byte for byte, as no client library sends it: (name, value, extra
    part headers) per field; a name ending in ``@`` is a file part."""
    parts = []
    for name, value, extra in fields:
        disposition = (f'form-data; name="{name[:-1]}"; filename="mutasi.csv"'
                       if name.endswith("@") else f'form-data; name="{name}"')
        parts.append(f"--zz\r\nContent-Disposition: {disposition}\r\n{extra}\r\n".encode()
                     + value + b"\r\n")
    return b"".join(parts) + b"--zz--\r\n", {"Content-Type": "multipart/form-data; boundary=zz"}


@pytest.mark.parametrize(("value", "extra"), [
    (b"\xff\xfe", ""),  # not UTF-8
    (b"bca", "Content-Type: text/plain; charset=no-such-charset\r\n"),
])
async def test_a_form_field_that_is_no_text_is_refused_not_a_500(
    client: httpx.AsyncClient, ops: dict[str, str], shop: ShopFixture, value: bytes, extra: str,
) -> None:
    """A form field litestar decodes as UTF-8 (or as the charset the part names) and cannot:
    the statement upload (finance) and the public order lookup answered 500."""
    statement = bca_statement(shop.account_number, [(datetime.now(UTC), "TRSF CR 2", 100_002,
                                                     "CR")])
    body, headers = _multipart([("bank", value, extra),
                                ("account_number", shop.account_number.encode(), ""),
                                ("file@", statement, "Content-Type: text/csv\r\n")])
    r = await client.post("/v1/mutations/statements", content=body, headers={**ops, **headers})
    _refused(r, 400, "malformed_form")
    body, headers = _multipart([("code", value, extra), ("contact", b"andi@example.co.id", "")])
    _refused(await client.post("/status/orders", content=body, headers=headers), 400,
             "malformed_form")


@pytest.mark.parametrize("number", ["1e99999999999999999999", "-1E-99999999999999999999",
                                    "1e999999999", "1E+1000000"])
async def test_a_pushed_number_no_decimal_can_hold_sets_its_item_aside(
    client: httpx.AsyncClient, container: Container, number: str,
) -> None:
    """An exponent past what ``Decimal`` takes raised ``decimal.InvalidOperation``, no
    ``ValueError``, out of the JSON decoder: a signed push answered 500 (and a feed page the
    same, every poll). The item is set aside like any other amount no bank sends."""
    shop = await new_merchant(container)
    odd = _push_item(shop.account_number, amount="PLACEHOLDER")
    body = json.dumps([odd, _push_item(shop.account_number)]).replace(
        '"PLACEHOLDER"', number).encode()
    signature = hmac.new(container.settings.mutation_push_secret.encode(), body,
                         hashlib.sha256).hexdigest()
    r = await client.post("/v1/mutations/push", content=body, headers={
        "Signature": signature, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert (r.json()["new"], r.json()["unreadable"]) == (1, 1)


@pytest.mark.parametrize(("top", "customer", "name"), [
    ('"amount":150000,"amount":1', '"phone":"+6281234567890"', "amount"),
    ('"amount":1,"amount":150000', '"phone":"+6281234567890"', "amount"),
    ('"amount":150000,"rail":"va","rail":"qris"', '"phone":"+6281234567890"', "rail"),
    ('"amount":150000', '"phone":"+6281234567890","phone":"+6289999999999"', "phone"),
])
async def test_a_name_sent_twice_in_an_order_is_refused_not_one_of_them_picked(
    client: httpx.AsyncClient, shop: ShopFixture, top: str, customer: str, name: str,
) -> None:
    """Two amounts in one order: the decoder kept the last, so an order a merchant's gateway or
    log read (first wins, in many parsers) as Rp150.000 was captured as Rp1 and paid as such.
    Which of two values counts is not something to charge on, as with two Idempotency-Keys."""
    order_id = f"INV-{uuid.uuid4().hex[:10]}"
    raw = (f'{{"merchant_order_id":"{order_id}",{top},"customer":{{"name":"Andi",'
           f'"email":"andi@example.co.id",{customer}}}}}')
    problem = _refused(await _create(client, shop, raw), 400, "repeated_name")
    assert f"'{name}'" in problem["detail"], problem


@pytest.mark.parametrize(("path", "raw", "name"), [
    ("/v1/orders/ord_unknown/payment", '{"rail":"qris","rail":"va"}', "rail"),
    ("/v1/reviews/rev_unknown/resolve",
     '{"action":"honour","note":"checked with the bank","action":"refund"}', "action"),
    ("/v1/ops/outbox/dead/redeliver",
     '{"merchant_id":"mch_a","reason":"endpoint fixed","merchant_id":"mch_b"}', "merchant_id"),
])
async def test_a_name_sent_twice_is_refused_on_every_json_route_before_anything_else(
    client: httpx.AsyncClient, shop: ShopFixture, path: str, raw: str, name: str,
) -> None:
    """The same rule for every JSON body, not the order alone: a person's tool that shows the
    first of two actions must not see the case resolved with the second. Refused before the
    route looks anything up or asks who is calling, like any body no handler can read."""
    problem = _refused(await client.post(path, content=raw.encode(), headers={
        **shop.headers, "Content-Type": "application/json"}), 400, "repeated_name")
    assert f"'{name}'" in problem["detail"], problem
