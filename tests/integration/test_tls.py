"""HTTPS workers with a certificate from a private root CA, trusted through vast.ca_bundle."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scheduler.listen import listen
from tests.integration.harness import daemon_config, running_daemon
from tests.integration.spies import SpyServer, ready_answer, serving


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca_and_leaf(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway root CA (like Vast's jvastai root) and a leaf for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("test root"))
        .issuer_name(_name("test root"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "leaf.pem", "leaf.key"))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@asynccontextmanager
async def https_worker(spy: SpyServer, cert: Path, key: Path) -> AsyncIterator[SpyServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_post("/generate", spy.handle)
    runner, port = await listen(app, "127.0.0.1", 0, ssl_context=context, access_log=None)
    spy.url = f"https://127.0.0.1:{port}"
    try:
        yield spy
    finally:
        await runner.cleanup()


async def run_once(tmp_path: Path, http: aiohttp.ClientSession, trust: bool) -> tuple[int, int]:
    ca, cert, key = make_ca_and_leaf(tmp_path)
    async with https_worker(SpyServer([(200, {"secure": True}, {})]), cert, key) as worker:
        script = [(200, ready_answer(worker.url), {})]
        async with serving(SpyServer(script), "/route/") as autoscaler:
            vast = {"ca_bundle": str(ca)} if trust else {}
            endpoint = {"spy": {"max_attempts": 2}}
            config = daemon_config(autoscaler.url, endpoint, vast=vast)
            async with (
                running_daemon(config) as daemon,
                http.post(f"{daemon.url}/v1/endpoints/spy/run", json={"payload": {}}) as resp,
            ):
                await resp.read()
                return resp.status, len(worker.received)


async def test_https_worker_trusted_through_ca_bundle(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    status, delivered = await run_once(tmp_path, http, trust=True)
    assert status == 200
    assert delivered == 1


async def test_https_worker_with_unknown_ca_is_refused(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    status, delivered = await run_once(tmp_path, http, trust=False)
    assert status == 502  # the certificate never verifies, so no attempt reaches the worker
    assert delivered == 0
