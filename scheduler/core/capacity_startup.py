"""The per-worker concurrency controller's start-up rules (``core/capacity.py`` holds the
controller and its overview): the verdict on a start-up round, the step it takes, and the first
round's test for queueing. Pure: each takes the policy, the worker's state and the round's
figures, and changes the state."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.core.capacity_state import (
    HEADROOM,
    CapacityPolicy,
    Phase,
    Round,
    WorkerState,
    set_base,
)

MAX_UNFILLED_ROUNDS = 3
# Start-up's throughput grew by at least this share of the limit's growth: the next step is
# 4x instead of 2x.
LINEAR_SHARE = 0.8
LONG_STEP_SHARE = 0.6  # a 4x step that paid less than this share of 4x is measured at 2x
RETESTS = 2  # untested start-up steps stepped from again, at most, in one start-up
# A worker that jumped to its peers' limit and delivers at least this share of what the
# settled ones deliver there is like them: it settles there too.
PEERS_RATE_SHARE = 0.75


@dataclass(frozen=True, slots=True)
class Fleet:
    """What a worker's peers showed, asked only when a start-up verdict needs it: the limit
    they agree on (``Capacity.peers_limit``), the largest limit one of them settled at, and
    the least throughput the settled ones deliver at a given limit (None: none settled
    there)."""

    peers: Callable[[], int | None] = lambda: None
    settled: Callable[[], int | None] = lambda: None
    rate_at: Callable[[int], float | None] = lambda _limit: None


def queued_at_first(state: WorkerState, done: Round) -> bool:
    """The first round, with the worker unknown: jobs that ended well after the fastest
    one (per unit of cost) waited at the worker, as on a FIFO worker. Start-up begins
    again from one job."""
    latencies = done.first_latencies
    if state.limit <= 1 or len(latencies) < 2:
        return False
    fastest = min(latencies)
    if all(latency <= HEADROOM * fastest for latency in latencies):
        return False
    state.limit = 1
    return True


def held_more_paid(
    policy: CapacityPolicy, state: WorkerState, held_mean: float, rate: float, latency: float
) -> bool:
    """Holding ``held_mean`` jobs on average, more than the base limit, delivered at least
    ``probe_efficiency`` of the proportional gain over the base's throughput, at about the
    base's latency per cost (the worker queued none of them)."""
    extra = held_mean / state.base_limit - 1
    return (
        extra > 0
        and latency <= HEADROOM * state.base_latency
        and rate >= state.base_rate * (1 + policy.probe_efficiency * extra)
    )


def startup_verdict(
    policy: CapacityPolicy,
    state: WorkerState,
    done: Round,
    rate: float,
    latency: float,
    held_mean: float,
    filled: bool,
    fleet: Fleet,
) -> tuple[bool, str | None]:
    """Start-up's verdict on a round: (True, reason) when it decided; (False, None) leaves
    the round to the congestion check."""
    held = done.blocked
    if state.base_limit == 0 and queued_at_first(state, done):
        return True, "startup_queued"
    if held and filled:
        return True, startup(policy, state, rate, latency, fleet)
    if filled and state.base_limit and rate < state.base_rate * policy.startup_gain:
        # Filled by a load that matched the limit, and no more throughput than the last
        # limit gave: the step did not pay, whatever held jobs back.
        return True, startup(policy, state, rate, latency, fleet)
    if not held and 2 * state.base_limit < done.peak < state.limit and unfilled(state):
        return True, None  # still filling past the last paying limit: measured again
    if state.base_limit and (done.peak < state.limit or held):
        # The last doubling is untested (the worker was never the one holding jobs
        # back, or never kept full): back to the last limit a held round showed paying.
        # Left higher, a worker the placement favours fills past its batch while
        # another has room. Except after a 4x step the load did not fill, on which the
        # worker held at least the doubling it skipped, and that paid: that doubling is
        # measured next.
        skipped = 2 * state.base_limit
        fallback = state.base_limit
        if state.limit > skipped <= done.peak and held_more_paid(
            policy, state, held_mean, rate, latency
        ):
            fallback = skipped
        else:
            state.long_step_failed = state.limit  # measured, and it did not pay
        state.limit = fallback
        state.retest, state.peers_jump = state.retests < RETESTS, False
        return True, "startup_unheld"
    return False, None


def unfilled(state: WorkerState) -> bool:
    """Counts a round that did not test its limit; False once MAX_UNFILLED_ROUNDS in a row
    did not (the verdict is then taken as it is: such a limit is not paying either)."""
    state.unfilled += 1
    if state.unfilled < MAX_UNFILLED_ROUNDS:
        return True
    state.unfilled = 0
    return False


