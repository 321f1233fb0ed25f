"""Bank mutations in: statement uploads by finance (ops token) and Moota-style signed pushes."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from litestar import Controller, Request, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency

from orchestrator.api.errors import BadRequest
from orchestrator.api.input_guard import read_form, refuse_unstorable_url
from orchestrator.api.openapi import Answer, contract, problem
from orchestrator.bootstrap import Container
from orchestrator.reconciliation.moota import verify_moota_signature

_REJECTED = problem("statement_rejected: the file (or push) cannot be read whole; nothing was "
                    "imported (`line` names the first line refused).")
STATEMENTS = contract("ops", body=True, answers={
    201: Answer(description="What the statement added: parsed, new, duplicate, matched, ..."),
    400: problem("file_required, statement_fields_required, malformed_form (a field is not "
                 "UTF-8 text), or a malformed request."),
    413: problem("The file is larger than LUNAS_MAX_UPLOAD_BYTES."),
    415: problem("unsupported_media_type: send multipart/form-data."),
    422: _REJECTED})
PUSH = contract(None, body=True, answers={
    200: Answer(description="What the push added"),
    401: problem("bad_signature: the Signature header does not match the body."),
    422: _REJECTED})

class MutationsController(Controller):
    path = "/v1/mutations"
    tags = ("reconciliation",)

    @post("/statements", status_code=201, summary="Import a bank statement export (multipart)",
          responses=STATEMENTS.responses, operation_class=STATEMENTS.operation)
    async def import_statement(
        self, request: Request[Any, Any, Any], container: NamedDependency[Container]
    ) -> dict[str, Any]:
        principal = await container.auth.ops(request, "reconciliation")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadRequest("send multipart/form-data with fields file, bank, account_number",
                             status=415, code="unsupported_media_type")
        form = await read_form(request)
        upload, bank, account = form.get("file"), form.get("bank"), form.get("account_number")
        if not isinstance(upload, UploadFile):
            raise BadRequest("the 'file' field must be the statement file", code="file_required")
        if not isinstance(bank, str) or not bank or not isinstance(account, str) or not account:
            raise BadRequest("fields 'bank' and 'account_number' are required",
                             code="statement_fields_required")
        data = await upload.read()
        report = await container.reconciliation.import_statement(
            bank=bank, account_number=account.strip(), data=data,
            filename=_kept_filename(upload.filename),
            actor=f"ops:{principal.name}",
        )
        return asdict(report)

    @post("/push", status_code=200, summary="Moota-style signed mutation push",
          responses=PUSH.responses, operation_class=PUSH.operation,
          before_request=refuse_unstorable_url)
    async def push(
        self, request: Request[Any, Any, Any], container: NamedDependency[Container]
    ) -> dict[str, Any]:
        raw = await request.body()
        if not verify_moota_signature(container.settings.mutation_push_secret, raw,
                                      request.headers.get("signature")):
            raise BadRequest("the Signature header does not match the body", status=401,
                             code="bad_signature")
        report = await container.reconciliation.ingest_push(raw)
        return asdict(report)


def _kept_filename(name: str | None) -> str | None:
    """The name as the uploader's browser sent it, for people to recognise the file: never a
    path Lunas opens, so it is only made storable (no NUL, at most the column's 300 characters)."""
    if not name:
        return None
    return name.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:300] or None
