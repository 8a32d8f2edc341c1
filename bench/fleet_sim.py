"""The daemon's placement and concurrency limits over a simulated fleet, in simulated time.

``python -m bench.fleet_sim [--seeds 12] [--scenario f2-late ...]``: in seconds instead of a
2.5-minute run of (f), and exact for a seed, so that a change to ``core/capacity.py`` or
``core/assignments.py`` can be judged over many seeds before the real benchmark.
``--batch-sweep``: one batching worker of each batch from 4 to 128 instead, and where its
limit settles (real batches are whatever a GPU's memory holds, seldom a power of two).

What is real: ``LeasePool.choose`` / ``acquire`` / ``release`` with its ``BusyMeter`` and
``Capacity`` (the daemon's own code), and the emulator's service models (``WorkQueue``:
batching, FIFO, processor sharing). What is not: one session lease per worker with an
unbounded budget (no route calls, no lease budgets, no idle close), no network or event-loop
time, and every job's cost known exactly. It reproduces (f)'s cold runs within ~10% (f1
93.6 jobs/s against 85-91 in the bench, f2 60-78 against 59-79) but not the bench's (f2)
warm misses, which come from what it leaves out (a worker left unleased after the warm-up).

Scenarios, closed loop at concurrency 96 as in (f)-(h):
- ``cold``: a fresh daemon on ready workers;
- ``warm``: after 300 jobs not counted, on fresh workers (limits learnt);
- ``late``: the warm-up ran on all workers but the last, which joins for the measured run
  (Vast added a worker to a busy fleet);
(``l``: a fleet of unlike GPUs, batches of 8, 8 and 64, as bench (l); ``n``: batches of 24;
``m``: batches bound by memory as well, 3,200 cost units, under (f2)'s mix, as bench (m));
and ``official-like``: every job sent at once to the worker with the least outstanding cost
per unit of its speed, what Vast's route does for the official client.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.report import RESULTS, machine, percentile, today
from scheduler.core.assignments import Held, Lease, LeaseLimits, LeasePool, ReuseMode
from scheduler.core.capacity import (
    Capacity,
    CapacityPolicy,
    Change,
    Round,
    Sent,
    WorkerState,
    round_measure,
)
from scheduler.emulator.settings import BatchMemory, EmulatedEndpoint, ServiceModel
from scheduler.emulator.workload import WorkQueue, benchmark_perf

CONCURRENCY = 96
WARM_JOBS = 300
MAX_EVENTS = 2_000_000  # a bound on every simulation loop
MIX = (20.0, 20.0, 20.0, 20.0, 400.0)  # (f2)'s 80% cost 20, 20% cost 400


@dataclass(frozen=True)
class Worker:
    service: ServiceModel
    perf: float = 200.0
    max_batch: int = 32
    slowdown: float = 0.02
    max_batch_cost: float | None = None
    batch_memory: BatchMemory = "reserve"

    @property
    def reported_perf(self) -> float:
        """The ``max_perf`` its load-time benchmark reports (10 requests at once unless FIFO;
        ``benchmark_perf`` in the emulator), which Vast's route weighs workers by."""
        return benchmark_perf(
            EmulatedEndpoint(
                perf=self.perf, service=self.service, max_batch=self.max_batch,
                batch_slowdown=self.slowdown, max_batch_cost=self.max_batch_cost,
                batch_memory=self.batch_memory,
            )
        )  # fmt: skip

    def queue(self) -> WorkQueue:
        return WorkQueue(
            rate=self.perf, service=self.service, max_batch=self.max_batch,
            batch_slowdown=self.slowdown, max_batch_cost=self.max_batch_cost,
            batch_memory=self.batch_memory,
        )  # fmt: skip


@dataclass
class Outcome:
    jobs_per_s: float
    p50_s: float
    p99_s: float
    ended_at: float
    limits: dict[str, int] = field(default_factory=dict)


def job_cost(seed: int, job: int, costs: Sequence[float]) -> float:
    return random.Random(seed * 1_000_003 + job).choice(list(costs))


def _outcome(latencies: list[float], started: float, ended: float, jobs: int) -> Outcome:
    latencies.sort()
    span = max(ended - started, 1e-9)
    return Outcome(
        round(jobs / span, 1),
        round(percentile(latencies, 0.5) or 0.0, 3),
        round(percentile(latencies, 0.99) or 0.0, 3),
        ended,
    )


