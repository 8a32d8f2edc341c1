"""Webhook signatures and the rules for which webhook URLs may be called."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.config import WebhookConfig
from scheduler.jobs.webhooks import check_webhook_url, sign

NOT_CONFIGURED = "webhooks are not configured (server.webhook.secret)"
NOT_HTTP = "must be an http(s) URL"
USER_INFO = "must not carry user info"
NOT_ALLOWED = "host is not in server.webhook.allowed_hosts"

CONFIGURED = WebhookConfig(secret="whsec-test")


# --- sign -----------------------------------------------------------------------------------


def test_sign_rfc4231_vector() -> None:
    # RFC 4231, test case 2
    assert sign(b"what do ya want for nothing?", "Jefe") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


@pytest.mark.parametrize(
    ("body", "secret"),
    [
        (b"", "s"),
        (b'{"id":"job-1","status":"succeeded"}', "whsec-test"),
        (b"\x00\xff" * 100, "k\u00e9y-\u2603"),
        (b"x" * 100_000, "a" * 200),
    ],
)
def test_sign_examples(body: bytes, secret: str) -> None:
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert sign(body, secret) == f"sha256={expected}"


@given(st.binary(max_size=512), st.text(min_size=1, max_size=64))
@settings(max_examples=200)
def test_sign_matches_hmac_sha256(body: bytes, secret: str) -> None:
    signature = sign(body, secret)
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    assert signature == "sha256=" + expected
    prefix, _, digest = signature.partition("=")
    assert prefix == "sha256"
    assert len(digest) == 64
    assert digest == digest.lower()
    assert hmac.compare_digest(signature, sign(body, secret))


@given(st.binary(max_size=64), st.text(min_size=1, max_size=16), st.text(min_size=1, max_size=16))
@settings(max_examples=200)
def test_sign_depends_on_secret(body: bytes, s1: str, s2: str) -> None:
    if s1.encode() != s2.encode():
        assert sign(body, s1) != sign(body, s2)


@given(st.binary(max_size=64), st.binary(max_size=64))
@settings(max_examples=200)
def test_sign_depends_on_body(b1: bytes, b2: bytes) -> None:
    if b1 != b2:
        assert sign(b1, "whsec") != sign(b2, "whsec")


# --- check_webhook_url ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "config", "problem"),
    [
        pytest.param("http://localhost/hook", WebhookConfig(), NOT_CONFIGURED, id="no-secret"),
        pytest.param("ftp://localhost/hook", WebhookConfig(), NOT_CONFIGURED, id="secret-first"),
        pytest.param("http://localhost:9000/hook", CONFIGURED, None, id="localhost"),
        pytest.param("https://127.0.0.1/x?y=1", CONFIGURED, None, id="ipv4-loopback"),
        pytest.param("http://[::1]:8000/", CONFIGURED, None, id="ipv6-loopback"),
        pytest.param("http://LOCALHOST/hook", CONFIGURED, None, id="host-case-insensitive"),
        pytest.param("HTTP://localhost/hook", CONFIGURED, None, id="scheme-case-insensitive"),
        pytest.param("ftp://localhost/hook", CONFIGURED, NOT_HTTP, id="ftp"),
        pytest.param("file:///etc/passwd", CONFIGURED, NOT_HTTP, id="file"),
        pytest.param("javascript:alert(1)", CONFIGURED, NOT_HTTP, id="javascript"),
        pytest.param("localhost/hook", CONFIGURED, NOT_HTTP, id="no-scheme"),
        pytest.param("//localhost/hook", CONFIGURED, NOT_HTTP, id="scheme-relative"),
        pytest.param("http://", CONFIGURED, NOT_HTTP, id="no-host"),
        pytest.param("http:///hook", CONFIGURED, NOT_HTTP, id="empty-host"),
        pytest.param("", CONFIGURED, NOT_HTTP, id="empty"),
        pytest.param("http://user:pw@localhost/", CONFIGURED, USER_INFO, id="user-password"),
        pytest.param("http://user@localhost/", CONFIGURED, USER_INFO, id="user"),
        pytest.param("http://:pw@localhost/", CONFIGURED, USER_INFO, id="password-only"),
        pytest.param("http://@localhost/", CONFIGURED, USER_INFO, id="empty-user-info"),
        pytest.param("http://example.com/hook", CONFIGURED, NOT_ALLOWED, id="other-host"),
        pytest.param("http://localhost.evil.com/", CONFIGURED, NOT_ALLOWED, id="suffix-trick"),
        pytest.param("http://127.0.0.2/", CONFIGURED, NOT_ALLOWED, id="other-loopback"),
        pytest.param("http://169.254.169.254/", CONFIGURED, NOT_ALLOWED, id="metadata"),
        pytest.param("http://evil.com#@localhost/", CONFIGURED, NOT_ALLOWED, id="fragment-at"),
        pytest.param("http://evil.com?@localhost/", CONFIGURED, NOT_ALLOWED, id="query-at"),
        pytest.param("http://localhost@evil.com/", CONFIGURED, USER_INFO, id="userinfo-trick"),
    ],
)
def test_check_webhook_url(url: str, config: WebhookConfig, problem: str | None) -> None:
    assert check_webhook_url(url, config) == problem


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.internal.example/x", None),
        ("https://HOOKS.internal.example:8443/x", None),
        ("http://localhost/x", NOT_ALLOWED),
        ("https://internal.example/x", NOT_ALLOWED),
        ("https://evil.hooks.internal.example/x", NOT_ALLOWED),
    ],
)
def test_custom_allowed_hosts(url: str, problem: str | None) -> None:
    config = WebhookConfig(secret="s", allowed_hosts=("hooks.internal.example",))
    assert check_webhook_url(url, config) == problem


def test_empty_allowed_hosts_refuses_everything() -> None:
    config = WebhookConfig(secret="s", allowed_hosts=())
    assert check_webhook_url("http://localhost/", config) == NOT_ALLOWED


# Printable ASCII without brackets: brackets reach the urlsplit ValueError (xfail below).
url_tail = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="[]"), max_size=30
)
webhook_urls = st.one_of(
    url_tail,
    st.builds(
        str.__add__,
        st.sampled_from(["http://", "https://", "ftp://", "http://localhost", "http://u@"]),
        url_tail,
    ),
)


@given(webhook_urls)
@settings(max_examples=200)
def test_accepted_urls_satisfy_every_rule(url: str) -> None:
    problem = check_webhook_url(url, CONFIGURED)
    assert problem in (None, NOT_HTTP, USER_INFO, NOT_ALLOWED)
    if problem is None:
        parts = urlsplit(url)
        assert parts.scheme in ("http", "https")
        assert parts.username is None
        assert parts.password is None
        assert parts.hostname in CONFIGURED.allowed_hosts
    assert check_webhook_url(url, WebhookConfig()) == NOT_CONFIGURED


@pytest.mark.parametrize("url", ["http://[::1", "http://[localhost]/", "http://local\u2100host/"])
def test_unparseable_webhook_url_is_a_problem(url: str) -> None:
    assert check_webhook_url(url, CONFIGURED) == "must be a valid URL"
