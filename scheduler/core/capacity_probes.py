"""The per-worker concurrency controller's rules once start-up is over (``core/capacity.py``
holds the controller and its overview): steady rounds and the probes they schedule, a probe's
verdict, the cut on congestion, and the descent of a worker that never proved its first
limit. Pure: each takes the policy, the worker's state and the round's figures."""

from __future__ import annotations

import math

from scheduler.core.capacity_state import (
    HEADROOM,
    CapacityPolicy,
    Phase,
    WorkerState,
    set_base,
)

HEADROOM_ROUNDS = 2  # steady rounds within HEADROOM of the floor before an up probe
# An up probe whose gain was at least this share of the proportional one found a worker far
# from its knee (its batch grew, others left it): the doubling of start-up resumes.
STRONG_PROBE = 0.7


def descend_if_unproven(policy: CapacityPolicy, state: WorkerState, measured_at: int) -> None:
    """A worker that settles within a doubling of the first limit without a round below
    it may serve one job as fast as a few (a sharing worker holding four jobs shows the
    same throughput at eight, and its latency per cost never left the floor it set there):
    its limit is probed down at once, until a step down costs throughput."""
    initial = policy.initial_limit
    if measured_at < initial:
        state.measured_below_initial = True
    if (
        initial > 1
        and not state.descended
        and not state.grew
        and not state.measured_below_initial
        and state.phase is Phase.STEADY
        and state.limit <= 2 * initial
    ):
        state.descend = state.descended = True
        state.steady_rounds = policy.probe_every - 1


def steady(policy: CapacityPolicy, state: WorkerState, rate: float, latency: float) -> str | None:
    p = policy
    state.steady_rounds += 1
    state.base_rate += 0.5 * (rate - state.base_rate)
    state.base_latency += 0.5 * (latency - state.base_latency)
    # Latency per cost near the floor: the worker does not queue what it holds, so more
    # may pay (a batching worker below its batch); probe up soon instead of waiting.
    if state.descend and state.limit > 1:
        state.probe_down = True
        state.phase = Phase.PROBING
        state.limit //= 2  # a halving: what it costs a batching worker stands out of noise
        return "probe"
    state.descend = False
    headroom = state.floor is not None and latency <= HEADROOM * state.floor
    if (
        headroom
        and state.steady_rounds >= HEADROOM_ROUNDS
        and state.limit < p.max_limit
        and (state.limit != state.dropped_from or state.steady_rounds >= p.probe_every // 2)
    ):
        state.probe_down = True  # so that the probe below goes up
    elif state.steady_rounds < p.probe_every:
        return None
    state.probe_down = not state.probe_down  # up and down in turn
    if state.probe_down and state.limit > 1:
        probe = min(state.limit - 1, math.floor(state.limit / p.probe_step))
    elif state.limit < p.max_limit:
        state.probe_down = False
        step = 1 + (p.probe_step - 1) / 2 if state.half_step else p.probe_step
        probe = min(p.max_limit, max(state.limit + 1, math.ceil(state.limit * step)))
    else:
        return None
    state.phase = Phase.PROBING
    state.limit = probe
    return "probe"


def judge_probe(
    policy: CapacityPolicy, state: WorkerState, rate: float, latency: float, congested: bool
) -> str | None:
    """Up: kept when throughput grew enough for the jobs added. Down: kept when
    throughput held (what the worker held beyond it only waited there)."""
    p = policy
    proportional = state.limit / max(state.base_limit, 1) - 1
    if state.descend:
        # Lost less than half the proportional share: a batching worker below its batch
        # loses about all of it, a sharing or FIFO one nothing. One round decides.
        pays = rate >= state.base_rate * (1 + p.probe_efficiency * proportional)
    elif state.limit < state.base_limit:
        pays = rate >= state.base_rate * (1 - p.probe_efficiency * -proportional / 2)
    else:
        gain = p.probe_up_efficiency * proportional
        pays = not congested and rate >= state.base_rate * (1 + gain)
    if pays:
        state.probe_wins += 1
        if state.probe_wins < (1 if state.descend else p.probe_rounds):
            return None  # one more round at the probe's limit
        strong = state.limit > state.base_limit and rate >= state.base_rate * (
            1 + STRONG_PROBE * proportional
        )
        set_base(state, rate, latency)
        state.half_step = False
        verdict = "probe_kept"
        if strong and state.limit < p.max_limit:
            state.phase = Phase.STARTUP
            state.probe_wins = 0
            state.long_step_failed = 0  # the worker changed: measure anew
            state.long_step_retried = False
            state.limit = min(p.max_limit, state.limit * 2)
            return verdict
        # A probe that paid is followed by another the same way at the next round.
        state.steady_rounds = p.probe_every - 1
        state.probe_down = not state.probe_down
    else:
        state.descend = False
        if state.limit > state.base_limit:
            state.dropped_from = state.base_limit
            # Halved once only (a finer step asks less gain than a round of mixed job sizes
            # swings by), and once per limit: a half step that failed too is not tried from
            # there again (in a closed loop that fills a batch of 32 exactly, each probe to 36
            # queued jobs behind the batch: the simulation's p99 0.81 -> 1.34 s over 4,000 jobs).
            if state.half_step:
                state.half_step, state.half_step_tried = False, state.base_limit
            elif state.half_step_tried != state.base_limit:
                state.half_step = True
        state.limit = state.base_limit
        verdict = "probe_dropped"
        state.steady_rounds = 0
    state.phase = Phase.STEADY
    state.probe_wins = 0
    return verdict


def cut(policy: CapacityPolicy, state: WorkerState, rate: float, latency: float) -> str:
    state.phase = Phase.STEADY
    state.steady_rounds = 0
    state.limit = max(1, math.floor(state.limit * policy.backoff))
    set_base(state, rate, latency)
    return "congestion"
