"""Typed application keys shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from scheduler.config import AppConfig
from scheduler.jobs.service import SchedulerService
from scheduler.observability.metrics import Metrics
from scheduler.vast.endpoint_keys import EndpointKeys
from scheduler.vast.endpoint_workers import EndpointWorkersWatch

CONFIG: web.AppKey[AppConfig] = web.AppKey("config", AppConfig)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
SERVICE: web.AppKey[SchedulerService] = web.AppKey("service", SchedulerService)
ENDPOINT_KEYS: web.AppKey[EndpointKeys] = web.AppKey("endpoint_keys", EndpointKeys)
VAST_WORKERS: web.AppKey[EndpointWorkersWatch] = web.AppKey("vast_workers", EndpointWorkersWatch)
