"""Entry point for the daemon's ``emulate`` sub-command."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from scheduler.emulator.emulator import Emulator
from scheduler.emulator.settings import EmulatorConfig

log = structlog.get_logger(__name__)


async def run_emulator(config: EmulatorConfig, api_keys: Sequence[str]) -> None:
    """Start the emulator, log ``emulator.started`` with its URL, workers and endpoint ids
    (never a key: the console listing at ``/api/v0/endptjobs/`` shows them to the account
    key), run until cancelled."""
    emulator = Emulator(config, api_keys)
    await emulator.start()
    try:
        workers = {name: len(emulator.workers(name)) for name in config.endpoints}
        ids = config.endpoint_ids()
        log.info("emulator.started", url=emulator.autoscaler_url, workers=workers, ids=ids)
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
        log.info("emulator.stopped")
