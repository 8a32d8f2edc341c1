"""Webhook delivery: one signed POST per finished job, retried with back-off."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from scheduler.config import WebhookConfig
from scheduler.core.retry import backoff_s
from scheduler.observability.metrics import Metrics
from scheduler.tasks import spawn

log = structlog.get_logger("scheduler.jobs.webhooks")
SIGNATURE_HEADER = "X-Vast-Scheduler-Signature"


def check_webhook_url(url: str, config: WebhookConfig) -> str | None:
    """Returns a problem with the URL, or None when it may be called."""
    if config.secret is None:
        return "webhooks are not configured (server.webhook.secret)"
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:
        return "must be a valid URL"
    if parts.scheme not in ("http", "https") or not hostname:
        return "must be an http(s) URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry user info"
    if hostname not in config.allowed_hosts:
        return "host is not in server.webhook.allowed_hosts"
    return None


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: WebhookConfig,
        rng: random.Random,
        metrics: Metrics,
    ) -> None:
        self._session = session
        self._config = config
        self._rng = rng
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self.tasks: set[asyncio.Task[None]] = set()

    def send(self, job_id: str, url: str, document: dict[str, Any]) -> asyncio.Task[None]:
        return spawn(self._deliver(job_id, url, document), self.tasks, f"webhook-{job_id}")

    async def _deliver(self, job_id: str, url: str, document: dict[str, Any]) -> None:
        secret = self._config.secret
        if secret is None:
            return
        body = json.dumps(document, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, secret.get_secret_value()),
        }
        cfg = self._config
        attempt = 0
        try:
            for attempt in range(1, cfg.max_attempts + 1):
                if await self._post_once(url, body, headers):
                    log.info("webhook.delivered", job_id=job_id, attempt=attempt)
                    self._count("delivered")
                    return
                if attempt < cfg.max_attempts:
                    await asyncio.sleep(backoff_s(
                        attempt, cfg.backoff_initial_s, cfg.backoff_max_s, 2.0, self._rng.random()
                    ))  # fmt: skip
        except asyncio.CancelledError:  # the grace period ended before it got through
            log.warning("webhook.cut", job_id=job_id, attempt=attempt)
            self._count("cut")
            raise
        log.warning("webhook.abandoned", job_id=job_id, attempts=cfg.max_attempts)
        self._count("abandoned")

    def _count(self, outcome: str) -> None:
        self._metrics.series(self._metrics.webhooks, outcome).inc()

    async def _post_once(self, url: str, body: bytes, headers: dict[str, str]) -> bool:
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False
