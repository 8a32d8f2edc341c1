"""Throwaway certificate authorities and leaves for TLS tests (keys never leave the test).

``make_ca(vast_quirk=True)`` gives a root with the quirk of Vast's ``jvastai_root.cer`` that
the official client works around by clearing ``VERIFY_X509_STRICT``: basic constraints CA with
a path length, and no ``keyCertSign`` in its key usage, here by having no key usage extension
at all. OpenSSL 3 in strict mode refuses any chain under it ("Path length given without key
usage keyCertSign"), and accepts it otherwise. A key usage extension present WITHOUT
keyCertSign (``unfit_to_sign=True``) is something else: OpenSSL refuses such a root as a CA
("invalid CA certificate") whatever the flags, so a client could never have used it.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LIFETIME = datetime.timedelta(hours=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, key_cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path


def make_ca(
    common_name: str = "test root", *, vast_quirk: bool = False, unfit_to_sign: bool = False
) -> CA:
    """A self-signed root: a sound one (keyCertSign, no path length) by default;
    ``vast_quirk``: path length 0 and no key usage; ``unfit_to_sign``: a key usage without
    keyCertSign."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + LIFETIME)
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=0 if vast_quirk else None), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if not vast_quirk:
        builder = builder.add_extension(_key_usage(key_cert_sign=not unfit_to_sign), critical=True)
    return CA(builder.sign(key, hashes.SHA256()), key)


def issue_leaf(ca: CA, directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A server certificate for ``host`` (an IP) signed by ``ca``: (cert path, key path)."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + LIFETIME)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    serial = format(cert.serial_number, "x")[:12]
    cert_path, key_path = directory / f"leaf-{serial}.pem", directory / f"leaf-{serial}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
