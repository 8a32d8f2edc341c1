"""A bare aiohttp relay as its own process: the reference for what one Python hop costs.

``python -m bench.relay_proc --autoscaler URL --endpoint NAME --workers N --port P``

``POST /relay/{endpoint}{route}`` takes the payload as its body and sends it to a worker the
way the direct floor does (``bench.systems.Direct``: one signed route answer per worker, least
outstanding cost per unit of perf), then answers with the worker's status and body. No queue,
no validation, no metrics, no logging: an aiohttp server and an aiohttp client in one uvloop
process, the least any daemon in Python on aiohttp adds. Its latency over direct, measured in
the same run, is the hop's share of the daemon's; the rest is the daemon's own work.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import aiohttp
from aiohttp import web

from bench.emulator_proc import run_like_the_daemon, until_terminated
from bench.systems import Direct, Job

COST = 100.0


async def _perfs(autoscaler_url: str) -> dict[str, float]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"{autoscaler_url}/admin/workers") as resp,
    ):
        workers: list[dict[str, Any]] = await resp.json()
    return {str(w["url"]): float(w["perf"]) for w in workers}


async def main(args: argparse.Namespace) -> None:
    direct = Direct(
        args.autoscaler, args.endpoint, await _perfs(args.autoscaler), 256, args.workers
    )

    async def relay(request: web.Request) -> web.Response:
        payload = await request.json()
        job = Job(
            0, request.match_info["endpoint"], "/" + request.match_info["route"], payload, COST
        )
        status, body = await direct.forward(job)
        return web.Response(body=body, status=status or 502, content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.add_routes([web.post("/relay/{endpoint}/{route:.*}", relay), web.get("/healthz", healthz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(json.dumps({"event": "bench_relay_ready", "port": args.port}), flush=True)
    try:
        await until_terminated()
    finally:
        await runner.cleanup()
        await direct.close()


def run() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_proc")
    parser.add_argument("--autoscaler", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    run_like_the_daemon(main(parser.parse_args()))


if __name__ == "__main__":
    run()