def startup(
    policy: CapacityPolicy,
    state: WorkerState,
    rate: float,
    latency: float,
    fleet: Fleet,
) -> str:
    """Start-up's step after a round that decided: the next limit, or settled."""
    p = policy
    jumped, state.peers_jump = state.peers_jump, False
    if state.retest and state.limit == state.base_limit and (fleet.peers() or 0) >= 2 * state.limit:
        # This round re-measured the limit an untested step fell back to, and its peers agree
        # on twice that or more: step from it again rather than settle there. Settled, a
        # batching worker left at 8 of its 32 by a warm-up whose placement kept it below the
        # step (its jobs went to its peers' room) stayed at 8 under the full load that
        # followed ((f2) warm at 70 jobs/s against 97). Not past its peers' limit: retested
        # there, a batching worker at its batch queued a batch's worth (fleet simulation:
        # (f1) warm p99 0.81 -> 1.62 s).
        state.retest, state.retests = False, state.retests + 1
        set_base(state, rate, latency)
        state.limit = min(p.max_limit, state.limit * 2)
        return "startup"
    step = state.limit / state.base_limit if state.base_limit else 0.0
    pays = state.base_limit == 0 or rate >= state.base_rate * p.startup_gain
    peers_rate = fleet.rate_at(state.limit) if jumped else None
    if peers_rate is not None and rate >= PEERS_RATE_SHARE * peers_rate:
        # It jumped to its peers' limit and delivers there about what they do: it is like
        # them, and settles where they did (they measured the step above). Judged by the
        # step's length instead, a batching worker's jump 4 -> 32 delivers 4-5x its rate at
        # 4 (each request slows as the batch grows), short of 0.6 x 8, and it was sent back
        # to 8 and climbed again under the load ((f2) warm at 70 jobs/s against 97). One
        # with a smaller batch delivers about half of what they do there, and still steps.
        set_base(state, rate, latency)
        state.phase, state.steady_rounds = Phase.STEADY, 0
        return "startup_done"
    if step > 2 and (not pays or rate < state.base_rate * LONG_STEP_SHARE * step):
        # A long step that paid well short of its length: the knee may lie inside it,
        # where the fallback could not find it. Measure the doubling it skipped.
        state.long_step_failed = state.limit
        state.limit = state.base_limit * 2
        return "startup"
    if pays:
        state.grew = state.grew or state.base_limit >= p.initial_limit
        # Throughput that grew about as much as the limit (a batching worker far below its
        # batch): the next step is twice as long, and the batch is reached in half the
        # rounds. A FIFO or sharing worker never grows so, and still doubles from one.
        linear = step > 1 and rate >= state.base_rate * LINEAR_SHARE * step
        if linear and 4 * state.limit > 2 * (fleet.settled() or math.inf):
            # Not a leap past twice the largest limit another worker settled at (the
            # endpoint's workers run one server): a batching worker at its batch of 32
            # whose round at 32 looked linear against a noisy one at 16 went to 128, and
            # queued 96 jobs behind its batch ((f2) warm at 64 jobs/s against 97).
            linear = False
        first_round = not state.base_limit
        set_base(state, rate, latency)
        if state.long_step_failed and state.limit * 2 >= state.long_step_failed:
            if not state.long_step_retried:
                # The long step failed on one round; with mixed job sizes one round is noisy
                # (in (f2) a batching worker settled at 16 of its 32 this way, for good, in
                # about one run in three). The doubling it skipped paid: measure the step
                # once more before settling below it.
                state.long_step_retried = True
                state.limit = min(p.max_limit, state.limit * 2)
                return "startup"
            state.phase = Phase.STEADY  # the next step was measured already, and failed
            state.steady_rounds = 0
            return "startup_done"
        step_to = state.limit * (4 if linear else 2)
        reason = "startup"
        if first_round and state.base_limit > 1:
            # Its first round showed no queueing: a worker like its settled peers goes
            # to their limit at once (a vLLM worker joining a fleet settled at 32 would
            # otherwise ramp over two more job times). Sent there straight away, one
            # unlike them (a FIFO worker among batching ones) would have queued a batch.
            agreed = fleet.peers() or 0
            if agreed > step_to:
                step_to, reason = agreed, "startup_peers"
                state.peers_jump = True
        state.limit = min(p.max_limit, step_to)
        if state.limit == state.base_limit:
            state.phase = Phase.STEADY
        return reason
    state.phase = Phase.STEADY
    state.steady_rounds = 0
    state.limit = state.base_limit
    return "startup_done"
