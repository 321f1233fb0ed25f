"""The HTTP layer's own refusal, apart from ``api.errors`` (which turns it into problem+json) so
that what raises it outside a request handler, the ``Authenticator`` every process builds, does
not bring litestar into a CLI command that serves nothing."""

from __future__ import annotations


class BadRequest(Exception):
    """A request the HTTP layer refuses before any use case runs."""

    def __init__(self, detail: str, *, status: int = 400, code: str = "bad_request",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail, self.status, self.code = detail, status, code
        self.headers = headers or {}
