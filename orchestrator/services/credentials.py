"""Secrets Lunas hands out once: merchant API keys, ops tokens and webhook signing secrets.

Keys carry 256 bits of randomness, so a single SHA-256 is a sound stored form (a slow password
hash buys nothing against a key no one can guess, and would cost every request).
"""

from __future__ import annotations

import hashlib
import secrets

MERCHANT_KEY_PREFIX = "lunas_sk_"
OPS_TOKEN_PREFIX = "lunas_ops_"  # noqa: S105 - a prefix, not a secret
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def new_merchant_key() -> str:
    return MERCHANT_KEY_PREFIX + secrets.token_urlsafe(32)


def new_ops_token() -> str:
    return OPS_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
