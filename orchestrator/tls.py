"""The CA trust outbound HTTPS verifies against, loaded once per process.

httpx reads and parses the whole CA bundle again for every client built with its default
``verify=True``: about 20 ms of CPU on a fast machine, several times that on a slow one. Lunas
builds few clients, but the simulators build one each and the test suite hundreds a run, where
it was a fifth of the CPU an integration test file spent (cProfile, 2026-12-01). An
``ssl.SSLContext`` is meant to be shared by every connection made with it; nothing here changes
one after it is built."""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def default_trust(*, from_env: bool = True) -> ssl.SSLContext:
    """What httpx's ``verify=True`` builds: certifi's bundle, or ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` when ``from_env`` (httpx's ``trust_env``) and they are set."""
    return httpx.create_ssl_context(trust_env=from_env)
