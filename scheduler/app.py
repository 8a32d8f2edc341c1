"""Builds the aiohttp application: clients, emulator, dispatch loops; startup and cleanup."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from scheduler.api.auth import auth_middleware
from scheduler.api.context import CONFIG, ENDPOINT_KEYS, METRICS, SERVICE, VAST_WORKERS
from scheduler.api.errors import METRICS_HOOK, api_middleware
from scheduler.api.frontdoor_state import FRONTDOOR, new_frontdoor
from scheduler.api.reload import redact_new_secrets
from scheduler.api.routes import add_routes
from scheduler.config import AppConfig
from scheduler.dispatch.left_sessions import JournaledForwarder, SessionReaper
from scheduler.dispatch.seams import Forwarder
from scheduler.emulator.emulator import Emulator
from scheduler.jobs.delivery import BufferedDelivery
from scheduler.jobs.service import SchedulerService
from scheduler.jobs.webhooks import WebhookSender
from scheduler.observability.metrics import Metrics
from scheduler.store.base import FleetPolling, JobStore
from scheduler.store.session_journal import FileSessionJournal, SessionJournal
from scheduler.tasks import cancel_and_wait
from scheduler.vast.console import ConsoleClient
from scheduler.vast.endpoint_keys import EndpointKeys
from scheduler.vast.endpoint_workers import EndpointWorkersWatch
from scheduler.vast.networks import worker_networks_of
from scheduler.vast.route_client import RouteClient
from scheduler.vast.tls import WORKER_TLS, worker_trust
from scheduler.vast.worker_client import WorkerClient

log = structlog.get_logger("scheduler.app")
AUTOSCALER_URL: web.AppKey[str] = web.AppKey("autoscaler_url", str)
EMULATOR: web.AppKey[Emulator] = web.AppKey("emulator", Emulator)
LEFT_SESSIONS_INTERVAL_S = 5.0


def package_version() -> str:
    try:
        return version("vast-scheduler")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(config: AppConfig, clock: Callable[[], float] = time.monotonic) -> web.Application:
    app = web.Application(
        middlewares=[api_middleware, auth_middleware(config.auth)],
        client_max_size=config.server.max_body_bytes,
    )
    app[CONFIG] = config
    metrics = Metrics(CollectorRegistry(), package_version())
    app[METRICS] = metrics
    app[METRICS_HOOK] = lambda request, code, _: count_request(metrics, request, code)
    app[FRONTDOOR] = new_frontdoor()
    add_routes(app)
    app.cleanup_ctx.append(embedded_emulator)
    app.cleanup_ctx.append(lambda a: scheduler_context(a, clock))
    return app


def count_request(metrics: Metrics, request: web.Request, code: int) -> None:
    route = request.match_info.route
    handler = route.name or "unmatched"
    metrics.series(metrics.http_requests, handler, str(code)).inc()


async def embedded_emulator(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.embedded:
        app[AUTOSCALER_URL] = config.vast.autoscaler_url
        yield
        return
    settings = config.emulator
    if config.vast.account_api_key is not None:  # the emulator is the account's console too
        settings = settings.model_copy(update={"account_api_key": config.vast.account_api_key})
    emulator = Emulator(settings, [config.vast.api_key.get_secret_value()])
    await emulator.start()
    app[EMULATOR] = emulator
    app[AUTOSCALER_URL] = emulator.autoscaler_url
    log.info("emulator.embedded", autoscaler_url=emulator.autoscaler_url)
    try:
        yield
    finally:
        await emulator.stop()


async def scheduler_context(
    app: web.Application, clock: Callable[[], float]
) -> AsyncIterator[None]:
    config = app[CONFIG]
    vast = config.vast
    journal_file = file_journal(config)
    if journal_file is not None:  # first: JournalUnavailable stops the start with nothing open
        await journal_file.start()
    # The autoscaler and the console: Python's default TLS context, flags untouched. Only
    # worker connections trust Vast's root, with its one relaxed flag (scheduler.vast.tls).
    route_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    worker_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=vast.max_connections,
            limit_per_host=vast.max_connections_per_worker,
        ),
        auto_decompress=False,  # bodies pass through byte for byte, encoding header included
    )
    webhook_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
    rng = random.Random()
    console_url = app[AUTOSCALER_URL] if config.embedded else vast.console_url
    trust = worker_trust(vast.ca_bundle, route_session, console_url, clock, rng)
    app[WORKER_TLS] = trust
    console = console_client(config, route_session, app[AUTOSCALER_URL])
    keys = EndpointKeys(vast, config.endpoints, console, clock, redact_new_secrets, rng)
    app[ENDPOINT_KEYS] = keys
    try:
        await keys.start()  # EndpointsMissing: the start stops here, naming them
    except BaseException:
        for session in (route_session, worker_session, webhook_session):
            await session.close()
        raise
    router = RouteClient(
        route_session, app[AUTOSCALER_URL], keys, vast.route_timeout_s,
        vast.replay_timeout_s, vast.connect_timeout_s,
        worker_networks=worker_networks_of(vast.worker_networks),
    )  # fmt: skip
    webhooks = WebhookSender(webhook_session, config.server.webhook, rng, app[METRICS])
    async with shared_store(config, app[METRICS], clock) as (store, fleet, shared_journal):
        journal = shared_journal or journal_file
        forwarder: Forwarder = WorkerClient(worker_session, vast.worker_read_timeout_s,
                                            vast.connect_timeout_s, trust)  # fmt: skip
        reaper = None
        if journal is not None:
            if shared_journal is not None:
                await shared_journal.start()
            forwarder = JournaledForwarder(forwarder, journal)
            reaper = SessionReaper(journal, forwarder, app[METRICS],
                                   reap_interval_s(config), clock)  # fmt: skip
        service = SchedulerService(
            config, router, forwarder, app[METRICS], webhooks, clock, rng, store, fleet
        )
        app[SERVICE] = service
        await service.start()
        vast_tasks = {asyncio.create_task(keys.run(), name="vast-keys")}
        if reaper is not None:
            vast_tasks.add(asyncio.create_task(reaper.run(), name="left-sessions"))
        if console is not None:
            watch = EndpointWorkersWatch(console, keys, vast.endpoint_workers_interval_s, clock,
                                         lambda: jobs_waiting(service))  # fmt: skip
            app[VAST_WORKERS] = watch
            vast_tasks.add(asyncio.create_task(watch.run(), name="vast-workers"))
        try:
            yield
        finally:
            service.accepting = False
            await cancel_and_wait(vast_tasks)
            await keys.close()
            await service.abort_remaining()
            await service.close()
            if journal is not None:
                await journal.close()
            await trust.close()
            await cancel_and_wait(webhooks.tasks)
            for session in (route_session, worker_session, webhook_session):
                await session.close()


def console_client(
    config: AppConfig, session: aiohttp.ClientSession, autoscaler_url: str
) -> ConsoleClient | None:
    """The account's console, when there is an account key; the embedded emulator is its own."""
    vast = config.vast
    if vast.account_api_key is None:
        return None
    console_url = autoscaler_url if config.embedded else vast.console_url
    return ConsoleClient(session, console_url, autoscaler_url, vast.account_api_key,
                         vast.console_timeout_s, vast.connect_timeout_s)  # fmt: skip


