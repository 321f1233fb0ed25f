"""The HTTP client merchant webhooks leave Lunas through (``lunas worker``'s relay)."""

from __future__ import annotations

from datetime import timedelta

import httpx


def webhook_client(timeout: timedelta) -> httpx.AsyncClient:
    """The client the relay's merchant webhook handler POSTs with. Redirects are not followed:
    a signed POST goes exactly where the merchant configured it."""
    return httpx.AsyncClient(timeout=timeout.total_seconds(), follow_redirects=False)
