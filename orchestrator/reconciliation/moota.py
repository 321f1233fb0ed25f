"""Moota-style signed mutation push (RAILS.md §3.2, §3.3): check its signature, then parse it.

The caller verifies ``Signature`` over the exact bytes received *before* parsing: the HMAC covers
the raw body, so a re-serialised body would not match, and an unsigned body must never reach the
parser or the matcher.

A body that is not a JSON array raises ``StatementRejected`` (``line`` ``None``), the same
"refused whole" error a statement upload raises, so the HTTP layer maps both in one place; Moota
can re-push it (``POST /mutation/{id}/webhook``) once the cause is fixed. An item of a good array
that is not a mutation Lunas can read (no id, an amount like ``"1.500.000,00 IDR"``) does not
refuse the others: it comes back as an ``UnreadableItem``, kept for a person
(``services/unreadable_feed_items.py``). Refusing the push whole would drop its readable
mutations with it when the push is the only source, and stall the feed page after page.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from orchestrator.domain.errors import StatementRejected
from orchestrator.domain.money import MAX_RUPIAH
from orchestrator.domain.text import MAX_NESTING, nests_deeper_than, text_problem
from orchestrator.reconciliation.statements.model import (
    Direction,
    balance_cell,
    direction_cell,
    positive,
    rupiah_cell,
    wib_to_utc,
)


@dataclass(frozen=True, kw_only=True)
class MootaMutation:
    """One pushed mutation. ``mutation_id`` is Moota's own dedupe key; ``posted_at`` is aware
    UTC (Moota's ``date`` is WIB, often ``00:00:00`` when the bank gives a date only).

    ``account_number`` is as Moota sent it; one payload shape sends it as a JSON number
    (``account_sent_as_number``), which has already lost any leading zero: the ingest reads
    such an item only where the number can stand for one payout account alone.

    ``bank_id`` is Moota's opaque id of the account it watches, not a bank; the bank is named
    only by the nested account's ``bank.bank_type`` (``bank_type`` here), which a webhook may
    leave out (RAILS.md §3.2). An account number alone does not say which bank: the same
    number can be an account at two banks.
    """

    mutation_id: str
    bank_id: str
    account_number: str
    posted_at: datetime
    amount: int
    direction: Direction
    description: str
    balance: int | None
    bank_type: str | None = None
    account_sent_as_number: bool = False


MOOTA_BANK_TYPES = {
    "bca": "bca", "bcaGiro": "bca",
    "bri": "bri", "briCms": "bri", "briGiro": "bri",
    "mandiri": "mandiri", "mandiriOnline": "mandiri", "mandiriBisnis": "mandiri",
    "mandiriMcm": "mandiri", "mandiriMcm2": "mandiri",
}
"""Moota ``bank_type`` values (RAILS.md §3.1 and Moota's SDK, less their ``V2`` suffix) of the
banks whose statements Lunas reads."""
OTHER_MOOTA_BANK_TYPES = frozenset({
    "bcaSyariah", "bni", "bniBisnis", "bniSyariah", "bniBisnisSyariah", "briSyariah",
    "briSyariahCms", "bsi", "bsiGiro", "mandiriSyariah", "mandiriSyariahBisnis",
    "mandiriSyariahMcm", "mayBank", "megaSyariahCms", "muamalat", "gojek", "ovo",
})
"""The other banks and wallets Moota names: accounts of their own, never one at BCA, BRI or
Mandiri with the same number (the Syariah banks included)."""


def bank_of_type(bank_type: str) -> str | None:
    """The bank Lunas books a mutation of this Moota ``bank_type`` to: ``bca``, ``bri`` or
    ``mandiri``; for another bank Moota names, the type itself in lower case (``bsi``,
    ``bni``), where the mutation is stored for finance and matches no order. None for a type
    Lunas does not know (a variant Moota added since): it says nothing, and the account number
    decides as when no type is given, rather than a BCA transfer going unmatched for ever."""
    base = bank_type.removesuffix("V2")
    if base in MOOTA_BANK_TYPES:
        return MOOTA_BANK_TYPES[base]
    return base.lower()[:32] if base in OTHER_MOOTA_BANK_TYPES else None


_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


def verify_moota_signature(secret: str, raw_body: bytes, signature_header: str | None) -> bool:
    """True iff ``signature_header`` is hex HMAC-SHA256 of ``raw_body`` keyed with ``secret``.

    Compared in constant time. A missing, malformed or wrong header is simply ``False`` (the
    caller answers 401 either way); so is an empty ``secret``, because an unconfigured key must
    never make a forged push verify.
    """
    if not secret or signature_header is None:
        return False
    candidate = signature_header.strip()
    if not _SIGNATURE.fullmatch(candidate):
        return False
    expected = hmac.new(secret.encode("utf-8"), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, candidate.lower())


@dataclass(frozen=True, kw_only=True)
class UnreadableItem:
    """A listed or pushed item that is not a mutation Lunas can read, as received, with why."""

    raw: str
    """The item as canonical JSON (sorted keys, ASCII escapes): storable, and the same text
    every time the same item arrives."""
    problem: str
    mutation_ref: str | None
    """The item's own ``mutation_id`` (or ``token``), when it has a usable one."""

    @property
    def key(self) -> str:
        return hashlib.sha256(self.raw.encode("ascii")).hexdigest()


@dataclass(frozen=True, kw_only=True)
class MootaItems:
    mutations: list[MootaMutation]
    unreadable: tuple[UnreadableItem, ...] = ()


MAX_REF = 200
"""Longest mutation id an unreadable item is remembered by (Moota's are ~11 characters)."""


def parse_moota_push(raw_body: bytes) -> MootaItems:
    """The mutations of a push body (a JSON array of mutation objects), in order, and the items
    that are not readable mutations."""
    try:
        items = decode_moota_json(raw_body)
    except ValueError as exc:
        raise StatementRejected(f"the push body is not valid JSON ({exc})") from exc
    if not isinstance(items, list):
        raise StatementRejected("the push body must be a JSON array of mutation objects")
    return read_moota_items(items)


def decode_moota_json(raw: bytes) -> Any:
    """A push body or a feed page, decoded. ``ValueError`` when it is not JSON, or nests deeper
    than ``MAX_NESTING``: json.loads reads a value nested almost to the recursion limit, but
    keeping one of its items for a person writes it back as JSON, which runs out of stack there.
    A mutation nests two levels."""
    try:
        # Decimal keeps a JSON number like 150123.00 exact; a float could hide a sen part.
        value = json.loads(raw, parse_float=_exact_number)
    except RecursionError as exc:
        raise ValueError(f"it nests deeper than {MAX_NESTING} levels") from exc
    if nests_deeper_than(value, MAX_NESTING):
        raise ValueError(f"it nests deeper than {MAX_NESTING} levels")
    return value


def _exact_number(text: str) -> Decimal | float:
    """A JSON number with a fraction or an exponent, exact. One whose exponent ``Decimal``
    refuses (``1e99999999999999999999``: ``InvalidOperation``, no ``ValueError``) is no amount
    any bank sends: it is read as the float it rounds to (inf, or 0.0), which no field of a
    mutation takes, so its item is set aside for a person and the rest of the body is read."""
    try:
        return Decimal(text)
    except InvalidOperation:
        return float(text)


def read_moota_items(items: Iterable[object]) -> MootaItems:
    """Each item read on its own: a push's array or a feed page's ``data``."""
    mutations: list[MootaMutation] = []
    unreadable: list[UnreadableItem] = []
    for number, item in enumerate(items, start=1):
        try:
            mutations.append(parse_moota_item(item, index=number))
        except StatementRejected as exc:
            unreadable.append(unreadable_item(item, exc.reason))
    return MootaItems(mutations=mutations, unreadable=tuple(unreadable))


def unreadable_item(item: object, problem: str) -> UnreadableItem:
    """``item`` as kept for a person; its id only if usable to recognise a corrected version."""
    raw = json.dumps(item, sort_keys=True, ensure_ascii=True, default=str)
    ref: object = None
    if isinstance(item, dict):
        ref = item.get("mutation_id", item.get("token"))
    text = str(ref).strip() if isinstance(ref, str | int) and not isinstance(ref, bool) else ""
    usable = bool(text) and len(text) <= MAX_REF and text.isprintable()
    return UnreadableItem(raw=raw, problem=problem[:500], mutation_ref=text if usable else None)


def parse_moota_item(item: object, *, index: int) -> MootaMutation:
    """One Moota mutation object, as pushed or as listed by the feed (the same shape)."""
    if not isinstance(item, dict):
        raise StatementRejected("each mutation must be a JSON object", line=index)
    # RAILS.md §3.2: some payloads call mutation_id "token".
    id_field = "token" if "mutation_id" not in item and "token" in item else "mutation_id"
    amount = _money(_field(item, "amount", index), "amount", index)
    return MootaMutation(
        mutation_id=_text(item, id_field, index),
        bank_id=_text(item, "bank_id", index),
        account_number=_account_number(item, index),
        posted_at=wib_to_utc(_date(_text(item, "date", index), index)),
        amount=positive(amount, column="amount", line=index),
        direction=direction_cell(_text(item, "type", index), column="type", line=index),
        description=_description(item),
        balance=_balance(item.get("balance"), index),
        bank_type=_bank_type(item),
        account_sent_as_number=isinstance(item["account_number"], int),
    )


def _bank_type(item: dict[str, Any]) -> str | None:
    """``bank.bank_type`` when the item names it as text; anything else says nothing."""
    bank = item.get("bank")
    named = bank.get("bank_type") if isinstance(bank, dict) else None
    if not isinstance(named, str) or not named.strip() or text_problem(named.strip()):
        return None
    return named.strip()[:64]


def _field(item: dict[str, Any], name: str, index: int) -> object:
    value = item.get(name)
    if value is None or value == "":
        raise StatementRejected(f"the mutation has no {name!r}", line=index)
    return value


def _text(item: dict[str, Any], name: str, index: int) -> str:
    """A string field; an integer is accepted too (ids and account numbers arrive as both)."""
    value = _field(item, name, index)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise StatementRejected(f"{name!r} must be a string, got {value!r:.50}", line=index)
    return _storable(str(value).strip(), name, index)


def _storable(text: str, name: str, index: int) -> str:
    if problem := text_problem(text):
        raise StatementRejected(f"{name!r} {problem}", line=index)
    return text


def _balance(value: object, index: int) -> int | None:
    """A running balance, negative when overdrawn; absent or blank means Moota sent none, as a
    blank balance cell of a statement does (``balance_cell``), never a balance of Rp0."""
    if isinstance(value, str):
        return balance_cell(value, column="balance", line=index)
    return None if value is None else _money(value, "balance", index, signed=True)


def _money(value: object, name: str, index: int, *, signed: bool = False) -> int:
    """Whole rupiah from ``"100123.00"``, ``"10000"`` or a JSON number; never rounds a sen.
    ``signed`` lets a JSON number be negative (a string balance goes through ``_balance``)."""
    if isinstance(value, str):
        return rupiah_cell(value, column=name, line=index)
    if isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, Decimal) and value.is_finite():
        number = value
    else:
        raise StatementRejected(f"{name} {value!r} is not an amount", line=index)
    if number != number.to_integral_value():
        raise StatementRejected(f"{name} {value} has a non-zero sen part", line=index)
    if number < 0 and not signed:
        raise StatementRejected(f"{name} {value} is negative", line=index)
    if number.copy_abs() > MAX_RUPIAH:  # abs() rounds to the context: Overflow past 1E+999999
        raise StatementRejected(f"{name} {value} is beyond {MAX_RUPIAH:,} rupiah", line=index)
    return int(number)


def _account_number(item: dict[str, Any], index: int) -> str:
    account = _text(item, "account_number", index)
    if len(account) > 40:  # the column's width; anything longer is not an account number
        raise StatementRejected(f"account_number {account[:50]!r} is not a bank account number",
                                line=index)
    return account


def _description(item: dict[str, Any]) -> str:
    """Free text, kept as the bank wrote it, made storable rather than refused: a description
    is no reason to set a whole mutation aside for a person."""
    text = str(item.get("description") or "").replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")


def _date(text: str, index: int) -> datetime:
    try:
        posted = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError as exc:
        raise StatementRejected(f"date {text!r} is not 'YYYY-MM-DD HH:MM:SS'", line=index) from exc
    if posted.year < 1970:
        raise StatementRejected(f"date {text!r} is before 1970; no mutation is that old",
                                line=index)
    return posted
