"""``GET /``: one self-refreshing HTML status page for operators without Grafana.

The page (``static/status.html``, read once at import) carries its CSS and JS inline and
fetches ``v1/status`` every 2 s; the first state is rendered here so the page reads without
JS too. Both renderers emit the same markup, with ``data-k`` keys on every value. Every
string from the status (worker URLs, statuses, error kinds) is escaped here and set as text
(never as markup) by the JS; a Content-Security-Policy admits only the page's own inline
script and style, by hash, so an injected tag could not run anyway.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from html import escape
from importlib.resources import files
from typing import Any

from aiohttp import web

from scheduler.api.vast_status import status as full_status

TEMPLATE = files("scheduler.api").joinpath("static/status.html").read_text(encoding="utf-8")
DASH = "\u2013"
FLOOR_PER_COST = 100  # the workers table shows latency floors in ms per this much cost


def _hashes(tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", TEMPLATE, re.DOTALL)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks
    )


HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
OUTCOMES = ("ready", "no_worker", "rate_limited", "error")


class Html(str):
    """Markup that is already escaped."""

    __slots__ = ()


Kid = Html | str | None


def el(tag: str, attrs: Mapping[str, object] | None = None, *kids: Kid) -> Html:
    attr = "".join(
        f' {name}="{escape(str(value))}"' for name, value in (attrs or {}).items()
        if value is not None
    )  # fmt: skip
    body = "".join(k if isinstance(k, Html) else escape(k) for k in kids if k is not None)
    return Html(f"<{tag}{attr}>{body}</{tag}>")


def num(x: float | None) -> str:
    """As the page's JS: integers plain, others with at most two decimals."""
    if x is None:
        return DASH
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.2f}".rstrip("0").rstrip(".")


def secs(x: float | None) -> str:
    return DASH if x is None else f"{num(x)} s"


def cap(x: int | None) -> str:
    """The endpoint's ``max_concurrency``, as the in-flight tile's subtitle."""
    return "no cap" if x is None else f"of {num(x)}"


def floor_ms(s_per_cost: float | None) -> str:
    """A latency floor (seconds per unit of cost) as milliseconds per 100 units of cost."""
    return DASH if s_per_cost is None else f"{num(s_per_cost * FLOOR_PER_COST * 1000)} ms"


def span(k: str, text: str) -> Html:
    return el("span", {"data-k": k}, text)


def tile(k: str, label: str, value: str, *sub: Kid) -> Html:
    return el("div", {"class": "tile"}, el("div", {"class": "lbl"}, label),
              el("div", {"class": "val", "data-k": k}, value),
              el("div", {"class": "sub"}, *sub))  # fmt: skip


def table(headers: list[str], rows: list[Html], empty_text: str) -> Html:
    if not rows:
        rows = [el("tr", {}, el("td", {"class": "empty", "colspan": len(headers)}, empty_text))]
    head = el("thead", {}, el("tr", {}, *(el("th", {}, h) for h in headers)))
    return el("div", {"class": "scroll"}, el("table", {}, head, el("tbody", {}, *rows)))


def badges(name: str, e: Mapping[str, Any]) -> list[Html]:
    out = [el("span", {"class": "badge info", "data-k": f"{name}/reuse"}, f"reuse {e['reuse']}")]
    if e["legacy_detected"]:
        out.append(el("span", {"class": "badge warn"}, "legacy workers"))
    out.append(
        el("span", {"class": "badge warn"}, "polling for a worker")
        if e["polling"]
        else el("span", {"class": "badge"}, "poller idle")
    )
    if e["last_no_worker"]:
        state = e["last_no_worker"]["state"]
        out.append(el("span", {"class": "badge"}, f"last no-worker: {state}"))
    return out


def tiles(name: str, e: Mapping[str, Any]) -> Html:
    errs = e["errors"]
    return el(
        "div", {"class": "tiles"},
        tile(f"{name}/queue_depth", "Queue depth", num(e["queue_depth"]),
             f"of {num(e['max_depth'])}"),
        tile(f"{name}/queued_cost", "Queued cost", num(e["queued_cost"]),
             "ETA ", span(f"{name}/eta_s", secs(e["eta_s"]))),
        tile(f"{name}/inflight", "In-flight jobs", num(e["inflight"]),
             span(f"{name}/max_concurrency", cap(e["max_concurrency"]))),
        tile(f"{name}/leases", "Cached workers", num(e["leases"]),
             span(f"{name}/lease_workers", num(e["lease_workers"])), " distinct"),
        tile(f"{name}/leased_budget", "Leased budget", num(e["leased_budget"]),
             "in flight ", span(f"{name}/leased_inflight_cost", num(e["leased_inflight_cost"]))),
        tile(f"{name}/throughput", "Throughput /s", num(e["throughput_cost_per_s"]),
             f"calibration \u00d7{num(e['calibration']['ratio'])}"),
        tile(f"{name}/worker_errors_total", "Worker errors", num(sum(errs["worker"].values())),
             "route errors ", span(f"{name}/route_errors_total", num(sum(errs["route"].values())))),
    )  # fmt: skip


