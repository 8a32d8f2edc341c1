"""The per-worker concurrency controller's state and settings (``core/capacity.py`` holds
its rules): the policy, each worker's state and its current round, what a sent job carries
back, and a change of limit."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# Latency per cost within this factor of the floor means the worker does not queue what it
# holds (a FIFO or sharing worker holding two jobs is at 2x).
HEADROOM = 1.5


class Phase(enum.StrEnum):
    STARTUP = "startup"
    STEADY = "steady"
    PROBING = "probing"


@dataclass(frozen=True, slots=True)
class CapacityPolicy:
    initial_limit: int = 4
    max_limit: int = 256
    startup_gain: float = 1.25  # a doubling must raise throughput by this factor to go on
    probe_every: int = 8  # rounds at a steady limit between probes
    probe_step: float = 1.25  # a probe raises the limit by this factor (at least one job)
    probe_rounds: int = 2  # a probe must pay in this many rounds in a row to be kept
    probe_efficiency: float = 0.5  # share of the proportional throughput gain a probe must show
    # ... an up probe: those go only while jobs wait here for the worker, where any real gain in
    # throughput shortens every waiting job's wait (a batching server's knee at half the share
    # lies near 1 / its per-request slowdown: a batch of 64 was held at 40-50 of it).
    probe_up_efficiency: float = 0.35
    congestion_ratio: float = 2.0  # latency per cost beyond this times the floor: queueing
    backoff: float = 0.7  # the limit's cut on congestion
    floor_drift: float = 0.02  # per round, so a floor from an old, faster worker is forgotten
    # The work a worker holds at most (its KV cache, in cost units), given by the user: set, a
    # worker takes jobs while their cost fits (the first always), up to max_limit of them,
    # and the learnt limit does not bound it.
    max_worker_cost: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.initial_limit <= self.max_limit:
            raise ValueError("initial_limit must be in [1, max_limit]")
        if self.startup_gain <= 1 or self.probe_step <= 1 or self.congestion_ratio <= 1:
            raise ValueError("startup_gain, probe_step and congestion_ratio must be > 1")
        if not 0 < self.backoff < 1:
            raise ValueError("backoff must be in (0, 1)")
        if not (0 < self.probe_efficiency <= 1 and 0 < self.probe_up_efficiency <= 1):
            raise ValueError("probe_efficiency and probe_up_efficiency must be in (0, 1]")
        if self.max_worker_cost is not None and not self.max_worker_cost > 0:
            raise ValueError("max_worker_cost must be > 0")
        if self.probe_every < 1 or self.probe_rounds < 1 or not 0 <= self.floor_drift < 1:
            raise ValueError("probe_every and probe_rounds must be >= 1, floor_drift in [0, 1)")


@dataclass(frozen=True, slots=True)
class Sent:
    """What the controller notes when a job is sent: given back when it ends."""

    epoch: int  # the round it was sent in
    at: float
    # It joined a worker that already held what the last measured limit held: its latency is
    # the new limit's. (Jobs sent into an emptier worker would make a FIFO worker look faster
    # at two jobs than at one.)
    counted: bool
    cost: float = 1.0
    seq: int = 0  # the worker's count of jobs sent, naming this one


@dataclass(slots=True)
class Round:
    started_at: float
    held_s: float = 0.0  # integral of jobs held over the round's time (job-seconds)
    completions: int = 0  # of jobs sent in this round
    # Over its counted successes: latencies (s) and costs; their ratio is the latency per unit
    # of cost that Little's law wants (a mean of each job's ratio would weigh a small job's
    # fixed overheads as much as a large job's work).
    latency_s: float = 0.0
    cost: float = 0.0
    samples: int = 0
    # The same over every success of the round, sent at the limit or not: an unheld round's
    # measure (no job waited here, so every job sent met the worker as the limit keeps it).
    # A held round takes only the counted ones, whenever it became held: the jobs that ended
    # before it did are those the raise sent into an emptier worker, the fast ones (a
    # batching worker at 64 of its 32 measured at 1.9x its rate at 32 that way, and went
    # to 256).
    all_latency_s: float = 0.0
    all_cost: float = 0.0
    all_samples: int = 0
    blocked: bool = False  # a job waited in the daemon because of this worker's limit
    # Time in which the worker held fewer than half its last paying limit: the load ebbed (a
    # closed loop draining, a lull between bursts), and what the round saw says little of
    # the limit.
    low_s: float = 0.0
    peak: int = 0  # the most jobs held at once during the round
    # The first round only: each ended job's latency per cost (see ``_queued_at_first``).
    first_latencies: list[float] = field(default_factory=list)
    # The counted jobs of this round still running (seq -> sent at, cost). A round that ended
    # on its first completions would see only the jobs that finished first, the small and the
    # lucky, and find throughput where there is none: at its end each of these counts too, at
    # the latency it has so far or the completed jobs' mean, whichever is more.
    running: dict[int, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Change:
    """One change of a worker's limit, for metrics and logs."""

    worker: str
    old: int
    new: int
    # startup[_done|_unheld|_queued|_peers] | probe | probe_kept | probe_dropped | congestion
    # | refused
    reason: str
    # The round that decided it (None for a refusal): delivered cost per second, latency per
    # unit of cost (s), jobs held on average, and the last paying limit's rate it was judged
    # against. Logged with the change, so that a limit's path can be read from the log.
    rate: float | None = None
    latency: float | None = None
    held: float | None = None
    base_rate: float | None = None


