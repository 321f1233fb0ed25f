"""Signatures on outbound merchant webhooks: HMAC-SHA256 over the timestamp and the raw body.

Headers sent with every delivery::

    Lunas-Event-Id:  evt_...            (stable across retries: deduplicate on it)
    Lunas-Timestamp: 1767225600         (unix seconds at this delivery try)
    Lunas-Signature: t=1767225600,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

Signing the timestamp with the body lets a receiver refuse replays older than its tolerance.

While a rotated secret's overlap lasts, every delivery is signed under both secrets, the new one
first: ``t=<t>,v1=<new>,v1=<previous>``. A receiver still holding the previous secret and one
already switched both verify, because ``verify`` accepts the header when any ``v1=`` entry
matches its own secret; so a merchant can deploy the new secret at any moment in the overlap.
"""

from __future__ import annotations

import hashlib
import hmac

EVENT_ID_HEADER = "Lunas-Event-Id"
TIMESTAMP_HEADER = "Lunas-Timestamp"
SIGNATURE_HEADER = "Lunas-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300
"""Seconds a receiver accepts between the signed timestamp and its own clock, either way."""


def signature(secret: str | bytes, body: bytes, ts: int) -> str:
    """Hex HMAC-SHA256 of ``f"{ts}.{body}"`` under ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def sign(
    secret: str | bytes, body: bytes, ts: int, *, previous: str | bytes | None = None
) -> dict[str, str]:
    """The timestamp and signature headers for one delivery of ``body``; with ``previous`` (a
    rotated secret still in its overlap), a second ``v1`` under it, after the current one."""
    keys = (secret,) if previous is None else (secret, previous)
    signed = ",".join(f"{SCHEME}={signature(key, body, ts)}" for key in keys)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: f"t={ts},{signed}"}


def verify(
    secret: str | bytes,
    body: bytes,
    header: str,
    now_ts: int,
    tolerance: int = DEFAULT_TOLERANCE,
) -> bool:
    """True when ``header`` (a ``Lunas-Signature`` value) signs ``body`` under ``secret`` with a
    timestamp within ``tolerance`` seconds of ``now_ts``. Malformed headers are simply false."""
    parsed = _parse(header)
    if parsed is None:
        return False
    ts, candidates = parsed
    if abs(now_ts - ts) > tolerance:
        return False
    expected = signature(secret, body, ts).encode()
    # Bytes, because compare_digest refuses non-ASCII str; every candidate is compared so the
    # time taken does not reveal which one matched.
    matches = [hmac.compare_digest(expected, c.encode()) for c in candidates]
    return any(matches)


def _parse(header: str) -> tuple[int, list[str]] | None:
    ts: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            if ts is not None or not (value.isascii() and value.isdigit()):
                return None
            ts = int(value)
        elif key == SCHEME:
            candidates.append(value)
    if ts is None or not candidates:
        return None
    return ts, candidates
