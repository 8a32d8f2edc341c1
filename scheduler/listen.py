"""Starting an aiohttp application on a TCP port: one way for the daemon, emulator and tests."""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web


async def listen(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    reuse_address: bool | None = None,
    **runner_options: Any,
) -> tuple[web.AppRunner, int]:
    """Set up a runner and a site; on failure nothing is left open. Returns the bound port."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=reuse_address)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
