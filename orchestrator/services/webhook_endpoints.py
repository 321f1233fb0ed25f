"""A merchant's webhook endpoint: the URL Lunas delivers to and the secret it signs with.

Both are read again on every delivery try (``notify/delivery.py``), so a change here reaches the
next try of every pending event, retries included; a new URL also has the merchant's webhooks
waiting for a retry tried at once (``outbox.writer.try_merchant_webhooks_now``): they failed
against the old one. Each change is audited in its own transaction.

Rotating the secret keeps the one it replaces for an overlap: until then every delivery carries
a signature under each (``t=…,v1=<new>,v1=<previous>``), and a merchant who deploys the new
secret at any moment of the overlap misses nothing. An overlap of zero drops the previous secret
at once, for one that leaked. A rotation during an overlap replaces the previous secret with the
current one: only the two newest ever sign, so a receiver still on the secret before those
fails from then on.

Where a URL may point is ``notify/egress.py``'s policy (``Settings.webhook_egress``): in
production a URL over plain ``http://``, or naming localhost or a non-public address literal, is
refused here, when it is set, with the reason; a name is resolved only at delivery, where every
try checks again (names move).

The audit log keeps neither secret nor full URL (a URL may carry the merchant's token): only
the URL's origin, and until when the previous secret signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa

from orchestrator.domain.errors import DomainError, NotFound
from orchestrator.notify.egress import OPEN, EgressPolicy, url_problem
from orchestrator.outbox.writer import try_merchant_webhooks_now
from orchestrator.services.audit import record_audit
from orchestrator.services.credentials import new_webhook_secret
from orchestrator.services.order_view import iso
from orchestrator.settings import MAX_WEBHOOK_SECRET_OVERLAP
from orchestrator.store.database import Database
from orchestrator.store.tables import merchants

MAX_URL = 2000
"""The width of ``merchants.webhook_url``."""


class InvalidWebhookUrl(DomainError):
    code = "invalid_webhook_url"


@dataclass(frozen=True, kw_only=True)
class RotatedSecret:
    """What ``lunas merchants rotate-secret`` prints once."""

    merchant_id: str
    webhook_secret: str
    previous_valid_until: datetime | None
    """Deliveries are signed under the replaced secret too until then; None: not at all."""


def valid_webhook_url(text: str, egress: EgressPolicy = OPEN) -> str:
    """``text`` as Lunas will POST to it, or ``InvalidWebhookUrl`` naming what is wrong.

    Refused here rather than by the delivery's HTTP client, where a bad URL would fail every try
    for a day before reaching the dead letters: an absolute http(s) URL with a host, at most
    ``MAX_URL`` characters, no whitespace or control characters (which would make it a
    different URL, or none, on the wire), a valid port, and one httpx can send to; and one
    ``egress`` allows (production's: https, no private address literal)."""
    url = text.strip()
    if not url:
        raise InvalidWebhookUrl("the webhook URL is empty")
    if len(url) > MAX_URL:
        raise InvalidWebhookUrl(f"the webhook URL is longer than {MAX_URL} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidWebhookUrl("the webhook URL contains whitespace or a control character")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise InvalidWebhookUrl(f"the webhook URL cannot be read: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidWebhookUrl("the webhook URL must start with https:// or http://")
    if not parts.hostname:
        raise InvalidWebhookUrl("the webhook URL names no host")
    if problem := url_problem(httpx.URL(url), egress):
        raise InvalidWebhookUrl(problem)
    return url


def _origin(url: str | None) -> str | None:
    """What the audit log keeps of a URL: scheme, host and port, never a path or query that
    may carry the merchant's token."""
    if not url:
        return None
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme.lower()}://{parts.hostname}{port}"


async def set_webhook_url(
    db: Database, *, merchant_id: str, url: str, actor: str, reason: str | None, now: datetime,
    egress: EgressPolicy,
) -> str:
    """Point the merchant's webhooks at ``url`` (validated, and allowed by ``egress``: the
    settings' ``webhook_egress``); returns it as stored."""
    url = valid_webhook_url(url, egress)
    m = merchants.c
    async with db.transaction() as conn:
        before = (await conn.execute(sa.select(m.webhook_url).where(m.id == merchant_id)
                                     .with_for_update())).first()
        if before is None:
            raise NotFound(f"no merchant {merchant_id}")
        await conn.execute(merchants.update().where(m.id == merchant_id)
                           .values(webhook_url=url))
        await try_merchant_webhooks_now(conn, merchant_id, now=now)
        await record_audit(conn, actor=actor, action="merchant.webhook_url_set",
                           subject_type="merchant", subject_id=merchant_id, reason=reason,
                           details={"from": _origin(before.webhook_url), "to": _origin(url)},
                           now=now)
    return url


async def rotate_webhook_secret(
    db: Database, *, merchant_id: str, overlap: timedelta, actor: str, reason: str | None,
    now: datetime,
) -> RotatedSecret:
    """A new signing secret for the merchant; the current one keeps signing beside it for
    ``overlap`` (zero: stops at once)."""
    if not timedelta(0) <= overlap <= MAX_WEBHOOK_SECRET_OVERLAP:
        raise DomainError(f"the overlap is 0 to {MAX_WEBHOOK_SECRET_OVERLAP.total_seconds():g} "
                          f"seconds, not {overlap.total_seconds():g}")
    secret = new_webhook_secret()
    until = now + overlap if overlap > timedelta(0) else None
    m = merchants.c
    async with db.transaction() as conn:
        # One statement reads the current secret and replaces it, so of two rotations at once
        # the second keeps the first's new secret as its previous (the row lock orders them).
        rotated = (await conn.execute(
            merchants.update().where(m.id == merchant_id).values(
                webhook_secret=secret,
                previous_webhook_secret=m.webhook_secret if until is not None else None,
                previous_webhook_secret_expires_at=until,
            ).returning(m.id))).first()
        if rotated is None:
            raise NotFound(f"no merchant {merchant_id}")
        await record_audit(conn, actor=actor, action="merchant.webhook_secret_rotated",
                           subject_type="merchant", subject_id=merchant_id, reason=reason,
                           details={"previous_valid_until": iso(until)}, now=now)
    return RotatedSecret(merchant_id=merchant_id, webhook_secret=secret,
                         previous_valid_until=until)