@dataclass(slots=True)
class WorkerState:
    limit: int
    phase: Phase = Phase.STARTUP
    epoch: int = 0
    inflight: int = 0  # jobs held now (sent, not ended)
    changed_at: float = 0.0  # when ``inflight`` last changed
    round: Round = field(default_factory=lambda: Round(0.0))
    base_limit: int = 0  # the last limit whose throughput was measured in a held round
    base_rate: float = 0.0  # delivered cost per second at base_limit
    base_latency: float = 0.0  # latency per cost (s per unit) at base_limit
    floor: float | None = None  # least latency per cost seen (s per unit), drifting up
    steady_rounds: int = 0
    probe_wins: int = 0  # rounds in a row the current probe paid
    probe_down: bool = False  # the last probe tried a lower limit
    unfilled: int = 0  # rounds in a row at this limit that were not kept filled
    long_step_failed: int = 0  # the limit a 4x start-up step reached and did not pay at
    long_step_retried: bool = False  # that limit was measured a second time
    # The last start-up step fell back untested (jobs waited here, yet the worker was never
    # kept full at it): the next round re-measures the fallback and steps from it again, at
    # most RETESTS times in a start-up.
    retest: bool = False
    retests: int = 0
    peers_jump: bool = False  # the last start-up step went to the peers' limit
    sent: int = 0  # jobs ever sent to it
    # The limit the last dropped up probe started from: from there the next probe for
    # headroom waits half the probe interval, not HEADROOM_ROUNDS.
    dropped_from: int = 0
    # The next up probe steps half as far as ``probe_step``: set by a dropped up probe, cleared
    # when one is kept, so that a knee between two steps is closed in on (a batch of 24 stood
    # at 20 for good, its probe to 25 queued; 96 at 80).
    half_step: bool = False
    half_step_tried: int = 0  # the limit from which a half step was last tried and dropped
    # Settled near its first limit, never measured below it: probed down from there until a
    # step down costs throughput (``_descend_if_unproven``), once.
    descend: bool = False
    descended: bool = False
    measured_below_initial: bool = False
    grew: bool = False  # a start-up step from at least the first limit paid
    changes: list[Change] = field(default_factory=list)
    first_seen: float = 0.0  # when the controller first heard of it
    settled_at: float | None = None  # when it first left start-up


def set_base(state: WorkerState, rate: float, latency: float) -> None:
    """The current limit is the last one measured: its throughput and latency per cost."""
    state.base_limit, state.base_rate, state.base_latency = state.limit, rate, latency


def round_measure(done: Round, limit: int, now: float) -> tuple[float, float] | None:
    """A round's throughput (cost per second, by Little's law) and latency per cost; None
    when it has no sample (failures only)."""
    elapsed = now - done.started_at
    if not done.samples or elapsed <= 0:
        return None
    latency = done.latency_s / done.cost
    # Held at most the limit: a round after a cut begins with the jobs sent under the old
    # limit still at the worker, held but not among its latencies (a batch of 8 measured
    # 1.26x faster at 16 than at 8 that way, and went back to 32).
    return min(done.held_s / elapsed, limit) / latency, latency
