"""Structured logs: one JSON object per record with the order, attempt and trace ids, and no
secret or full account number ever written, whatever field or message it hides in."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from orchestrator.settings import TelemetrySettings
from orchestrator.telemetry import logging as log_setup
from orchestrator.telemetry import tracing
from orchestrator.telemetry.logging import REDACTED, JsonFormatter, TextFormatter, redact_text

VA = "8808123456789012"
SERVER_KEY = "SB-Mid-server-AbCdEf123456"
XENDIT_KEY = "xnd_development_P4qDfOss0OCpl8RtKrROHjaQYNCk9dN5lSfk"


def record(message: str, *args: object, exc: BaseException | None = None,
           **extra: Any) -> logging.LogRecord:
    rec = logging.getLogger("lunas.test").makeRecord(
        "lunas.test", logging.WARNING, __file__, 1, message, args,
        (type(exc), exc, exc.__traceback__) if exc else None, extra=extra)
    return rec


def as_json(rec: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(rec)
    assert "\n" not in line  # one record, one line
    doc: dict[str, Any] = json.loads(line)
    return doc


@pytest.fixture
def traced() -> Iterator[TracerProvider]:
    provider = TracerProvider()
    tracing.use(provider)
    try:
        yield provider
    finally:
        tracing.use(None)


def test_a_record_is_one_json_object_with_its_ids_first() -> None:
    doc = as_json(record("payment applied for %s", "ord_1", order_id="ord_1",
                         attempt_id="att_1", evidence="provider_webhook"))
    assert doc["message"] == "payment applied for ord_1"
    assert (doc["level"], doc["logger"]) == ("WARNING", "lunas.test")
    assert doc["time"].endswith("Z")
    assert list(doc)[4:7] == ["order_id", "attempt_id", "evidence"]
    assert (doc["order_id"], doc["attempt_id"]) == ("ord_1", "att_1")
    assert "trace_id" not in doc  # no span is current


def test_the_current_span_gives_trace_and_span_ids(traced: TracerProvider) -> None:
    with tracing.span("settlement") as span:
        doc = as_json(record("settled", order_id="ord_1"))
        ctx = span.get_span_context()
    assert doc["trace_id"] == format(ctx.trace_id, "032x")
    assert doc["span_id"] == format(ctx.span_id, "016x")
    assert list(doc)[4:7] == ["order_id", "trace_id", "span_id"]


@pytest.mark.parametrize(("field", "value"), [
    ("server_key", SERVER_KEY),
    ("midtrans_server_key", SERVER_KEY),
    ("xendit_secret_key", XENDIT_KEY),
    ("callback_token", "dev-xendit-callback-token"),
    ("signature_key", "9f86d081884c7d659a2feaa0c55ad015"),
    ("authorization", "Basic U0ItTWlkLXNlcnZlcjo="),
    ("webhook_secret", "whsec_abc"),
    ("api_key", "lunas_sk_abc"),
])
def test_secret_fields_are_redacted(field: str, value: str) -> None:
    doc = as_json(record("calling provider", **{field: value}))
    assert doc[field] == REDACTED
    assert value not in json.dumps(doc)


def test_secrets_nested_in_headers_are_redacted_and_other_headers_kept() -> None:
    doc = as_json(record("webhook in", headers={
        "Authorization": "Bearer lunas_sk_abcdef", "x-callback-token": "tok-123",
        "content-type": "application/json"}))
    assert doc["headers"] == {"Authorization": REDACTED, "x-callback-token": REDACTED,
                              "content-type": "application/json"}


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("va_number", VA, "************9012"),
    ("account_number", "0123456789", "******6789"),
    ("bank_account_number", 1234567890123, "*********0123"),
    ("payout_account_number", "0123456789", "******6789"),
])
def test_account_numbers_keep_only_their_last_four_digits(field: str, value: object,
                                                           shown: str) -> None:
    assert as_json(record("issued", **{field: value}))[field] == shown


def test_customer_contact_is_masked() -> None:
    doc = as_json(record("captured", customer_email="andi@example.co.id",
                         customer_phone="+6281234567890"))
    assert doc["customer_email"] == "a***@example.co.id"
    assert doc["customer_phone"].endswith("7890") and "81234567" not in doc["customer_phone"]


@pytest.mark.parametrize(("text", "leaked"), [
    (f"GET /v2/x/status with Authorization: Basic {'QUJDREVGR0hJSktMTU5PUA=='}",
     "QUJDREVGR0hJSktMTU5PUA=="),
    ("headers={'authorization': 'Bearer lunas_ops_s3cr3tvalue'}", "s3cr3tvalue"),
    (f"server_key={SERVER_KEY} rejected", SERVER_KEY),
    ('{"signature_key": "deadbeefcafe1234", "order_id": "att_1"}', "deadbeefcafe1234"),
    ("x-callback-token: tok-should-not-show", "tok-should-not-show"),
    (f"xendit refused key {XENDIT_KEY}", XENDIT_KEY),
    (f"transfer to VA {VA} for order ord_1", VA),
    ("rekening 0123456789 a.n. TOKO", "0123456789"),
    ('midtrans 400: {"email": "andi.wijaya@example.co.id"} is invalid', "andi.wijaya"),
    ("customer siti+toko@mail.example.com not found", "siti+toko"),
    ("GET /v1/customers?email=andi.w%40example.co.id failed", "andi.w"),
    ("to _andi_@example.co.id and andi&siti@example.co.id", "siti"),
])
def test_secrets_and_account_numbers_in_messages_are_redacted(text: str, leaked: str) -> None:
    doc = as_json(record(text))
    assert leaked not in doc["message"]
    assert leaked not in redact_text(text)


def test_a_message_keeps_what_is_not_secret() -> None:
    text = "order ord_01M8HC18YPNWC3RYK4JT9EP7SE paid 150000 after 3 tries at 2026-11-28T10:00Z"
    assert as_json(record(text))["message"] == text
    assert redact_text(f"VA {VA}") == "VA ************9012"
    assert redact_text("to andi@example.co.id") == "to a***@example.co.id"


def test_exception_text_is_redacted() -> None:
    try:
        raise RuntimeError(f"provider said no to server_key={SERVER_KEY} for VA {VA}")
    except RuntimeError as exc:
        doc = as_json(record("call failed", exc=exc, attempt_id="att_1"))
    assert "RuntimeError" in doc["exception"]
    assert SERVER_KEY not in doc["exception"] and VA not in doc["exception"]


def test_text_format_is_redacted_too() -> None:
    line = TextFormatter().format(record(f"VA {VA}", order_id="ord_1", server_key=SERVER_KEY))
    assert VA not in line and SERVER_KEY not in line
    assert "order_id=ord_1" in line and "************9012" in line


def test_configure_installs_one_handler_that_writes_json() -> None:
    root = logging.getLogger()
    level = root.level
    first = log_setup.configure(TelemetrySettings(), stream=io.StringIO())
    out = io.StringIO()
    try:
        second = log_setup.configure(TelemetrySettings(log_level="WARNING"), stream=out)
        assert first not in root.handlers and second in root.handlers
        logging.getLogger("lunas.capture").warning(
            "deferred", extra={"order_id": "ord_9", "va_number": VA})
        logging.getLogger("lunas.capture").info("below the level")
    finally:
        root.removeHandler(second)
        root.setLevel(level)
    [line] = out.getvalue().splitlines()
    doc = json.loads(line)
    assert (doc["message"], doc["order_id"], doc["va_number"]) == (
        "deferred", "ord_9", "************9012")
