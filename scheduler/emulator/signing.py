"""RSA signatures exactly as the Vast autoscaler makes them and the workers check them.

Current workers verify PKCS#1 v1.5 / SHA-256 over
``json.dumps({"url": url}, indent=4, sort_keys=True)``; legacy workers (vast-ai/pyworker)
verify the same scheme over ``json.dumps(message, indent=4)`` where ``message`` is their
``AuthData`` fields in declared order (signature, cost, endpoint, reqnum, url) minus
``signature``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

LEGACY_AUTH_FIELDS: tuple[str, ...] = ("signature", "cost", "endpoint", "reqnum", "url")
CURRENT_AUTH_FIELDS: tuple[str, ...] = (
    "cost",
    "endpoint",
    "reqnum",
    "request_idx",
    "signature",
    "url",
)
KEY_BITS = 2048


def url_message(url: str) -> str:
    """The text a current worker verifies."""
    return json.dumps({"url": url}, indent=4, sort_keys=True)


def legacy_message(auth_data: Mapping[str, Any]) -> str:
    """The text a legacy worker verifies: its AuthData fields minus signature, in order."""
    message = {k: auth_data[k] for k in LEGACY_AUTH_FIELDS if k != "signature"}
    return json.dumps(message, indent=4)


class Signer:
    """One RSA keypair, generated once per emulator."""

    def __init__(self, key: rsa.RSAPrivateKey | None = None) -> None:
        self._key = key or rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        self.public_pem: str = (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def sign_text(self, text: str) -> str:
        raw = self._key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(raw).decode()

    def sign_url(self, url: str) -> str:
        return self.sign_text(url_message(url))

    def sign_legacy(self, auth_data: Mapping[str, Any]) -> str:
        return self.sign_text(legacy_message(auth_data))


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def verify_text(key: rsa.RSAPublicKey, text: str, signature: object) -> bool:
    if not isinstance(signature, str):
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, text.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def verify_url_signature(pem: str | rsa.RSAPublicKey, auth_data: Mapping[str, Any]) -> bool:
    """What a current worker checks: the signature covers ``auth_data["url"]`` only."""
    key = load_public_key(pem) if isinstance(pem, str) else pem
    url = auth_data.get("url")
    return isinstance(url, str) and verify_text(key, url_message(url), auth_data.get("signature"))


def verify_legacy_signature(pem: str | rsa.RSAPublicKey, auth_data: Mapping[str, Any]) -> bool:
    """What a legacy worker checks: the whole AuthData minus signature."""
    key = load_public_key(pem) if isinstance(pem, str) else pem
    if any(k not in auth_data for k in LEGACY_AUTH_FIELDS):
        return False
    return verify_text(key, legacy_message(auth_data), auth_data.get("signature"))
