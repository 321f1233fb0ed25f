"""Structured, redacted logs: one JSON object per line with the order, attempt and trace ids.

Every record passes through ``redact`` before it is written, whatever the format:

- **by field** (``extra=`` keys, nested mappings such as headers): secrets — server keys,
  secret keys, callback tokens, signature keys, ``Authorization``, API keys, webhook secrets,
  passwords — become ``[REDACTED]``; account and VA numbers keep their last four digits; a
  customer's email and phone are masked.
- **in free text** (the message, exception text): ``Authorization`` values, ``key=value`` /
  ``"key": "value"`` pairs naming a secret, the known key formats (Midtrans ``Mid-server-``,
  Xendit ``xnd_``, Lunas ``lunas_sk_`` / ``lunas_ops_`` / ``whsec_``), email addresses masked
  as the email field is, and bare runs of 10-19 digits (account, VA and card numbers) masked to
  their last four.

The redaction is a safety net, not a licence: code still keeps secrets out of messages.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from orchestrator.settings import TelemetrySettings
from orchestrator.telemetry import tracing

REDACTED = "[REDACTED]"
HANDLER_NAME = "lunas"
FIRST_FIELDS = ("order_id", "attempt_id", "trace_id", "span_id")
"""Written first, when present, so a person scanning lines finds them in one place."""

_SECRET_KEY = re.compile(
    r"authorization|server[_-]?key|secret|token|signature|password|passwd|api[_-]?key|cookie",
    re.IGNORECASE)
_ACCOUNT_KEY = re.compile(
    r"va[_-]?number|account[_-]?(number|no)|bank[_-]?account|rekening|^account$|card[_-]?number",
    re.IGNORECASE)
_EMAIL_KEY = re.compile(r"e-?mail", re.IGNORECASE)
_PHONE_KEY = re.compile(r"phone|msisdn|mobile", re.IGNORECASE)

_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Authorization: Basic abc", "authorization=Bearer abc"
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:basic|bearer)\s+)?[^\s\"',;}]+"),
     rf"\1{REDACTED}"),
    (re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {REDACTED}"),
    # server_key=..., "signature_key": "...", x-callback-token: ...
    (re.compile(r"(?i)([\w-]*(?:server[_-]?key|secret[_-]?key|secret|token|signature[_-]?key"
                r"|signature|api[_-]?key|password)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"),
     rf"\1{REDACTED}"),
    (re.compile(r"\b(?:SB-)?Mid-(?:server|client)-[\w-]+"), REDACTED),
    (re.compile(r"\bxnd_(?:development|production|public)_[\w-]+"), REDACTED),
    (re.compile(r"\b(?:lunas_sk_|lunas_ops_|whsec_)[\w-]+"), REDACTED),
)
_DIGIT_RUN = re.compile(r"(?<![\w.])\d{10,19}(?![\w.])")
# A customer's email in a message (a provider's error quoting the request, say): masked as the
# customer_email field is, first character and domain kept.
# The local part may hold any of RFC 5322's atom characters; "%40" is the @ in a URL (an httpx
# error quotes the request URL).
_EMAIL = re.compile(r"(?<![\w.!#$%&'*+/=?^`{|}~-])([\w!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]*"
                    r"(?:@|%40)([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)\b")


def mask_number(value: str) -> str:
    """All but the last four characters hidden: ``8808123456789012`` → ``************9012``."""
    text = value.strip()
    if len(text) <= 4:
        return "*" * len(text)
    return "*" * (len(text) - 4) + text[-4:]


def _mask_email(value: str) -> str:
    local, at, domain = value.partition("@")
    return f"{local[:1]}***@{domain}" if at else mask_number(value)


def redact_text(text: str) -> str:
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    text = _EMAIL.sub(r"\1***@\2", text)
    return _DIGIT_RUN.sub(lambda m: mask_number(m.group(0)), text)


def redact(key: str, value: Any) -> Any:
    """``value`` as it may be logged under ``key``; walks mappings and sequences."""
    if value is None or isinstance(value, bool):
        return value
    if _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(key, v) for v in value]
    if _ACCOUNT_KEY.search(key) and isinstance(value, str | int):
        return mask_number(str(value))
    if _EMAIL_KEY.search(key) and isinstance(value, str):
        return _mask_email(value)
    if _PHONE_KEY.search(key) and isinstance(value, str | int):
        return mask_number(str(value))
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, int | float):
        return value
    return redact_text(str(value))


_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context, redacted: its ``extra=`` fields plus the current trace and span
    ids (an explicit ``trace_id`` extra wins)."""
    extra = {k: v for k, v in vars(record).items()
             if k not in _STANDARD and not k.startswith("_") and v is not None}
    current = tracing.ids()
    if current is not None and "trace_id" not in extra:
        extra["trace_id"], extra["span_id"] = current
    ordered = {k: extra.pop(k) for k in FIRST_FIELDS if k in extra}
    ordered.update(sorted(extra.items()))
    return {k: redact(k, v) for k, v in ordered.items()}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, context
    fields, and the exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        doc.update(fields(record))
        if record.exc_info:
            doc["exception"] = redact_text(self.formatException(record.exc_info))
        if record.stack_info:
            doc["stack"] = redact_text(self.formatStack(record.stack_info))
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines (``LUNAS_LOG_FORMAT=text``), context as ``key=value``, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{k}={v}" for k, v in fields(record).items())
        return redact_text(f"{line} {context}" if context else line)


def configure(settings: TelemetrySettings, *, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to stderr (or ``stream``) through the redacting formatter.

    Replaces a handler this function installed before, leaves any other handler alone."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # httpx logs every request at INFO (the provider-call metrics and spans already say that);
    # alembic logs its plugins as it is imported.
    quiet = logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING
    for chatty in ("httpx", "httpcore", "alembic"):
        logging.getLogger(chatty).setLevel(quiet)
    return handler
