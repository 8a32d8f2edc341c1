"""Typed application keys shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from scheduler.config import AppConfig
from scheduler.jobs.service import SchedulerService
from scheduler.observability.metrics import Metrics

CONFIG: web.AppKey[AppConfig] = web.AppKey("config", AppConfig)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
SERVICE: web.AppKey[SchedulerService] = web.AppKey("service", SchedulerService)