class _ThroughDaemon:
    """One closed-loop run through a ``LeasePool``: jobs wait in the daemon's queue (FIFO)
    until ``choose`` places them, every completion brings the next job."""

    def __init__(self, pool: LeasePool, queues: dict[str, WorkQueue], costs: Sequence[float],
                 jobs: int, seed: int, started: float,
                 concurrency: int = CONCURRENCY) -> None:  # fmt: skip
        self.pool, self.queues, self.costs, self.jobs, self.seed = pool, queues, costs, jobs, seed
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.now = started
        self.waiting: deque[int] = deque()
        self.running: dict[int, tuple[Lease, Sent | None, float]] = {}
        self.arrived: dict[int, float] = {}
        self.latencies: list[float] = []
        self.issued = 0

    def arrive(self) -> None:
        if self.issued < self.jobs:
            self.waiting.append(self.issued)
            self.arrived[self.issued] = self.now
            self.issued += 1

    def finish(self, done: list[int]) -> None:
        for job in done:
            lease, sent, cost = self.running.pop(job)
            self.pool.release(lease, cost, self.now, True, sent)
            self.latencies.append(self.now - self.arrived.pop(job))
            self.arrive()

    def place(self) -> None:
        while self.waiting:
            cost = job_cost(self.seed, self.waiting[0], self.costs)
            lease = self.pool.choose(cost, self.now, self.rng)
            if lease is None or isinstance(lease, Held):
                return
            job = self.waiting.popleft()
            self.running[job] = (lease, self.pool.acquire(lease, cost, self.now), cost)
            self.finish(self.queues[lease.worker_url].add(job, cost, self.now))

    def run(self) -> float:
        for _ in range(self.concurrency):
            self.arrive()
        for _ in range(MAX_EVENTS):
            self.place()
            if len(self.latencies) >= self.jobs:
                return self.now
            steps = [s for s in (q.next_completion_in() for q in self.queues.values()) if s]
            if not steps:
                raise RuntimeError("jobs wait while every worker idles")
            self.now += max(min(steps), 1e-9)
            for queue in self.queues.values():
                self.finish(queue.advance(self.now))
        raise RuntimeError("simulation did not finish")


def through_daemon(
    fleet: Sequence[Worker],
    costs: Sequence[float],
    jobs: int,
    seed: int,
    pool: LeasePool | None = None,
    started: float = 0.0,
    policy: CapacityPolicy | None = None,
    concurrency: int = CONCURRENCY,
) -> tuple[Outcome, LeasePool]:
    """``jobs`` jobs through the daemon's placement, ``CONCURRENCY`` outstanding at a time;
    ``pool``: the daemon's state from an earlier run (its limits and rates), else fresh."""
    if pool is None:
        limits = LeaseLimits(ttl_s=1e12, idle_close_s=1e12)
        pool = LeasePool(limits, capacity=Capacity(policy or CapacityPolicy()))
    urls = [f"w{i}" for i in range(len(fleet))]
    for url in urls:
        pool.new_lease(url, None, ReuseMode.SESSION, 1e12, started)
    queues = {url: worker.queue() for url, worker in zip(urls, fleet, strict=True)}
    loop = _ThroughDaemon(pool, queues, costs, jobs, seed, started, concurrency)
    ended = loop.run()
    outcome = _outcome(loop.latencies, started, ended, jobs)
    capacity = pool.capacity
    outcome.limits = {url: capacity.limit(url) for url in urls} if capacity else {}
    return outcome, pool


def official_like(fleet: Sequence[Worker], costs: Sequence[float], jobs: int, seed: int) -> Outcome:
    """Every job sent at once to the worker with the least outstanding cost per unit of the
    perf it reports."""
    queues = [worker.queue() for worker in fleet]
    perfs = [worker.reported_perf for worker in fleet]
    outstanding = [0.0] * len(fleet)
    rng = random.Random(seed)
    now = 0.0
    where: dict[int, int] = {}
    arrived: dict[int, float] = {}
    latencies: list[float] = []
    issued = 0

    def send() -> list[int]:
        nonlocal issued
        if issued >= jobs:
            return []
        job, cost = issued, job_cost(seed, issued, costs)
        issued += 1
        arrived[job] = now
        best = min(range(len(fleet)), key=lambda i: (outstanding[i] / perfs[i], rng.random()))
        outstanding[best] += cost
        where[job] = best
        return queues[best].add(job, cost, now)

    def finish(done: list[int]) -> None:
        for job in done:
            outstanding[where[job]] -= job_cost(seed, job, costs)
            latencies.append(now - arrived.pop(job))
            finish(send())

    for _ in range(CONCURRENCY):
        finish(send())
    for _ in range(MAX_EVENTS):
        if len(latencies) >= jobs:
            break
        steps = [s for s in (q.next_completion_in() for q in queues) if s is not None]
        now += max(min(steps), 1e-9)
        for queue in queues:
            finish(queue.advance(now))
    else:
        raise RuntimeError("simulation did not finish")
    return _outcome(latencies, 0.0, now, jobs)


