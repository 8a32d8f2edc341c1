"""Typed application keys shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from scheduler.config import AppConfig
from scheduler.observability.metrics import Metrics
from scheduler.service import SchedulerService

CONFIG: web.AppKey[AppConfig] = web.AppKey("config", AppConfig)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
SERVICE: web.AppKey[SchedulerService] = web.AppKey("service", SchedulerService)
