"""Vast's root certificate as the console serves it: ``GET /static/jvastai_root.cer``.

The official client downloads it from there on first use (``vastai`` 1.9.1,
``serverless/client/client.py``, ``SSL_CERT_URL``) and so does the daemon when no
``vast.ca_bundle`` is configured. The emulator serves the root it is given
(``emulator.tls_root_cert``, a PEM file, or :attr:`TlsRoot.pem` set by a test: changing it
is a root rotation), else answers 404 like a console with nothing there. Fetches are counted.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

ROOT_PATH = "/static/jvastai_root.cer"


class TlsRoot:
    def __init__(self, pem: bytes | None = None) -> None:
        self.pem = pem  # None: 404
        self.fetches = 0

    @classmethod
    def from_path(cls, path: Path | None) -> TlsRoot:
        return cls(None if path is None else path.read_bytes())

    def routes(self) -> list[web.RouteDef]:
        return [web.get(ROOT_PATH, self.serve)]

    async def serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.pem is None:
            return web.Response(status=404, text="no root certificate configured")
        return web.Response(body=self.pem, content_type="application/x-x509-ca-cert")