@dataclass(frozen=True)
class Scenario:
    name: str
    fleet: tuple[Worker, ...]
    costs: tuple[float, ...]
    jobs: int


BATCHING = Worker("batching")
SMALL_BATCH = Worker("batching", max_batch=8)
PAGED = Worker("batching", max_batch=64, max_batch_cost=3200.0, batch_memory="grow")
SCENARIOS = (
    Scenario("f1", (BATCHING,) * 3, (100.0,), 600),
    Scenario("f2", (BATCHING,) * 3, MIX, 400),
    Scenario("g", (Worker("fifo"),) * 3, MIX, 300),
    Scenario("h", (BATCHING, Worker("fifo"), Worker("processor_sharing")), MIX, 600),
    # Its "late" variant: a worker unlike its settled peers joins (a FIFO one, batching peers).
    Scenario("u", (BATCHING, BATCHING, Worker("fifo")), (100.0,), 600),
    # Unlike GPUs, bench (l): batches of 8, 8 and 64; long enough for probes to tell.
    Scenario("l", (SMALL_BATCH, SMALL_BATCH, Worker("batching", max_batch=64)), (100.0,), 2000),
    # A batch that is no power of two (a vLLM server's is what its GPU's memory holds), three of
    # 24 under 96 clients: the official client keeps each batch full with 8 queued behind it.
    Scenario("n", (Worker("batching", max_batch=24),) * 3, (95.0, 100.0, 105.0), 4000),
    # A batch bound by memory (a vLLM server's KV cache holds so many tokens): 64 requests
    # at most, and 3,200 units of work (32 of cost 100; 8 of the mix's 400s, 160 of its 20s).
    Scenario("m", (Worker("batching", max_batch=64, max_batch_cost=3200.0),) * 3, MIX, 1200),
    # The same memory paged (vLLM): a request holds its prompt (a tenth of its work) and what it
    # has generated; when the batch's memory is full the newest is preempted and starts again.
    Scenario("v", (PAGED,) * 3, MIX, 1200),
)


def run_variant(scenario: Scenario, variant: str, seed: int) -> Outcome:
    fleet, costs, jobs = scenario.fleet, scenario.costs, scenario.jobs
    if variant == "official-like":
        return official_like(fleet, costs, jobs, seed)
    if variant == "cold":
        return through_daemon(fleet, costs, jobs, seed)[0]
    if variant == "told":
        told = CapacityPolicy(max_worker_cost=fleet[0].max_batch_cost)
        return through_daemon(fleet, costs, jobs, seed, policy=told)[0]
    warm_fleet = fleet if variant == "warm" else fleet[:-1]
    warm, pool = through_daemon(warm_fleet, costs, WARM_JOBS, seed + 100)
    return through_daemon(fleet, costs, jobs, seed, pool, warm.ended_at + 0.001)[0]


VARIANTS = ("official-like", "cold", "warm", "late")
SWEEP_BATCHES = range(4, 129)
SWEEP_S = 60.0  # of steady load per batch size
SWEEP_COSTS = {"cost 100": (100.0,), "cost 50/100/150": (50.0, 100.0, 150.0)}


def batch_sweep() -> dict[str, Any]:
    """One batching worker of each batch size from 4 to 128 under three times its batch in
    clients for about ``SWEEP_S`` seconds: the limit the daemon settles at (the last that
    paid), and how many sizes settle within 0.9-1.25x of their batch."""
    out: dict[str, Any] = {}
    for name, costs in SWEEP_COSTS.items():
        settled: dict[int, int] = {}
        for batch in SWEEP_BATCHES:
            worker = Worker("batching", max_batch=batch)
            rate = batch / (sum(costs) / len(costs) / worker.perf) / (1 + worker.slowdown * batch)
            jobs = int(SWEEP_S * rate)
            _, pool = through_daemon((worker,), costs, jobs, 1, concurrency=3 * batch)
            state = pool.capacity.state("w0") if pool.capacity else None
            settled[batch] = state.base_limit if state else 0
        within = [b for b, limit in settled.items() if 0.9 * b <= limit <= 1.25 * b]
        out[name] = {"settled": settled, "within": len(within), "sizes": len(settled)}
    return out


class _FixedLimits(Capacity):
    """Limits that never change; each round's reading (``round_measure``) is kept instead."""

    def __init__(self, policy: CapacityPolicy) -> None:
        super().__init__(policy)
        self.readings: list[float] = []

    def _end_round(self, worker: str, state: WorkerState, done: Round, now: float) -> Change | None:
        measure = round_measure(done, state.limit, now)
        if measure is not None:
            self.readings.append(measure[0])
        return None