def jobs_waiting(service: SchedulerService) -> bool:
    return any(len(d.queue) > 0 for d in service.dispatchers.values())


@asynccontextmanager
async def shared_store(
    config: AppConfig, metrics: Metrics, clock: Callable[[], float]
) -> AsyncIterator[tuple[JobStore | None, FleetPolling | None, SessionJournal | None]]:
    """The Redis store, fleet poll lease and session journal when configured; (None, None,
    None): memory."""
    if config.store.backend != "redis":
        yield None, None, None
        return
    # Imported here: a memory-only daemon never loads the Redis client.
    from scheduler.store.redis import RedisJobStore
    from scheduler.store.redis_client import connect
    from scheduler.store.redis_fleet import RedisFleetPolling
    from scheduler.store.redis_sessions import RedisSessionJournal

    settings = config.store.redis
    replica = config.store.replica_id or default_replica_id()
    client = connect(settings)
    max_result_bytes = config.server.max_result_bytes

    def count_error(op: str) -> None:
        metrics.store_errors.labels(op).inc()

    store = RedisJobStore(
        client, settings.key_prefix, replica, config.server.job_retention_s,
        lambda _mode: BufferedDelivery(max_result_bytes), clock, on_error=count_error,
    )  # fmt: skip
    log.info("store.redis", key_prefix=settings.key_prefix, replica=replica)
    fleet = RedisFleetPolling(client, settings.key_prefix, replica, count_error)
    journal = None
    if settings.session_journal:
        journal = RedisSessionJournal(client, settings.key_prefix, replica,
                                      settings.visibility_timeout_s, count_error)  # fmt: skip
    try:
        yield store, fleet, journal
    finally:
        await client.aclose()


def file_journal(config: AppConfig) -> FileSessionJournal | None:
    path = config.store.session_journal
    if config.store.backend == "redis" or path is None:
        return None
    return FileSessionJournal(path)


def reap_interval_s(config: AppConfig) -> float:
    """How often left sessions are looked for: on Redis, several heartbeats per lapse."""
    if config.store.backend == "redis":
        return min(LEFT_SESSIONS_INTERVAL_S, config.store.redis.visibility_timeout_s / 4)
    return LEFT_SESSIONS_INTERVAL_S


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