def lease_row(name: str, lease: Mapping[str, Any]) -> Html:
    def cell(field: str, text: str, **attrs: object) -> Html:
        return el("td", {**attrs, "data-k": f"{name}/lease/{lease['lease_id']}/{field}"}, text)

    retired = lease["retired"]
    state = "retired" if retired else ("session open" if lease["session"] else "active")
    url = lease["worker_url"]
    return el(
        "tr", {},
        el("td", {}, f"#{lease['lease_id']}"),
        cell("worker_url", url, **{"class": "url", "title": url}),
        cell("mode", lease["mode"]),
        cell("capacity", num(lease["capacity"])),
        cell("budget", num(lease["budget"])),
        cell("inflight_cost", num(lease["inflight_cost"])),
        cell("inflight_jobs", num(lease["inflight_jobs"])),
        el("td", {}, el("meter", {"min": 0, "max": lease["budget"],
                                  "value": lease["inflight_cost"]})),
        cell("completed", num(lease["completed"])),
        cell("expires_in_s", secs(lease["expires_in_s"])),
        el("td", {}, el("span", {"class": "badge bad" if retired else "badge ok"}, state)),
    )  # fmt: skip


def worker_row(name: str, worker: Mapping[str, Any]) -> Html:
    url = worker["worker_url"]

    def cell(field: str, text: str, **attrs: object) -> Html:
        return el("td", {**attrs, "data-k": f"{name}/worker/{url}/{field}"}, text)

    limit = worker["limit"]
    use = (
        el("meter", {"min": 0, "max": limit, "value": worker["inflight_jobs"]})
        if limit is not None
        else None
    )
    return el(
        "tr", {},
        cell("worker_url", url, **{"class": "url", "title": url}),
        cell("limit", num(limit)),
        cell("phase", DASH if worker["phase"] is None else worker["phase"]),
        cell("inflight_jobs", num(worker["inflight_jobs"])),
        el("td", {}, use),
        cell("inflight_cost", num(worker["inflight_cost"])),
        cell("throughput_cost_per_s", num(worker["throughput_cost_per_s"])),
        cell("latency_floor", floor_ms(worker["latency_floor_s_per_cost"])),
    )  # fmt: skip


def route_row(name: str, index: int, route: Mapping[str, Any]) -> Html:
    k = f"{name}/route/{index}/"
    outcome = route["outcome"]
    cls = f"badge {outcome}" if outcome in OUTCOMES else "badge "
    return el(
        "tr", {},
        el("td", {"data-k": f"{k}age_s"}, f"{secs(route['age_s'])} ago"),
        el("td", {}, el("span", {"class": cls, "data-k": f"{k}outcome"}, outcome)),
        el("td", {"data-k": f"{k}cost"}, num(route["cost"])),
        el("td", {}, f"{num(route['latency_s'] * 1000)} ms"),
        el("td", {"class": "url", "data-k": f"{k}detail", "title": route["detail"]},
           route["detail"]),
    )  # fmt: skip


def count_rows(name: str, kind: str, counts: Mapping[str, int]) -> list[Html]:
    return [
        el("tr", {}, el("td", {}, what), el("td", {"data-k": f"{name}/{kind}/{what}"}, num(n)))
        for what, n in counts.items()
    ]


def vast_facts(name: str, vast: Mapping[str, Any]) -> list[Kid]:
    """Where the key comes from and, when the account lists it, the endpoint's settings."""

    def fact(field: str, label: str, text: str) -> list[Kid]:
        return [f", {label} ", span(f"{name}/vast/{field}", text)]

    facts: list[Kid] = ["key from ", span(f"{name}/vast/key_source", vast["key_source"] or DASH)]
    if vast["id"] is not None:
        facts += [*fact("id", "id", num(vast["id"])),
                  *fact("state", "state", vast["state"] or DASH),
                  *fact("max_workers", "max workers", num(vast["max_workers"])),
                  *fact("max_queue_time_s", "max queue time", secs(vast["max_queue_time_s"])),
                  *fact("target_queue_time_s", "target queue time",
                        secs(vast["target_queue_time_s"]))]  # fmt: skip
    return facts