FIXED_LIMITS = (4, 8, 10, 12, 16, 24, 32, 48)
FIXED_JOBS = 2000
SKIPPED_ROUNDS = 5  # the first rounds fill the worker


def fixed_limits(scenario: Scenario, limits: Sequence[int] = FIXED_LIMITS) -> dict[str, Any]:
    """One worker of ``scenario``'s first kind, under CONCURRENCY clients, its limit held at
    each of ``limits``: the cost it delivers per second, and the median of what the
    controller's round measure reads there (its rounds' throughput by Little's law). Where
    the two part, the controller steers by a wrong reading."""
    worker, rows = scenario.fleet[0], {}
    mean_cost = sum(scenario.costs) / len(scenario.costs)
    for limit in limits:
        capacity = _FixedLimits(CapacityPolicy(initial_limit=limit, max_limit=limit))
        pool = LeasePool(LeaseLimits(ttl_s=1e12, idle_close_s=1e12), capacity=capacity)
        outcome, _ = through_daemon((worker,), scenario.costs, FIXED_JOBS, 1, pool)
        readings = capacity.readings[SKIPPED_ROUNDS:] or capacity.readings
        rows[str(limit)] = {
            "delivered_cost_s": round(outcome.jobs_per_s * mean_cost, 1),
            "read_cost_s_median": round(statistics.median(readings), 1) if readings else None,
            "p99_s": outcome.p99_s,
        }
    return rows


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    rates = sorted(o.jobs_per_s for o in outcomes)
    return {
        "jobs_per_s_median": round(statistics.median(rates), 1),
        "jobs_per_s_min": rates[0],
        "p99_s_median": round(statistics.median(o.p99_s for o in outcomes), 3),
        "runs": [asdict(o) for o in outcomes],
    }


def main(argv: Sequence[str] | None = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_sim")
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS])
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--batch-sweep", action="store_true",
                        help="one worker of each batch from 4 to 128 instead")  # fmt: skip
    parser.add_argument("--fixed-limits", action="store_true",
                        help="one worker of each scenario at fixed limits instead")  # fmt: skip
    args = parser.parse_args(argv)
    if args.fixed_limits:
        return _fixed_limits_command(args.scenario or ["m", "v"], args.no_write, emit)
    if args.batch_sweep:
        sweep = {"machine": machine(), "sweep": batch_sweep()}
        for name, got in sweep["sweep"].items():
            emit(f"{name}: {got['within']} of {got['sizes']} batch sizes settle within"
                 f" 0.9-1.25x of the batch")  # fmt: skip
        if not args.no_write:
            path = RESULTS / f"{today()}-batch-sweep.json"
            path.write_text(json.dumps(sweep, indent=1) + "\n")
            emit(f"written: {path}")
        return sweep
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    results: dict[str, Any] = {"machine": machine(), "seeds": args.seeds, "scenarios": {}}
    for scenario in chosen:
        told = ("told",) if scenario.fleet[0].max_batch_cost else ()
        for variant in VARIANTS + told:
            outcomes = [run_variant(scenario, variant, seed) for seed in range(1, args.seeds + 1)]
            summary = summarise(outcomes)
            results["scenarios"][f"{scenario.name} {variant}"] = summary
            emit(
                f"{scenario.name:3} {variant:13} jobs/s median {summary['jobs_per_s_median']:6.1f}"
                f" min {summary['jobs_per_s_min']:6.1f}  p99 median {summary['p99_s_median']:.2f} s"
            )
    if not args.no_write:
        path = RESULTS / f"{today()}-fleet-sim.json"
        path.write_text(json.dumps(results, indent=1) + "\n")
        emit(f"written: {path}")
    return results


def _fixed_limits_command(
    names: Sequence[str], no_write: bool, emit: Callable[[str], None]
) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "clients": CONCURRENCY, "fixed": {}}
    for scenario in (s for s in SCENARIOS if s.name in names):
        rows = fixed_limits(scenario)
        results["fixed"][scenario.name] = rows
        for limit, row in rows.items():
            emit(f"{scenario.name:3} limit {limit:>3}: delivered {row['delivered_cost_s']:7.1f}"
                 f"  read {row['read_cost_s_median']}  p99 {row['p99_s']} s")  # fmt: skip
    if not no_write:
        path = RESULTS / f"{today()}-fixed-limits.json"
        path.write_text(json.dumps(results, indent=1) + "\n")
        emit(f"written: {path}")
    return results


if __name__ == "__main__":
    main()
