"""A merchant's webhook URL is refused when no delivery could reach it, naming why; otherwise it
is kept as given (surrounding blanks trimmed)."""

from __future__ import annotations

import pytest

from orchestrator.services.webhook_endpoints import InvalidWebhookUrl, valid_webhook_url


@pytest.mark.parametrize("url", [
    "https://kopi.example.co.id/lunas",
    "http://127.0.0.1:8080/hooks",
    "https://hooks.kopi.example.co.id:8443/lunas?token=s3cret&shop=42",
    "HTTPS://KOPI.EXAMPLE.CO.ID/Lunas",
    "https://[::1]:9000/hooks",
    "https://kopi.example.co.id/" + "a" * 1973,  # 2000 characters
])
def test_an_absolute_http_url_with_a_host_is_kept_as_given(url: str) -> None:
    assert valid_webhook_url(url) == url
    assert valid_webhook_url(f"  {url}\n") == url


@pytest.mark.parametrize(("url", "why"), [
    ("", "empty"),
    ("   ", "empty"),
    ("kopi.example.co.id/lunas", "must start with https:// or http://"),
    ("ftp://kopi.example.co.id/lunas", "must start with https:// or http://"),
    ("javascript:alert(1)", "must start with https:// or http://"),
    ("https:///lunas", "names no host"),
    ("https://:8443/lunas", "names no host"),
    ("https://kopi.example.co.id:99999/lunas", "cannot be read"),
    ("https://kopi.example.co.id:port/lunas", "cannot be read"),
    ("https://[::1/lunas", "cannot be read"),
    ("https://kopi.example.co.id/lu nas", "whitespace or a control character"),
    ("https://kopi.example.co.id/lunas\r\nX-Injected: 1", "whitespace or a control character"),
    ("https://kopi.example.co.id/\x00", "whitespace or a control character"),
    ("https://kopi.example.co.id/" + "a" * 1974, "longer than 2000 characters"),
])
def test_a_url_no_delivery_could_reach_is_refused_naming_why(url: str, why: str) -> None:
    with pytest.raises(InvalidWebhookUrl, match=why):
        valid_webhook_url(url)
