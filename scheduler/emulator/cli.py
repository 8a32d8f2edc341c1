"""Entry point for the daemon's ``emulate`` sub-command."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from scheduler.emulator.emulator import Emulator
from scheduler.emulator.settings import EmulatorConfig

log = structlog.get_logger(__name__)


async def run_emulator(config: EmulatorConfig, api_keys: Sequence[str]) -> None:
    """Start the emulator, log ``emulator.started`` with its URL, run until cancelled."""
    emulator = Emulator(config, api_keys)
    await emulator.start()
    try:
        workers = {name: len(emulator.workers(name)) for name in config.endpoints}
        log.info("emulator.started", url=emulator.autoscaler_url, workers=workers)
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
        log.info("emulator.stopped")
