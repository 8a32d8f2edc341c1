"""Figures from records; JSON, the Markdown summary and the PNG plots."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import Record

# BENCH_RESULTS: write elsewhere (e.g. a profiled run that must not replace the real figures).
RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
MAX_STORED_LATENCIES = 20_000
# "" for real runs; "-quick" for --quick smoke runs, so they never replace real figures.
SUFFIX = {"value": ""}


def today() -> str:
    return dt.date.today().isoformat()


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        mem_gb = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": mem_gb,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def latency_figures(records: Sequence[Record]) -> dict[str, Any]:
    """Percentiles (ms) over the jobs that succeeded."""
    ok = sorted(r.latency_s * 1000 for r in records if r.ok)
    pct = {f"p{int(q * 100)}": percentile(ok, q) for q in (0.5, 0.95, 0.99)}
    figures = {k: None if v is None else round(v, 3) for k, v in pct.items()}
    figures["mean"] = round(sum(ok) / len(ok), 3) if ok else None
    figures["max"] = round(ok[-1], 3) if ok else None
    return figures


def rate_to_share(records: Sequence[Record], share: float = 0.9) -> float | None:
    """Jobs/s until ``share`` of the succeeded jobs had ended: the run's pace without its
    last jobs. A closed loop of a few seconds ends on its slowest few (in (f2) a few large
    jobs queued behind one worker's batch can add a third to a 4 s run), so next to the
    whole run's throughput this tells a slow pace from a slow tail."""
    ok = sorted(r.end_s for r in records if r.ok)
    if not ok or not 0 < share <= 1:
        return None
    first = min(r.start_s for r in records if r.ok)
    count = max(1, math.ceil(share * len(ok)))
    span = ok[count - 1] - first
    return round(count / span, 1) if span > 0 else None


def stored_latencies(records: Sequence[Record]) -> list[float]:
    ok = sorted(round(r.latency_s * 1000, 3) for r in records if r.ok)
    if len(ok) <= MAX_STORED_LATENCIES:
        return ok
    step = len(ok) / MAX_STORED_LATENCIES
    return [ok[int(i * step)] for i in range(MAX_STORED_LATENCIES)]


def add_over_direct(runs: list[dict[str, Any]]) -> None:
    """``added_ms`` per run: its percentiles minus those of the direct run of the same variant
    and repetition."""
    floors = {(r["variant"], r.get("rep")): r for r in runs if r["system"].startswith("direct")}
    for run in runs:
        floor = floors.get((run["variant"], run.get("rep")))
        if floor is None or run is floor:
            continue
        mine, base = run.get("latency_ms") or {}, floor.get("latency_ms") or {}
        run["added_over_direct_ms"] = {
            k: round(mine[k] - base[k], 3)
            for k in ("p50", "p95", "p99")
            if mine.get(k) is not None and base.get(k) is not None
        }


def _median(values: list[Any]) -> Any:
    present = sorted(v for v in values if v is not None)
    if not present:
        return None
    mid = len(present) // 2
    middle = present[mid] if len(present) % 2 else (present[mid - 1] + present[mid]) / 2
    return round(middle, 4) if isinstance(middle, float) else middle


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant and system over its repetitions (``rep`` 1, 2, ...): the median of
    each figure (the latency added over direct: of each repetition's paired difference); jobs,
    failures and route calls summed, peak RSS the largest."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        if isinstance(run.get("rep"), int):
            groups.setdefault((run["variant"], run["system"]), []).append(run)
    rows = []
    for (variant, system), reps in groups.items():

        def med(*path: str, of: list[dict[str, Any]] = reps) -> Any:
            values = []
            for run in of:
                value: Any = run
                for key in path:
                    value = value.get(key) if isinstance(value, dict) else None
                values.append(value)
            return _median(values)

        jobs = sum(r["jobs"] for r in reps)
        routes = sum(r.get("route_calls") or 0 for r in reps)
        row: dict[str, Any] = {
            "variant": variant,
            "system": system,
            "rep": "median",
            "reps": len(reps),
            "jobs": jobs,
            "succeeded": sum(r["succeeded"] for r in reps),
            "failed": sum(r["failed"] for r in reps),
            "throughput_jobs_s": med("throughput_jobs_s"),
            "jobs_s_to_90pct": med("jobs_s_to_90pct"),
            "latency_ms": {k: med("latency_ms", k) for k in ("p50", "p95", "p99", "mean", "max")},
            "route_calls": routes,
            "route_calls_per_job": round(routes / jobs, 4) if jobs else None,
            "daemon_cpu_s_per_1k": med("daemon_cpu_s_per_1k"),
            "daemon_peak_rss_mb": max((r.get("daemon_peak_rss_mb") or 0 for r in reps), default=0)
            or None,
            "emulator_cpu_s_per_1k": med("emulator_cpu_s_per_1k"),
            "client_cpu_s_per_1k": med("client_cpu_s_per_1k"),
        }
        if any("added_over_direct_ms" in r for r in reps):
            row["added_over_direct_ms"] = {
                k: med("added_over_direct_ms", k) for k in ("p50", "p95", "p99")
            }
        rows.append(row)
    return rows


def failed_runs(data: dict[str, Any]) -> list[str]:
    """The runs of a scenario in which jobs failed, one line each; a run whose failures are
    its design (``failed_by_design``: (e)'s pending official requests, cancelled at the end)
    and the rows of medians (their repetitions are listed) are left out."""
    return [
        f"{run['variant']} / {run['system']}: {run['failed']} of {run['jobs']} jobs failed "
        f"{run.get('failed_statuses') or ''}".rstrip()
        for run in data.get("runs", [])
        if run.get("failed") and not run.get("failed_by_design") and run.get("rep") != "median"
    ]


def write_json(scenario: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{today()}-{scenario}{SUFFIX['value']}.json"
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


SUMMARY_COLUMNS = (
    ("scenario", lambda s, r: s),
    ("variant", lambda s, r: r["variant"]),
    ("system", lambda s, r: r["system"]),
    ("jobs", lambda s, r: _fmt(r["jobs"])),
    ("failed", lambda s, r: _fmt(r["failed"])),
    ("jobs/s", lambda s, r: _fmt(r.get("throughput_jobs_s"))),
    ("p50 ms", lambda s, r: _fmt(r["latency_ms"].get("p50"), 2)),
    ("p95 ms", lambda s, r: _fmt(r["latency_ms"].get("p95"), 2)),
    ("p99 ms", lambda s, r: _fmt(r["latency_ms"].get("p99"), 2)),
    ("+p50 ms", lambda s, r: _fmt(r.get("added_over_direct_ms", {}).get("p50"), 2)),
    ("+p99 ms", lambda s, r: _fmt(r.get("added_over_direct_ms", {}).get("p99"), 2)),
    ("route/job", lambda s, r: _fmt(r.get("route_calls_per_job"), 3)),
    ("route calls", lambda s, r: _fmt(r.get("route_calls"))),
    ("route in cold", lambda s, r: _fmt(r.get("route_calls_cold"))),
    ("daemon CPU s/1k", lambda s, r: _fmt(r.get("daemon_cpu_s_per_1k"), 3)),
    ("daemon peak RSS MB", lambda s, r: _fmt(r.get("daemon_peak_rss_mb"))),
    ("client CPU s/1k", lambda s, r: _fmt(r.get("client_cpu_s_per_1k"), 3)),
)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def summary_markdown(date: str) -> str:
    files = sorted(RESULTS.glob(f"{date}-[a-i]{SUFFIX['value']}.json"))
    datas = [json.loads(f.read_text()) for f in files]
    lines = [f"# vast-scheduler benchmark, {date}", ""]
    if datas:
        m = datas[0]["machine"]
        lines += [
            f"Machine: {m['cores']} cores, {m['cpu_model']}, {m.get('memory_gb')} GB, "
            f"Python {m['python']}, {m['platform']}; load average at start "
            f"{m['load_average_at_start']} (shared machine: preliminary numbers). "
            f"Scheduler code: {m.get('scheduler_src')} (commit {m.get('commit', '?')}, "
            f"uncommitted changes in scheduler/: {m.get('scheduler_dirty', '?')}).",
            "",
            "Each system ran against a fresh emulator process with the same config, seed and "
            "job list; the daemon ran as its own process (CPU and RSS are its own); the load "
            "generator (and the official client, which runs inside it) is the bench process. "
            "`+p50/+p99`: latency added over the direct path in the same variant. "
            "`client CPU`: the bench process (load generator + official client).",
            "",
        ]
    header = [name for name, _ in SUMMARY_COLUMNS]
    table_head = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += table_head
    for data in datas:  # single runs, and the medians of repeated ones
        lines += _rows(data, lambda run: not isinstance(run.get("rep"), int))
    repeated = [d for d in datas if any(isinstance(r.get("rep"), int) for r in d["runs"])]
    if repeated:
        lines += ["", "### Each repetition (the medians above are over these)", "", *table_head]
        for data in repeated:
            lines += _rows(data, lambda run: isinstance(run.get("rep"), int))
    lines += [
        "",
        "## Targets (issue 6)",
        "",
        "| scenario | target | measured | met |",
        "|---|---|---|---|",
    ]
    for data in datas:
        for t in data.get("targets", []):
            met = "yes" if t["met"] else ("**no**" if t["met"] is False else "-")
            lines.append(f"| {data['scenario']} | {t['target']} | {t['measured']} | {met} |")
    runs_at = [
        f"- {d['scenario']}: started {d['started_at']}, load average (1/5/15 min) "
        f"{d['load_average']['start']} at start, {d['load_average']['end']} at end, commit "
        f"{d['machine'].get('commit', '?')} (uncommitted scheduler/ changes: "
        f"{d['machine'].get('scheduler_dirty', '?')})"
        for d in datas
        if "load_average" in d
    ]
    if runs_at:
        lines += ["", "## When each scenario ran", "", *runs_at]
    notes = [f"- {d['scenario']}: {n}" for d in datas for n in d.get("notes", [])]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def _rows(data: dict[str, Any], keep: Callable[[dict[str, Any]], bool]) -> list[str]:
    quick = " (quick)" if data.get("quick") else ""
    out = []
    for run in data["runs"]:
        if keep(run):
            rep = run.get("rep")
            label = f" [rep {rep}]" if isinstance(rep, int) else (" [median]" if rep else "")
            cells = [fn(data["scenario"] + quick + label, run) for _, fn in SUMMARY_COLUMNS]
            out.append("| " + " | ".join(cells) + " |")
    return out


def write_summary(date: str) -> Path:
    path = RESULTS / f"{date}-summary{SUFFIX['value']}.md"
    path.write_text(summary_markdown(date), encoding="utf-8")
    return path


def plots(scenario: str, data: dict[str, Any]) -> list[Path]:
    """Latency CDF per variant (one colour per system, or per system and copy in a screen of
    two copies); route calls over time for (c)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[Path] = []
    variants = sorted({r["variant"] for r in data["runs"] if r.get("latencies_ms")})
    for variant in variants:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colours: dict[str, str] = {}  # one per system; its repetitions share it
        for run in data["runs"]:
            lat = run.get("latencies_ms") or []
            if run["variant"] != variant or not lat:
                continue
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            system = run["system"] + (f" [{run['copy']}]" if "copy" in run else "")
            first = system not in colours
            colours.setdefault(system, f"C{len(colours)}")
            ax.plot(lat, ys, color=colours[system], label=system if first else None, lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (ms, log)")
        ax.set_ylabel("fraction of jobs")
        ax.set_title(f"scenario {scenario}: {variant}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        slug = "".join(c if c.isalnum() else "-" for c in variant).strip("-")
        path = RESULTS / f"{today()}-{scenario}-cdf-{slug}{SUFFIX['value']}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    series = [r for r in data["runs"] if r.get("route_times_s")]
    if series:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run in series:
            times = run["route_times_s"]
            ax.step(times, range(1, len(times) + 1), where="post", label=run["system"])
        cold_s = data.get("params", {}).get("cold_start_s")
        if cold_s:
            ax.axvline(cold_s, color="grey", linestyle="--", label="workers ready")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("seconds since the jobs arrived")
        ax.set_ylabel("route calls (cumulative)")
        ax.set_title(f"scenario {scenario}: route calls over time")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = RESULTS / f"{today()}-{scenario}-route-calls{SUFFIX['value']}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
