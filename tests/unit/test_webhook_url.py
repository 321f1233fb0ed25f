"""A merchant's webhook URL is refused when no delivery could reach it, naming why; otherwise it
is kept as given (surrounding blanks trimmed)."""

from __future__ import annotations

import re

import pytest

from orchestrator.services.webhook_endpoints import InvalidWebhookUrl, valid_webhook_url
from orchestrator.settings import Settings, WebhookSettings


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


PRODUCTION = Settings(environment="production").webhook_egress


@pytest.mark.parametrize(("url", "why"), [
    ("http://kopi.example.co.id/lunas", "must use https:// in production"),
    ("https://127.0.0.1:8443/hooks", "127.0.0.1, not a public address"),
    ("https://10.1.2.3/lunas", "10.1.2.3, not a public address"),
    ("https://192.168.1.10/lunas", "192.168.1.10, not a public address"),
    ("https://169.254.169.254/latest/meta-data", "169.254.169.254, not a public address"),
    ("https://[::1]:9000/hooks", "::1, not a public address"),
    ("https://[::ffff:10.0.0.1]/hooks", "not a public address"),
    ("https://[fd00::5]/hooks", "fd00::5, not a public address"),
    ("https://localhost/hooks", "localhost"),
    ("https://hooks.localhost./lunas", "localhost"),
])
def test_production_refuses_a_url_in_clear_or_naming_a_non_public_address(
    url: str, why: str,
) -> None:
    with pytest.raises(InvalidWebhookUrl, match=re.escape(why)):
        valid_webhook_url(url, PRODUCTION)
    assert valid_webhook_url(url) == url  # development: the demo's receivers are on loopback


def test_production_keeps_a_public_https_url_and_its_settings_let_the_rest() -> None:
    assert valid_webhook_url("https://kopi.example.co.id/lunas", PRODUCTION)
    assert valid_webhook_url("https://203.0.113.7.nip.io/lunas", PRODUCTION)  # names: at delivery
    lenient = Settings(environment="production",
                       webhooks=WebhookSettings(allow_http=True, allow_private=True))
    assert valid_webhook_url("http://10.1.2.3:8080/lunas", lenient.webhook_egress)
