"""The Prometheus, Grafana and compose files, proven against a real Prometheus.

The live test starts Debian's ``prometheus`` on 127.0.0.1 (storage in a tmp dir) scraping a
daemon every second, drives the emulator with forced faults (a killed worker, a cold endpoint
with no worker, route 500s and 429s, worker 404s and 429s, a full queue) and evaluates every
PromQL expression of the dashboard and of the alert rules through ``/api/v1/query``. The other
tests run ``promtool`` on the rules, their unit tests, the scrape config and the exposition,
and check the shape of the dashboard, provisioning and compose files (Docker is not run).
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from scheduler.config import load_config
from scheduler.emulator.emulator import Emulator
from scheduler.observability.metrics import Metrics
from tests.integration.harness import (
    Daemon,
    daemon_config,
    run_many,
    running_daemon,
    running_emulator,
    wait_for_status,
)

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "config" / "prometheus"
PROMETHEUS_YML = PROM_DIR / "prometheus.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "vast-scheduler.json"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CONFIG = ROOT / "config" / "compose.yaml"

ALERT_NAMES = {
    "VastSchedulerDown",
    "VastSchedulerNoWorkers",
    "VastSchedulerBacklogGrowing",
    "VastSchedulerRouteLatencyHigh",
    "VastSchedulerJobFailureRatioHigh",
}
RATE_INTERVAL = "30s"  # $__rate_interval: 30 one-second scrapes
# `<base> <comparison> <number>`: the convention of alerts.yml (see its header).
TRAILING_COMPARISON = re.compile(
    r"^(?P<base>.*\S)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<num>[-0-9.e]+)$", re.S
)
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\)$")
METRIC_NAME = re.compile(r"\bvast_scheduler_\w+")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's `prometheus` package (.ci/run does)")
    return path


def run_tool(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, timeout=60, check=False)
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{output}"
    return output


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_targets() -> Iterator[tuple[str, str]]:
    """(panel title, raw expression) for every query of every panel."""
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's job: template variables into PromQL."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name, value in values.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def split_alert(expr: str) -> tuple[str, str, float]:
    match = TRAILING_COMPARISON.match(expr.strip())
    assert match, f"alert expression is not `<base> <cmp> <number>`: {expr}"
    return match["base"], match["op"], float(match["num"])


COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge,
    "<=": operator.le, ">": operator.gt, "<": operator.lt,
}  # fmt: skip


def exposed_names() -> set[str]:
    """Every sample name the daemon can expose, from the metric definitions."""
    metrics = Metrics(CollectorRegistry(), "test")
    metrics.watch(list)
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "info": ("_info",),
    }
    names = set()
    for family in metrics.registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


# --- promtool -------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    output = run_tool(tool("promtool"), "check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in output


def test_promtool_test_rules() -> None:
    run_tool(tool("promtool"), "test", "rules", str(ALERTS_TEST))


def test_alert_unit_tests_cover_firing_and_quiet_for_every_alert() -> None:
    seen: dict[str, set[bool]] = {}
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            seen.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    assert seen == {name: {True, False} for name in ALERT_NAMES}


def test_promtool_check_config() -> None:
    run_tool(tool("promtool"), "check", "config", str(PROMETHEUS_YML))


# --- static shape ---------------------------------------------------------------------------


def test_alert_rules_shape() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERT_NAMES
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        split_alert(rule["expr"])
    down = next(rule for rule in rules if rule["alert"] == "VastSchedulerDown")
    job = load_yaml(PROMETHEUS_YML)["scrape_configs"][0]["job_name"]
    assert split_alert(down["expr"]) == (f'up{{job="{job}"}}', "==", 0.0)


def test_dashboard_shape() -> None:
    board = dashboard()
    assert list(variables()) == ["datasource", "instance", "endpoint"]
    assert variables()["datasource"]["query"] == "prometheus"
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Routing", "Workers", "Cost"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
            if "http_requests" not in target["expr"]:  # API requests carry no endpoint label
                assert 'endpoint=~"$endpoint"' in target["expr"], panel["title"]


def test_every_referenced_metric_exists() -> None:
    names = exposed_names()
    exprs = [expr for _, expr in dashboard_targets()]
    exprs += [rule["expr"] for rule in alert_rules()]
    exprs += [variable_query(v) for v in variables().values() if v["type"] == "query"]
    unknown = {name for expr in exprs for name in METRIC_NAME.findall(expr)} - names
    assert not unknown, f"not exposed by scheduler/observability/metrics.py: {sorted(unknown)}"


def test_compose_wires_daemon_prometheus_and_grafana() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert {"daemon", "prometheus", "grafana"} <= set(services)
    daemon, prometheus, grafana = services["daemon"], services["prometheus"], services["grafana"]
    assert daemon["build"]["context"] == "."
    assert (ROOT / daemon["build"]["dockerfile"]).is_file()
    assert prometheus["image"].startswith("prom/prometheus:")
    assert grafana["image"].startswith("grafana/grafana:")
    mounts = {
        name: {m.split(":")[1]: ROOT / m.split(":")[0] for m in svc.get("volumes", [])
               if m.startswith("./")}
        for name, svc in services.items()
    }  # fmt: skip
    for service_mounts in mounts.values():
        for source in service_mounts.values():
            assert source.exists(), source
    # The daemon listens on every interface of its container, on the embedded emulator.
    assert mounts["daemon"]["/etc/vast-scheduler/config.yaml"] == COMPOSE_CONFIG
    config = load_config(COMPOSE_CONFIG, env={})
    assert (config.server.host, config.vast.autoscaler_url) == ("0.0.0.0", "embedded")
    assert daemon["command"][-1] == "/etc/vast-scheduler/config.yaml"
    assert any(p.endswith(f":{config.server.port}") for p in daemon["ports"])
    assert not config.auth.enabled or "/metrics" in config.auth.open_paths  # Prometheus: no token
    # Prometheus reads config/prometheus and scrapes daemon:<port>.
    assert mounts["prometheus"]["/etc/prometheus"] == PROM_DIR
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    scrape = load_yaml(PROMETHEUS_YML)["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"daemon:{config.server.port}"]
    # Grafana: provisioning mounted, datasource at prometheus:9090, dashboards where the
    # provider looks.
    assert mounts["grafana"]["/etc/grafana/provisioning"] == ROOT / "grafana" / "provisioning"
    source = load_yaml(DATASOURCES)["datasources"][0]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    provider = load_yaml(DASHBOARD_PROVIDERS)["providers"][0]
    assert mounts["grafana"][provider["options"]["path"]] == DASHBOARD.parent
    assert json.loads(DASHBOARD.read_text())["uid"] == "vast-scheduler"


# --- a real Prometheus ----------------------------------------------------------------------

# echo: healthy, leases reused. flaky: a route call per job onto workers that refuse to queue
# (429) and lack a route (404). doomed: one slow worker killed mid-job; one attempt per job,
# so nothing connects to it while it shuts down (an emulator worker killed under a stream of
# new connections sometimes leaves one open: ResourceWarning). cold: no worker at all, a
# queue of two.
EMULATED = {
    "echo": {"workers": 2, "perf": 20_000},
    "flaky": {"workers": 2, "perf": 400, "max_queue_time_s": 0.05},
    "doomed": {"workers": 1, "perf": 50},
    "cold": {"workers": 0},
}
ENDPOINTS = {
    "echo": {"cost": {"estimator": "constant", "value": 100, "calibrate": True}},
    "flaky": {"reuse": "never"},
    "doomed": {"max_attempts": 1, "ejection": {"consecutive_failures": 1}},
    "cold": {"queue": {"max_depth": 2}},
}


# What the load and its faults must have produced, as Prometheus sees it.
FAULT_SIGNALS = {
    ("vast_scheduler_route_calls_total", "outcome"): {
        "ready",
        "no_worker",
        "error",
        "rate_limited",
    },
    # doomed's worker dies mid-request: "lost" (sent, then cut), not re-run (not idempotent)
    ("vast_scheduler_worker_errors_total", "kind"): {"lost", "overloaded", "client_error"},
    ("vast_scheduler_jobs_finished_total", "outcome"): {"succeeded", "failed", "expired"},
    ("vast_scheduler_retries_total", "reason"): {"reroute_shrink"},
    ("vast_scheduler_jobs_rejected_total", "reason"): {"queue_full"},
    ("vast_scheduler_worker_ejections_total", "endpoint"): {"doomed"},
    ("vast_scheduler_lease_lookups_total", "result"): {"hit", "miss"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_prometheus_config(tmp: Path, target: str) -> Path:
    """The repo's prometheus.yml, scraping ``target`` every second with alerts.yml loaded."""
    config = load_yaml(PROMETHEUS_YML)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERTS)]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "vast-scheduler")
    job["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [job]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def started_pids() -> Iterator[list[int]]:
    """A safety net: kills what the test started if it was interrupted (e.g. by the timeout)
    before its own bounded shutdown ran."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@asynccontextmanager
async def running_prometheus(tmp: Path, target: str, pids: list[int]) -> AsyncIterator[str]:
    config = write_prometheus_config(tmp, target)
    address = f"127.0.0.1:{free_port()}"
    log_path = tmp / "prometheus.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            tool("prometheus"), f"--config.file={config}", f"--web.listen-address={address}",
            f"--storage.tsdb.path={tmp / 'data'}", "--storage.tsdb.retention.time=1h",
            stdout=log, stderr=log,
        )  # fmt: skip
        pids.append(process.pid)
        try:
            await wait_ready(f"http://{address}", process, log_path)
            yield f"http://{address}"
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await asyncio.wait_for(process.wait(), timeout=5)
            pids.remove(process.pid)


def read_log(path: Path) -> str:
    return path.read_text(errors="replace")[-5000:]


async def wait_ready(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        for _ in range(100):
            assert process.returncode is None, f"prometheus exited:\n{read_log(log)}"
            with suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{url}/-/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    pytest.fail(f"prometheus not ready after 20 s:\n{read_log(log)}")


async def query_samples(
    http: aiohttp.ClientSession, prom: str, expr: str, at: float | None = None
) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each sample an instant query returns; fails on a PromQL error."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    async with http.get(f"{prom}/api/v1/query", params=params) as resp:
        body = await resp.json()
    assert body["status"] == "success", f"{expr}: {body}"
    data = body["data"]
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    return [(sample["metric"], float(sample["value"][1])) for sample in data["result"]]


async def query(
    http: aiohttp.ClientSession, prom: str, expr: str, at: float | None = None
) -> list[float]:
    """The values of an instant query (NaN kept)."""
    return [value for _, value in await query_samples(http, prom, expr, at)]


def has_data(values: list[float]) -> bool:
    return any(not math.isnan(v) for v in values)


async def admin(http: aiohttp.ClientSession, emulator: Emulator, path: str, **body: Any) -> Any:
    async with http.post(f"{emulator.autoscaler_url}/admin/{path}", json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def keep_running(
    stop: asyncio.Event, http: aiohttp.ClientSession, url: str, concurrency: int, **body: Any
) -> None:
    while not stop.is_set():
        await run_many(http, url, concurrency, concurrency, body={"payload": {}, **body})
        await asyncio.sleep(0.02)


async def busy_worker(http: aiohttp.ClientSession, emulator: Emulator, endpoint: str) -> int:
    """The id of a worker of ``endpoint`` with a request in progress (bounded wait)."""
    for _ in range(500):
        async with http.get(f"{emulator.autoscaler_url}/admin/workers") as resp:
            workers = await resp.json()
        for worker in workers:
            if worker["endpoint"] == endpoint and worker["num_requests_working"] > 0:
                return int(worker["id"])
        await asyncio.sleep(0.01)
    pytest.fail(f"no busy worker on {endpoint}")


async def inject_faults(http: aiohttp.ClientSession, emulator: Emulator) -> None:
    """The doomed worker killed mid-job (gone, ejection), then route 500s, then route 429s."""
    victim = await busy_worker(http, emulator, "doomed")
    await admin(http, emulator, f"workers/{victim}/kill")
    await admin(http, emulator, "faults", route_error_rate=0.5)
    await asyncio.sleep(1.5)
    await admin(http, emulator, "faults", route_error_rate=0, route_min_interval_ms=200)
    await asyncio.sleep(1.5)
    await admin(http, emulator, "faults", route_min_interval_ms=0)


async def submit(http: aiohttp.ClientSession, daemon: Daemon, endpoint: str, **body: Any) -> Any:
    async with http.post(f"{daemon.url}/v1/endpoints/{endpoint}/jobs", json=body) as resp:
        return resp.status, await resp.json()


@asynccontextmanager
async def driving_load(
    http: aiohttp.ClientSession, daemon: Daemon, emulator: Emulator
) -> AsyncIterator[None]:
    # cold: one job that waits (no worker ever), then jobs that will expire until one is
    # refused (queue full; a job being routed is not counted, hence the bounded loop).
    status, waiting = await submit(http, daemon, "cold", payload={}, timeout_s=120)
    assert status == 202
    statuses = [(await submit(http, daemon, "cold", payload={}, timeout_s=2))[0] for _ in range(4)]
    assert 429 in statuses
    # doomed: one job of 2 s, its worker is killed under it
    assert (await submit(http, daemon, "doomed", payload={}))[0] == 202
    stop = asyncio.Event()
    runs = f"{daemon.url}/v1/endpoints/{{}}/run"
    tasks = [
        asyncio.create_task(keep_running(stop, http, runs.format("echo"), 4)),
        asyncio.create_task(keep_running(stop, http, runs.format("flaky"), 6)),
        # a route the worker does not have: 404, the job fails
        asyncio.create_task(keep_running(stop, http, runs.format("flaky"), 1, route="/nope")),
        asyncio.create_task(inject_faults(http, emulator)),
    ]
    try:
        yield
    finally:
        stop.set()
        async with http.delete(f"{daemon.url}/v1/jobs/{waiting['id']}") as resp:
            assert resp.status == 202
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
    await wait_for_status(http, daemon, waiting["id"], {"cancelled"}, timeout_s=5)


async def variable_values(http: aiohttp.ClientSession, prom: str) -> dict[str, str | None]:
    """Each query variable's values from Prometheus as Grafana's multi-value regex (None if
    there are none)."""
    values: dict[str, str | None] = {}
    for name, variable in variables().items():
        if variable["type"] != "query":
            continue
        known = {k: v or ".*" for k, v in values.items()}
        match = LABEL_VALUES.match(substitute(variable_query(variable), known))
        assert match, variable_query(variable)
        url = f"{prom}/api/v1/label/{match['label']}/values"
        async with http.get(url, params={"match[]": match["selector"]}) as resp:
            found = (await resp.json())["data"]
        values[name] = "(" + "|".join(found) + ")" if found else None
    return values


async def missing_data(http: aiohttp.ClientSession, prom: str) -> list[str]:
    """Every dashboard and alert expression without data (an alert's base when it is quiet)."""
    variable_regexes = await variable_values(http, prom)
    missing = [f"variable {name}: no values" for name, v in variable_regexes.items() if v is None]
    values = {name: v or ".*" for name, v in variable_regexes.items()}
    for title, raw in dashboard_targets():
        expr = substitute(raw, values)
        if not has_data(await query(http, prom, expr)):
            missing.append(f"panel {title!r}: {expr}")
    for rule in alert_rules():
        at = time.time()  # Prometheus's clock: the expression and its base at the same instant
        if has_data(await query(http, prom, rule["expr"], at)):
            continue
        base, op, threshold = split_alert(rule["expr"])
        base_values = await query(http, prom, base, at)
        if not has_data(base_values):
            missing.append(f"alert {rule['alert']} (base): {base}")
        # Quiet means the base is below the threshold, not that the split is wrong.
        assert not any(COMPARISONS[op](v, threshold) for v in base_values), rule["alert"]
    return missing


async def missing_faults(http: aiohttp.ClientSession, prom: str) -> list[str]:
    missing = []
    for (metric, label), wanted in FAULT_SIGNALS.items():
        samples = await query_samples(http, prom, f"sum by ({label}) ({metric}) > 0")
        absent = wanted - {labels[label] for labels, _ in samples}
        if absent:
            missing.append(f"no {metric} with {label} in {sorted(absent)}")
    return missing


async def active_alerts(http: aiohttp.ClientSession, prom: str) -> set[tuple[str, str, str]]:
    async with http.get(f"{prom}/api/v1/alerts") as resp:
        alerts = (await resp.json())["data"]["alerts"]
    return {(a["labels"]["alertname"], a["labels"].get("endpoint", ""), a["state"]) for a in alerts}


async def settle(http: aiohttp.ClientSession, prom: str, timeout_s: float) -> list[str]:
    """Re-evaluates (bounded) until every fault has shown, every expression has data and the
    no-worker alert is pending for the cold endpoint; returns what is still missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = await missing_faults(http, prom) + await missing_data(http, prom)
        if ("VastSchedulerNoWorkers", "cold", "pending") not in await active_alerts(http, prom):
            missing.append("alert VastSchedulerNoWorkers not pending for endpoint cold")
        if not missing or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(1)


async def check_rules_health(http: aiohttp.ClientSession, prom: str) -> None:
    async with http.get(f"{prom}/api/v1/rules") as resp:
        groups = (await resp.json())["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == ALERT_NAMES
    assert all(rule["health"] == "ok" and not rule.get("lastError") for rule in rules), rules


async def check_exposition(http: aiohttp.ClientSession, daemon: Daemon) -> None:
    async with http.get(f"{daemon.url}/metrics") as resp:
        exposition = await resp.read()
    for family in ("worker_errors_total", "route_calls_total", "jobs_rejected_total"):
        assert f"vast_scheduler_{family}".encode() in exposition
    process = await asyncio.create_subprocess_exec(
        tool("promtool"), "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(exposition), timeout=30)
    assert process.returncode == 0, output.decode()


async def only_cold_has_no_workers(http: aiohttp.ClientSession, prom: str, expr: str) -> None:
    """The no-worker condition holds for the endpoint with no worker, and settles on it alone:
    a busy endpoint may meet it for one scrape (its workers past their queue limit, emulated
    Vast answers WAITING while its one-use answers are spent), which the alert's 5 minutes
    ignore."""
    endpoints: set[str] = set()
    for _ in range(20):
        samples = await query_samples(http, prom, expr)
        endpoints = {labels.get("endpoint", "") for labels, _ in samples}
        if endpoints == {"cold"}:
            return
        await asyncio.sleep(0.5)
    assert endpoints == {"cold"}


@pytest.mark.timeout(90)
async def test_real_prometheus_has_data_for_every_panel_and_alert(
    http: aiohttp.ClientSession, tmp_path: Path, started_pids: list[int]
) -> None:
    async with running_emulator(EMULATED) as emulator:
        config = daemon_config(emulator.autoscaler_url, ENDPOINTS, server={"grace_period_s": 1})
        async with running_daemon(config) as daemon:
            target = daemon.url.removeprefix("http://")
            async with running_prometheus(tmp_path, target, started_pids) as prom:
                async with driving_load(http, daemon, emulator):
                    missing = await settle(http, prom, timeout_s=40)
                    assert not missing, "no data:\n" + "\n".join(missing)
                    await check_rules_health(http, prom)
                    no_workers = next(r for r in alert_rules() if r["alert"].endswith("NoWorkers"))
                    await only_cold_has_no_workers(http, prom, no_workers["expr"])
                await check_exposition(http, daemon)
