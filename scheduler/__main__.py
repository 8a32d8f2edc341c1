"""CLI: ``run --config FILE`` | ``emulate [--config FILE]`` | ``check-config [--online] FILE`` |
``endpoints [--config FILE] [--init]``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import threading
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog
from pydantic import SecretStr

from scheduler.config import AppConfig, ConfigError, load_config
from scheduler.observability.logging import Redactor, configure_logging


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vast-scheduler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--config", required=True, help="YAML config file")
    emulate = commands.add_parser("emulate", help="run the Vast Serverless emulator alone")
    emulate.add_argument("--config", help="YAML config file (its emulator: section)")
    emulate.add_argument("--port", type=int, help="override emulator.port")
    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.add_argument(
        "--online",
        action="store_true",
        help="also list the Vast account's endpoints: each configured one exists",
    )
    endpoints = commands.add_parser(
        "endpoints", help="list the Vast account's endpoints (account key: config or VAST_API_KEY)"
    )
    endpoints.add_argument("--config", help="YAML config file (its vast: section)")
    endpoints.add_argument("--console-url", help="override vast.console_url")
    endpoints.add_argument(
        "--init", action="store_true", help="print a starting config for the account's endpoints"
    )
    return parser.parse_args(argv)


def load_or_report(path: str) -> AppConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional: plain asyncio works, only slower
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


# The collector's youngest generation is collected every GC_GEN0_THRESHOLD net allocations of
# tracked objects (CPython's default: 700). A job allocates a few hundred (aiohttp request and
# response, tasks, futures), so the default collects several times per job.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Freeze what start-up built (modules, config, schemas: never garbage) so no full
    collection walks it again, and collect the young generation less often. Both cut the
    collector's share of the CPU and the length of its pauses (latency tails) under load.
    ``VAST_SCHEDULER_GC=default`` keeps CPython's settings."""
    if os.environ.get("VAST_SCHEDULER_GC") == "default":
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def setup_logging(config: AppConfig) -> None:
    vast = config.vast
    secrets = [vast.api_key.get_secret_value()]
    if vast.account_api_key is not None:
        secrets.append(vast.account_api_key.get_secret_value())
    secrets += [e.api_key.get_secret_value() for e in config.endpoints.values() if e.api_key]
    secrets += config.emulator.secrets()  # the embedded or standalone emulator's account keys
    if config.server.webhook.secret is not None:
        secrets.append(config.server.webhook.secret.get_secret_value())
    secrets += [t.token.get_secret_value() for t in config.auth.tokens if t.token is not None]
    configure_logging(config.logging.level, config.logging.format, Redactor(secrets))


def check_config(path: str, online: bool) -> int:
    config = load_or_report(path)
    if config is None:
        return 1
    for warning in config.auth.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    if online and not check_online(config):
        return 1
    print(f"{path}: ok ({len(config.endpoints)} endpoints)")
    return 0


def check_online(config: AppConfig) -> bool:
    """Every configured endpoint is in the account (what ``run`` checks at start)."""
    from scheduler.endpoints_cli import list_endpoints, missing_endpoints
    from scheduler.vast.console import ConsoleError

    key = config.vast.account_api_key
    if config.embedded or key is None:
        print("online: no account key (or the embedded emulator): nothing to list",
              file=sys.stderr)  # fmt: skip
        return True
    try:
        listing = asyncio.run(
            list_endpoints(config.vast.console_url, key, config.vast.console_timeout_s)
        )
    except ConsoleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    missing = missing_endpoints(config, listing)
    if missing is not None:
        print(f"error: {missing}", file=sys.stderr)
        return False
    return True


def show_endpoints(args: argparse.Namespace) -> int:
    from scheduler.endpoints_cli import DEFAULT_AUTOSCALER_URL, init_config, list_endpoints, table
    from scheduler.vast.console import ConsoleError

    config = load_or_report(args.config) if args.config else AppConfig()
    if config is None:
        return 1
    key = config.vast.account_api_key or SecretStr(os.environ.get("VAST_API_KEY", ""))
    if not key.get_secret_value():
        print("error: no account key: set VAST_API_KEY or vast.account_api_key", file=sys.stderr)
        return 1
    console_url = (args.console_url or config.vast.console_url).rstrip("/")
    try:
        listing = asyncio.run(list_endpoints(console_url, key, config.vast.console_timeout_s))
    except ConsoleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.init:
        autoscaler = DEFAULT_AUTOSCALER_URL if config.embedded else config.vast.autoscaler_url
        print(init_config(listing.endpoints, autoscaler, console_url), end="")
    else:
        print(table(listing.endpoints))
    return 0


EXIT_WATCHDOG_S = 10.0


def exit_watchdog() -> None:
    """After a complete shutdown the process exits 0 within ``EXIT_WATCHDOG_S``: once (a Redis
    replica) the event loop stayed idle after the main coroutine had returned, and the process
    never exited. ``asyncio.Runner`` cancels the tasks left once and waits for them; one that
    swallows that cancellation (as redis-py's client rarely makes a task do; see
    ``scheduler.tasks.cancel_and_wait``) keeps the loop running for ever."""

    def force_exit() -> None:
        structlog.get_logger("scheduler.main").warning("daemon.exit_forced",
                                                       after_s=EXIT_WATCHDOG_S)  # fmt: skip
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    timer = threading.Timer(EXIT_WATCHDOG_S, force_exit)
    timer.daemon = True  # a normal exit does not wait for it
    timer.start()


def run_daemon(config: AppConfig, path: str) -> int:
    from scheduler.serve import serve
    from scheduler.store.session_journal import JournalUnavailable
    from scheduler.vast.console import EndpointsMissing

    tune_gc()
    try:
        run_loop(serve(config, config_path=path, on_stopped=exit_watchdog))
    except (EndpointsMissing, JournalUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file, args.online)
    if args.command == "endpoints":
        return show_endpoints(args)
    config = load_or_report(args.config) if args.config else AppConfig()
    if config is None:
        return 1
    setup_logging(config)
    if args.command == "run":
        return run_daemon(config, args.config)
    from scheduler.emulator.cli import run_emulator

    emulator = config.emulator
    if args.port is not None:
        emulator = emulator.model_copy(update={"port": args.port})
    run_loop(run_emulator(emulator, [config.vast.api_key.get_secret_value()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
