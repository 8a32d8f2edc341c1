"""Signing exactly as the protocol doc says, round-tripped with hypothesis."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.emulator.signing import (
    Signer,
    legacy_message,
    load_public_key,
    verify_legacy_signature,
    verify_url_signature,
)

SIGNER = Signer()
OTHER = Signer()
urls = st.text(min_size=1, max_size=80)


@settings(max_examples=25, deadline=None)
@given(url=urls)
def test_url_signature_round_trip(url: str) -> None:
    auth = {"url": url, "signature": SIGNER.sign_url(url), "reqnum": 1}
    assert verify_url_signature(SIGNER.public_pem, auth)
    assert not verify_url_signature(OTHER.public_pem, auth)
    assert not verify_url_signature(SIGNER.public_pem, {**auth, "url": url + "x"})


def test_url_signature_is_over_the_documented_text() -> None:
    url = "http://1.2.3.4:5000"
    raw = base64.b64decode(SIGNER.sign_url(url))
    text = json.dumps({"url": url}, indent=4, sort_keys=True).encode()
    key = load_public_key(SIGNER.public_pem)
    key.verify(raw, text, padding.PKCS1v15(), hashes.SHA256())  # raises if wrong


@settings(max_examples=25, deadline=None)
@given(url=urls, cost=st.integers(0, 10**6), reqnum=st.integers(0, 10**9))
def test_legacy_signature_round_trip_and_tamper(url: str, cost: int, reqnum: int) -> None:
    auth = {"endpoint": "e", "url": url, "cost": cost, "reqnum": reqnum, "request_idx": 3}
    auth["signature"] = SIGNER.sign_legacy(auth)
    assert verify_legacy_signature(SIGNER.public_pem, auth)
    assert verify_legacy_signature(SIGNER.public_pem, {**auth, "request_idx": 9})
    assert not verify_legacy_signature(SIGNER.public_pem, {**auth, "reqnum": reqnum + 1})


def test_legacy_message_field_order_is_pyworker_authdata_order() -> None:
    auth = {"url": "u", "reqnum": 2, "endpoint": "e", "cost": 1, "signature": "s"}
    assert list(json.loads(legacy_message(auth))) == ["cost", "endpoint", "reqnum", "url"]


def test_garbage_signatures_are_rejected_not_raised() -> None:
    for bad in ("", "not base64!!", 12, None, base64.b64encode(b"x").decode()):
        assert not verify_url_signature(SIGNER.public_pem, {"url": "u", "signature": bad})
