"""Loading Vast's root from what the console answered: PEM or DER, anything else refused."""

from __future__ import annotations

import ssl

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.vast.tls import PEM_MARKER, cadata_of, fingerprint, vast_root_context
from scheduler.vast.types import VastRootUnavailable
from tests.integration.certs import make_ca

ROOT = make_ca("vast-like root", vast_quirk=True)


def test_pem_and_der_name_the_same_root_with_only_the_strict_flag_cleared() -> None:
    der = ROOT.cert.public_bytes(serialization.Encoding.DER)
    from_pem = vast_root_context(cadata=cadata_of(ROOT.pem))
    from_der = vast_root_context(cadata=cadata_of(der))
    assert fingerprint(from_pem) == fingerprint(from_der) != ""
    default = ssl.create_default_context()
    assert from_pem.verify_flags == default.verify_flags & ~ssl.VERIFY_X509_STRICT
    assert from_pem.verify_mode == ssl.CERT_REQUIRED
    assert from_pem.check_hostname


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>not found</html>", PEM_MARKER + b"\nnot base64\n", PEM_MARKER + b"\xff"],
)
def test_what_is_not_a_certificate_is_refused(body: bytes) -> None:
    with pytest.raises(VastRootUnavailable):
        vast_root_context(cadata=cadata_of(body))


@settings(max_examples=300)
@given(st.binary(max_size=2048), st.booleans())
def test_any_console_answer_loads_or_is_refused_cleanly(body: bytes, as_pem: bool) -> None:
    """A hostile or broken console answer never raises anything but VastRootUnavailable."""
    if as_pem:
        body = PEM_MARKER + body
    try:
        context = vast_root_context(cadata=cadata_of(body))
    except VastRootUnavailable:
        return
    assert context.get_ca_certs()
