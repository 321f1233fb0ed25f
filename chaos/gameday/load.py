"""The load a game day runs under: checkouts on every rail, customers paying at the providers and by
bank transfer, statement imports, and the webhooks the providers send on their own.

Clients behave as a careful checkout frontend does: every capture carries an idempotency key; a
503, a timeout or a dropped connection is retried with the same key (honouring ``Retry-After``),
for up to ``retry_for_s``. An order counts as *acknowledged* only when a 2xx carrying its id came
back: those are the orders the rules of state must find at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from chaos.sim.statements import bca_statement
from orchestrator.domain.clock import WIB
from orchestrator.tls import default_trust

if TYPE_CHECKING:
    from chaos.gameday.stack import Stack

_XENDIT_KIND = {"va": "va", "qris": "qr", "ewallet": "ewallet"}
_CHANNEL = {"va": "bca", "ewallet": "ovo"}


@dataclass(kw_only=True)
class LoadSettings:
    checkouts_per_s: float = 6.0
    mix: dict[str, float] = field(default_factory=lambda: {
        "qris": 0.3, "va": 0.3, "ewallet": 0.15, "manual_transfer": 0.25})
    pay_fraction: float = 0.7
    amounts: list[int] = field(default_factory=lambda: [
        25_000, 49_000, 75_000, 150_000, 230_000, 499_000])
    expires_in_s: int = 900
    retry_for_s: float = 60.0
    statement_every_s: float = 4.0

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> LoadSettings:
        return cls(**body)


@dataclass
class LoadReport:
    started: int = 0
    acknowledged: set[str] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    retries_after_lost_reply: int = 0
    refused_retries: list[str] = field(default_factory=list)
    payments: Counter[str] = field(default_factory=Counter)
    paid_orders: set[str] = field(default_factory=set)
    customer_tried_to_pay: set[str] = field(default_factory=set)
    """Orders whose customer sent a payment at all (answered or not): an order paid outside this
    set was settled on something other than money (a forged webhook, a misapplied mutation)."""
    """Orders whose customer's payment the provider or the bank accepted: each must end paid (or
    with a person), never expired; a payment Lunas lost would show here."""
    statement_imports: int = 0
    statement_lines: int = 0
    reply_seconds: list[float] = field(default_factory=list)
    """How long each capture request that got an answer took (any status)."""

    def slowest_reply(self) -> float:
        return max(self.reply_seconds, default=0.0)

    def line(self) -> str:
        outs = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        pays = ", ".join(f"{k} {v}" for k, v in sorted(self.payments.items()))
        return (f"{self.started} checkouts ({outs}); slowest reply {self.slowest_reply():.2f} s; "
                f"{len(self.acknowledged)} acknowledged; "
                f"{self.retries_after_lost_reply} retried after a lost reply; payments: {pays}; "
                f"{self.statement_imports} statement imports ({self.statement_lines} lines)")


class Load:
    def __init__(self, stack: Stack, settings: LoadSettings, *, seed: int = 7) -> None:
        self.stack = stack
        self.settings = settings
        self.report = LoadReport()
        self._rng = random.Random(seed)
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        self._statement_lines: list[tuple[str, tuple[datetime, str, int, str]]] = []
        self._http = httpx.AsyncClient(verify=default_trust(),
                                       timeout=httpx.Timeout(5.0, connect=2.0))
        self.paid_midtrans: list[str] = []  # attempt ids paid at Midtrans (webhook storms)

    def start(self) -> None:
        self._main = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop starting checkouts; wait for the ones in flight (their retries included)."""
        self._stop.set()
        if self._main is not None:
            await self._main
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.retry_for_s + 30)
        await self._import_statement()
        await self._http.aclose()

    async def _run(self) -> None:
        gap = 1.0 / self.settings.checkouts_per_s
        next_import = time.monotonic() + self.settings.statement_every_s
        while not self._stop.is_set():
            self._spawn(self._checkout())
            if time.monotonic() >= next_import:
                next_import = time.monotonic() + self.settings.statement_every_s
                self._spawn(self._import_statement())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), gap)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- checkout ------------------------------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        rails, weights = zip(*self.settings.mix.items(), strict=True)
        rail = self._rng.choices(rails, weights)[0]
        body: dict[str, Any] = {
            "merchant_order_id": f"GD-{uuid.uuid4().hex[:12]}",
            "amount": self._rng.choice(self.settings.amounts),
            "rail": rail, "expires_in": self.settings.expires_in_s,
            "customer": {"name": "Andi Wijaya", "email": "andi@example.co.id",
                         "phone": "+6281234567890"},
        }
        if rail in _CHANNEL:
            body["channel"] = _CHANNEL[rail]
        return body

    async def _checkout(self) -> None:
        self.report.started += 1
        body = self._body()
        key = str(uuid.uuid4())
        headers = {"Authorization": f"Bearer {self.stack.api_key}", "Idempotency-Key": key}
        deadline = time.monotonic() + self.settings.retry_for_s
        lost_reply = False
        while True:
            sent = time.monotonic()
            try:
                r = await self._http.post(f"{self.stack.api_url}/v1/orders", json=body,
                                          headers=headers)
                self.report.reply_seconds.append(time.monotonic() - sent)
            except httpx.HTTPError as exc:
                self.report.outcomes[f"conn:{type(exc).__name__}"] += 1
                # Refused connections never reached the api; a read that failed may have.
                lost_reply = lost_reply or not isinstance(exc, httpx.ConnectError)
                wait = 0.5
            else:
                if 200 <= r.status_code < 300:  # 202: stored, instructions to follow
                    reply = r.json()
                    self.report.acknowledged.add(reply["id"])
                    self.report.outcomes[str(r.status_code)] += 1
                    if lost_reply:
                        self.report.retries_after_lost_reply += 1
                    if self._rng.random() < self.settings.pay_fraction:
                        await asyncio.sleep(self._rng.uniform(0.2, 2.0))
                        await self._pay(reply)
                    return
                self.report.outcomes[str(r.status_code)] += 1
                in_flight = r.status_code == 409 and "idempotency_key_in_flight" in r.text
                if r.status_code < 500 and r.status_code != 429 and not in_flight:
                    if lost_reply:  # a retry of a request whose reply was lost was refused
                        self.report.refused_retries.append(f"{r.status_code} {r.text[:120]}")
                    return
                wait = min(float(r.headers.get("Retry-After", "1")), 2.0)
            if time.monotonic() + wait > deadline:
                self.report.outcomes["gave_up"] += 1
                return
            await asyncio.sleep(wait)

    # -- customers paying ----------------------------------------------------------------------

    async def _pay(self, order: dict[str, Any]) -> None:
        payment = order.get("payment")
        if not payment:  # deferred: no instructions yet, nothing to pay
            self.report.payments["no_instructions"] += 1
            return
        provider = payment["route"]["provider"]
        self.report.customer_tried_to_pay.add(order["id"])
        if payment["rail"] == "manual_transfer":
            await self._transfer(order["id"], payment["account_number"],
                                 payment["transfer_amount"])
            return
        amount = payment.get("amount")
        for _ in range(20):  # the customer tries again while the provider's app is down
            try:
                if provider == "midtrans":
                    r = await self._http.post(
                        f"{self.stack.provider_control_url('midtrans')}/pay",
                        json={"order_id": payment["attempt_id"]})
                else:
                    kind = _XENDIT_KIND[payment["rail"]]
                    ref = "reference_id" if kind == "ewallet" else "external_id"
                    r = await self._http.post(
                        f"{self.stack.provider_control_url('xendit')}/pay",
                        json={"kind": kind, ref: payment["attempt_id"], "amount": amount})
            except httpx.HTTPError:
                await asyncio.sleep(1)
                continue
            if r.status_code < 300:
                self.report.payments[provider] += 1
                self.report.paid_orders.add(order["id"])
                if provider == "midtrans":
                    self.paid_midtrans.append(payment["attempt_id"])
                return
            await asyncio.sleep(1)
        self.report.payments[f"{provider}_failed"] += 1

    async def _transfer(self, order_id: str, account: str, amount: int) -> None:
        """Half the transfers reach Lunas through the Moota feed, half through statement imports;
        never both, as one real transfer appears in one of them."""
        # The bank dates the transfer by the game day's clock, the one Lunas runs on: with the
        # wall clock, a transfer made after the clock moved past midnight WIB would be dated the
        # day before its order existed.
        paid_at = self.stack.now()
        if self._rng.random() < 0.5:
            r = await self._http.post(
                f"{self.stack.provider_control_url('moota')}/mutations",
                json={"account_number": account, "amount": amount, "type": "CR",
                      "date": paid_at.astimezone(WIB).strftime("%Y-%m-%d %H:%M:%S"),
                      "description": f"TRSF E-BANKING CR 1003/FTSCY/WS95031 {amount}.00 ANDI"})
            self.report.payments["bank_feed" if r.status_code < 300 else "bank_feed_failed"] += 1
            if r.status_code < 300:
                self.report.paid_orders.add(order_id)
        else:
            self._statement_lines.append(
                (order_id, (paid_at,
                            f"TRSF E-BANKING CR 2811/FTSCY/WS95051 {amount}.00 BUDI",
                            amount, "CR")))
            self.report.payments["bank_statement"] += 1

    async def _import_statement(self) -> None:
        lines, self._statement_lines = self._statement_lines, []
        if not lines:
            return
        data = bca_statement(self.stack.payout_account[1], [line for _, line in lines])
        for _ in range(30):
            try:
                r = await self._http.post(
                    f"{self.stack.api_url}/v1/mutations/statements",
                    headers={"Authorization": f"Bearer {self.stack.ops_token}"},
                    files={"file": ("mutasi.csv", data, "text/csv")},
                    data={"bank": "bca", "account_number": self.stack.payout_account[1]})
            except httpx.HTTPError:
                await asyncio.sleep(1)
                continue
            if r.status_code == 201:
                self.report.paid_orders.update(order_id for order_id, _ in lines)
                self.report.statement_imports += 1
                self.report.statement_lines += len(lines)
                return
            if r.status_code < 500:
                raise RuntimeError(f"statement import refused: {r.status_code} {r.text[:300]}")
            await asyncio.sleep(1)
        self._statement_lines.extend(lines)  # try again with the next import