def vast_worker_row(name: str, w: Mapping[str, Any]) -> Html:
    def cell(field: str, text: str) -> Html:
        return el("td", {"data-k": f"{name}/vast_worker/{w['id']}/{field}"}, text)

    return el("tr", {}, cell("id", num(w["id"])), cell("status", w["status"]),
              cell("cur_load", num(w["cur_load"])), cell("perf", num(w["perf"])),
              cell("measured_perf", num(w["measured_perf"])),
              cell("reqs_working", num(w["reqs_working"])),
              cell("reliability", num(w["reliability"])))  # fmt: skip


def vast_block(name: str, e: Mapping[str, Any]) -> Html:
    """The endpoint as Vast's console and autoscaler see it (absent from a bare status)."""
    vast = e.get("vast")
    if not vast:
        return Html("")
    parts = [el("h3", {}, "On Vast"), el("p", {}, *vast_facts(name, vast))]
    seen = vast.get("workers")
    if seen is not None:
        note = seen["unavailable"] or seen["error"]
        if note:
            parts.append(el("p", {}, "workers: ", span(f"{name}/vast/workers_note", note)))
        rows = [vast_worker_row(name, w) for w in seen["workers"]]
        headers = ["Id", "Status", "Load", "Perf", "Measured perf", "Requests", "Reliability"]
        parts.append(table(headers, rows, "no workers listed"))
    return Html("".join(parts))


def endpoint(name: str, e: Mapping[str, Any]) -> Html:
    errs = e["errors"]
    leases = [lease_row(name, lease) for lease in e["lease_details"]]
    workers = [worker_row(name, worker) for worker in e["workers"]]
    routes = [route_row(name, i, r) for i, r in enumerate(e["recent_routes"])]
    lease_headers = ["Lease", "Worker", "Mode", "Capacity", "Budget", "In-flight cost", "Jobs",
                     "Use", "Done", "Expires in", "State"]  # fmt: skip
    worker_headers = ["Worker", "Limit", "Phase", "Jobs", "Use", "Held cost", "Throughput /s",
                      f"Latency floor /{FLOOR_PER_COST} cost"]  # fmt: skip
    return el(
        "section", {"class": "ep", "data-ep": name},
        el("h2", {}, name, *badges(name, e)),
        tiles(name, e),
        el("h3", {}, "Workers"),
        table(worker_headers, workers, "no leased workers"),
        el("h3", {}, "Cached workers (leases)"),
        table(lease_headers, leases, "no cached workers"),
        vast_block(name, e),
        el("div", {"class": "cols"},
           el("div", {}, el("h3", {}, "Last route answers"),
              table(["When", "Outcome", "Cost", "Latency", "Worker / status"], routes,
                    "no route calls yet")),
           el("div", {}, el("h3", {}, "Errors"),
              table(["Worker error", "Count"], count_rows(name, "worker_error", errs["worker"]),
                    "none"),
              table(["Route error", "Count"], count_rows(name, "route_error", errs["route"]),
                    "none"),
              el("p", {}, "ejected workers ",
                 span(f"{name}/ejected_workers", num(errs["ejected_workers"])),
                 ", ejections ", span(f"{name}/ejections", num(errs["ejections"]))))),
    )  # fmt: skip


def render(status: Mapping[str, Any]) -> str:
    """The whole page with ``status`` rendered in (the JS takes over from there)."""
    accepting = bool(status["accepting"])
    header = Html(
        el("span", {"id": "accepting", "class": "badge ok" if accepting else "badge bad"},
           "accepting" if accepting else "draining")
        + el("span", {"id": "updated"}, "rendered by the server")
    )  # fmt: skip
    endpoints = status["endpoints"]
    body = "".join(endpoint(name, endpoints[name]) for name in sorted(endpoints))
    return TEMPLATE.replace("<!--HEADER-->", header, 1).replace("<!--ENDPOINTS-->", body, 1)


async def status_page(request: web.Request) -> web.Response:
    body = render(full_status(request.app))
    return web.Response(text=body, content_type="text/html", headers=HEADERS)
