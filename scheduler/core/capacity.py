"""How many jobs each worker should hold at once, learnt from what the daemon observes. Pure:
time is passed in.

A worker's useful concurrency depends on what serves behind it, and the daemon cannot know it
in advance: a batching inference server (vLLM, TGI) serves 32 requests in about the time of
one, so its throughput grows with concurrency up to its batch size; a FIFO worker (ComfyUI,
the official worker's default queue) or one that shares its speed between requests delivers
the same throughput at any concurrency, and what it holds beyond one job only waits there.

The controller measures each worker in rounds and climbs its throughput curve, in the spirit of
BBR and of Envoy's adaptive concurrency filter. A round is the turnover of the jobs sent at the
current limit (``limit`` of them completed), so that a verdict on a limit rests on jobs that
ran under it. Its throughput comes from Little's law: jobs held on average over the round,
over its jobs' latency per unit of cost (their latencies' sum over their costs' sum). With
jobs alike that is the delivered cost per second; with mixed sizes it still rises with
concurrency on a batching worker (each job's latency is proportional to its cost) and not on a
FIFO one (small jobs wait behind large ones), and unlike counting completed cost it does not
swing with which jobs happened to finish in the round. Only jobs sent into a worker already at
the limit count: the first ones after a raise meet a worker emptier than the limit will keep
it, and would make a FIFO worker look faster at two jobs than at one.

* **First contact.** A worker starts at ``initial_limit`` (4): a batching server is a
  doubling further on, and a FIFO one shows itself in the first round, where jobs that ended
  well after the fastest (per unit of cost) waited at the worker; start-up then begins again
  from one job. A worker met once others have settled, and they agree on a limit (an
  endpoint's workers run one server), starts at the lower of ``initial_limit`` and theirs,
  and a first round that shows no queueing takes it to theirs at once: one job time where
  doubling takes two or three (``peers_limit``). A worker unlike them still shows itself
  in that round. A worker whose start-up settles within a doubling of the first limit, never
  measured below it and never paid by a step from it (a sharing worker serves four jobs no
  faster than one), is probed down by halvings at once, each kept while throughput holds.
* **Start-up.** From ``initial_limit`` the limit doubles after every round in which the worker
  was held at its limit (jobs waited in the daemon for it) while delivered throughput grew by
  at least ``startup_gain`` over the round before. When a doubling does not pay, the limit
  falls back to the last one that did: a FIFO worker settles at one or two jobs, a batching
  one at about its batch size, within a handful of rounds. A 4x step that the load never
  filled to the limit, on which the worker held the doubling it skipped and that paid at
  about the same latency per cost, falls back to that doubling instead (the load sat between
  the two, and the last held limit would waste what the worker just delivered). A round that
  ends with the worker still filling past that doubling (jobs reach a worker that joins a
  busy fleet only as fast as they arrive) is measured again, at most MAX_UNFILLED_ROUNDS
  times, before either fallback.
* **Probing.** Every ``probe_every`` rounds the limit is raised by ``probe_step`` (at least one
  job), and kept only if throughput grew by at least ``probe_efficiency`` of the proportional
  gain in ``probe_rounds`` rounds in a row (one lucky round of mixed job sizes is not enough);
  a worker whose batch grew, or a share freed by others, is found again. While latency per
  cost stays within ``HEADROOM`` of the floor (the worker queues nothing of what it holds) an
  up probe comes after two rounds; one that pays about in full resumes start-up's doubling,
  so a worker that settled low under light load climbs back in seconds.
* **Rounds that test nothing.** A round in which the worker was not kept at least
  ``FILL_SHARE`` full (the load ebbed, other workers took the jobs) gives no verdict in
  start-up or on a probe: it is measured again. The jobs of a round still running at its end
  count too, at the latency they have so far (or the mean, if more), so that a round's verdict
  does not rest on the jobs that happened to finish first.
* **Congestion.** Latency per unit of cost is compared with what it was when the current limit
  was measured. When it exceeds ``congestion_ratio`` times that without more throughput, jobs
  are queueing at the worker (it slowed down, or others fill it): the limit is cut by
  ``backoff``. This also makes replicas that share a worker give way to each other, as TCP
  flows do on a shared link.

The floor (the least latency per cost seen, let slowly drift up so that a changed worker is
measured again) is kept for the status view.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from scheduler.core.capacity_state import (
    CapacityPolicy,
    Change,
    Phase,
    Round,
    Sent,
    WorkerState,
)

__all__ = ["Capacity", "CapacityPolicy", "Change", "Phase", "Round", "Sent", "WorkerState"]

DEFAULT_MAX_WORKERS = 4096
MAX_ROUND_TURNOVERS = 4  # a round with no usable sample ends, without a verdict, after this
# A round tests its limit only if the worker held at least this share of it on average; a
# round the daemon could not keep it filled in (the load ebbed, other workers took the jobs)
# says nothing about the limit, and is measured again, at most MAX_UNFILLED_ROUNDS times.
FILL_SHARE = 0.75
MAX_UNFILLED_ROUNDS = 3
# Start-up's throughput grew by at least this share of the limit's growth: the next step is
# 4x instead of 2x.
LINEAR_SHARE = 0.8
LONG_STEP_SHARE = 0.6  # a 4x step that paid less than this share of 4x is measured at 2x
# Latency per cost within this factor of the floor means the worker does not queue what it
# holds (a FIFO or sharing worker holding two jobs is at 2x): an up probe comes after
# HEADROOM_ROUNDS steady rounds instead of probe_every.
HEADROOM = 1.5
HEADROOM_ROUNDS = 2
# An up probe whose gain was at least this share of the proportional one found a worker far
# from its knee (its batch grew, others left it): the doubling of start-up resumes.
STRONG_PROBE = 0.7
# The settled workers' limits agree when the largest is at most this times the smallest: a
# worker met then starts at the smallest (``first_limit``).
PEERS_AGREE = 2


class Capacity:
    """Per-worker concurrency limits (at most ``max_workers`` workers, least recent out)."""

    def __init__(self, policy: CapacityPolicy, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        self.policy = policy
        self.max_workers = max_workers
        self._workers: OrderedDict[str, WorkerState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._workers)

    def state(self, worker: str) -> WorkerState | None:
        return self._workers.get(worker)

    def settled_limit(self, before: float = math.inf) -> int | None:
        """The largest limit among the workers remembered here that are past their start-up,
        of those that left it before ``before`` (None: none has)."""
        settled = [
            s.limit
            for s in self._workers.values()
            if s.phase is not Phase.STARTUP and (s.settled_at or 0.0) < before
        ]
        return max(settled, default=None)

    def peers_limit(self, newcomer: WorkerState | None = None) -> int | None:
        """The limit the workers met so far agree on, or None. Each counts with the last
        limit it showed paying, in its start-up too (a FIFO worker found queueing counts at
        one job: in a mixed fleet it may still be there while the batching one has settled);
        at least one has settled, and the largest is at most PEERS_AGREE times the smallest,
        whose limit is the answer (an endpoint's workers run one server). Counting peers
        that are all still in start-up sent, in a mixed fleet met together (h), the sharing
        worker to the batching one's limit before the FIFO one had shown itself (fleet
        simulation: 34 against 41.5 jobs/s)."""
        peers = [s for s in self._workers.values() if s is not newcomer]
        if all(s.phase is Phase.STARTUP for s in peers):
            return None  # met together, still measured: one may yet show itself unlike
        initial = self.policy.initial_limit
        paid = [
            s.base_limit or s.limit
            for s in peers
            if s.base_limit or s.phase is not Phase.STARTUP or s.limit < initial
        ]
        if max(paid) > PEERS_AGREE * min(paid):
            return None
        return max(1, min(self.policy.max_limit, min(paid)))

    def first_limit(self) -> int:
        """Where a worker met now starts: ``initial_limit``, or its peers' limit if lower (a
        FIFO worker that joins peers settled at one job queues none at first)."""
        peers = self.peers_limit()
        return self.policy.initial_limit if peers is None else min(self.policy.initial_limit, peers)

    def limit(self, worker: str) -> int:
        state = self._workers.get(worker)
        return self.first_limit() if state is None else state.limit

    def _state(self, worker: str, now: float) -> WorkerState:
        state = self._workers.get(worker)
        if state is None:
            state = WorkerState(limit=self.first_limit(), changed_at=now, first_seen=now)
            state.round = Round(now)
            self._workers[worker] = state
            while len(self._workers) > self.max_workers:
                self._workers.popitem(last=False)
        else:
            self._workers.move_to_end(worker)
        return state

    @staticmethod
    def _hold(state: WorkerState, now: float, change: int) -> None:
        state.round.held_s += state.inflight * max(0.0, now - state.changed_at)
        state.inflight = max(0, state.inflight + change)
        state.changed_at = now
        state.round.peak = max(state.round.peak, state.inflight)

    def started(self, worker: str, now: float, cost: float = 1.0) -> Sent:
        state = self._state(worker, now)
        self._hold(state, now, +1)
        counted = state.inflight >= state.limit
        usable = cost > 0 and math.isfinite(cost)
        state.sent += 1
        if counted and usable:
            state.round.running[state.sent] = (now, cost)
        return Sent(state.epoch, now, counted and usable, cost if usable else 1.0, state.sent)

    def refused(self, worker: str, now: float) -> Change | None:
        """The worker answered 429: its queue is past its max_queue_time with what it holds.
        Its limit drops to what it still holds (at least one job); refused at first contact,
        start-up begins again from one job. A new round starts either way."""
        state = self._workers.get(worker)
        if state is None:
            return None
        old = state.limit
        new = 1 if state.base_limit == 0 else max(1, min(old - 1, state.inflight))
        if new >= old:
            return None
        state.limit = new
        if state.base_limit:
            state.phase, state.steady_rounds = Phase.STEADY, 0
            state.base_limit = min(state.base_limit, new)
            if state.settled_at is None:
                state.settled_at = now
        state.epoch += 1
        state.round = Round(now)
        return self._changed(worker, state, old, "refused")

    def blocked(self, worker: str, now: float) -> None:
        """A queued job could not go to ``worker`` because it was at its limit."""
        self._state(worker, now).round.blocked = True

    def finished(
        self, worker: str, sent: Sent, cost: float, now: float, succeeded: bool
    ) -> Change | None:
        """A job sent as ``sent`` ended; returns the limit's change when its round ended. Its
        latency is counted from ``started`` to now, the span in which it is counted as held:
        Little's law needs the two to agree."""
        state = self._state(worker, now)
        self._hold(state, now, -1)
        if sent.epoch != state.epoch:
            return None  # sent under an earlier limit: no verdict on this one
        current = state.round
        current.completions += 1
        current.running.pop(sent.seq, None)
        latency_s = now - sent.at
        counts = sent.counted or not current.blocked  # an unheld round: every job is its state
        usable = succeeded and latency_s > 0 and cost > 0 and math.isfinite(cost)
        if usable and state.base_limit == 0:
            current.first_latencies.append(latency_s / cost)
        if usable and counts:
            current.latency_s += latency_s
            current.cost += cost
            current.samples += 1
        if current.completions < self._round_length(state):
            return None
        if not current.samples and current.completions < MAX_ROUND_TURNOVERS * state.limit:
            return None  # no job sent at the limit has ended yet
        if current.samples:
            per_cost = current.latency_s / current.cost
            for at, job_cost in current.running.values():
                current.latency_s += max(per_cost * job_cost, now - at)
                current.cost += job_cost
            current.samples += len(current.running)
        state.epoch += 1
        state.round = Round(now)
        return self._end_round(worker, state, current, now)

    @staticmethod
    def _round_length(state: WorkerState) -> int:
        """Completions that end a round: a turnover of the limit; half of one in start-up,
        where a doubling's verdict is plain and each round of waiting costs the most."""
        if state.phase is Phase.STARTUP:
            return max(1, math.ceil(state.limit / 2))
        return state.limit

    # one round's verdict ------------------------------------------------------------------
    def _end_round(self, worker: str, state: WorkerState, done: Round, now: float) -> Change | None:
        elapsed = now - done.started_at
        if not done.samples or elapsed <= 0:
            return None  # nothing to learn from (failures only)
        latency = done.latency_s / done.cost
        rate = done.held_s / elapsed / latency
        p = self.policy
        state.floor = (
            latency if state.floor is None else min(latency, state.floor * (1 + p.floor_drift))
        )
        old = state.limit
        reason = self._verdict(state, done, rate, latency, done.held_s / elapsed)
        if state.settled_at is None and state.phase is not Phase.STARTUP:
            state.settled_at = now
        self._descend_if_unproven(state, old)
        if reason is None or state.limit == old:
            return None
        state.unfilled = 0
        return self._changed(worker, state, old, reason)

    @staticmethod
    def _changed(worker: str, state: WorkerState, old: int, reason: str) -> Change:
        """Records a change of the worker's limit (the last 8 are kept, for the status view)."""
        change = Change(worker, old, state.limit, reason)
        state.changes.append(change)
        del state.changes[:-8]
        return change

    def _verdict(
        self,
        state: WorkerState,
        done: Round,
        rate: float,
        latency: float,
        held_mean: float,
    ) -> str | None:
        held = done.blocked
        filled = held_mean >= FILL_SHARE * state.limit
        # Not kept full, and holding less than even the last limit that paid: the load ebbed
        # (not: there is not load enough for the new limit, which is an answer too).
        ebbed = not filled and held_mean < state.base_limit
        if held and filled:
            state.unfilled = 0
        elif held and ebbed and state.phase is not Phase.STEADY and self._unfilled(state):
            return None  # jobs waited, yet the worker was not kept full: measured again
        if state.phase is Phase.STARTUP:
            decided, reason = self._startup_verdict(state, done, rate, latency, held_mean, filled)
            if decided:
                return reason
        congested = state.base_latency > 0 and (
            latency > self.policy.congestion_ratio * state.base_latency
        )
        if state.phase is Phase.PROBING:
            return self._judge_probe(state, rate, latency, congested and filled)
        if congested and rate < state.base_rate * 1.1:
            return self._cut(state, rate, latency)
        if held and filled:
            return self._steady(state, rate, latency)
        return None

    def _descend_if_unproven(self, state: WorkerState, measured_at: int) -> None:
        """A worker that settles within a doubling of the first limit without a round below
        it may serve one job as fast as a few (a sharing worker holding four jobs shows the
        same throughput at eight, and its latency per cost never left the floor it set there):
        its limit is probed down at once, until a step down costs throughput."""
        initial = self.policy.initial_limit
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
            state.steady_rounds = self.policy.probe_every - 1

    @staticmethod
    def _queued_at_first(state: WorkerState, done: Round) -> bool:
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

    def _held_more_paid(
        self, state: WorkerState, held_mean: float, rate: float, latency: float
    ) -> bool:
        """Holding ``held_mean`` jobs on average, more than the base limit, delivered at least
        ``probe_efficiency`` of the proportional gain over the base's throughput, at about the
        base's latency per cost (the worker queued none of them)."""
        extra = held_mean / state.base_limit - 1
        return (
            extra > 0
            and latency <= HEADROOM * state.base_latency
            and rate >= state.base_rate * (1 + self.policy.probe_efficiency * extra)
        )

    def _startup_verdict(
        self,
        state: WorkerState,
        done: Round,
        rate: float,
        latency: float,
        held_mean: float,
        filled: bool,
    ) -> tuple[bool, str | None]:
        """Start-up's verdict on a round: (True, reason) when it decided; (False, None) leaves
        the round to the congestion check."""
        held = done.blocked
        if state.base_limit == 0 and self._queued_at_first(state, done):
            return True, "startup_queued"
        if held and filled:
            return True, self._startup(state, rate, latency)
        if filled and state.base_limit and rate < state.base_rate * self.policy.startup_gain:
            # Filled by a load that matched the limit, and no more throughput than the last
            # limit gave: the step did not pay, whatever held jobs back.
            return True, self._startup(state, rate, latency)
        if not held and 2 * state.base_limit < done.peak < state.limit and self._unfilled(state):
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
            if state.limit > skipped <= done.peak and self._held_more_paid(
                state, held_mean, rate, latency
            ):
                fallback = skipped
            else:
                state.long_step_failed = state.limit  # measured, and it did not pay
            state.limit = fallback
            return True, "startup_unheld"
        return False, None

    @staticmethod
    def _unfilled(state: WorkerState) -> bool:
        """Counts a round that did not test its limit; False once MAX_UNFILLED_ROUNDS in a row
        did not (the verdict is then taken as it is: such a limit is not paying either)."""
        state.unfilled += 1
        if state.unfilled < MAX_UNFILLED_ROUNDS:
            return True
        state.unfilled = 0
        return False

    def _set_base(self, state: WorkerState, rate: float, latency: float) -> None:
        state.base_limit, state.base_rate, state.base_latency = state.limit, rate, latency

    def _startup(self, state: WorkerState, rate: float, latency: float) -> str:
        p = self.policy
        step = state.limit / state.base_limit if state.base_limit else 0.0
        pays = state.base_limit == 0 or rate >= state.base_rate * p.startup_gain
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
            first_round = not state.base_limit
            self._set_base(state, rate, latency)
            if state.long_step_failed and state.limit * 2 >= state.long_step_failed:
                state.phase = Phase.STEADY  # the next step was measured already, and failed
                state.steady_rounds = 0
                return "startup_done"
            step_to = state.limit * (4 if linear else 2)
            if first_round and state.base_limit > 1:
                # Its first round showed no queueing: a worker like its settled peers goes
                # to their limit at once (a vLLM worker joining a fleet settled at 32 would
                # otherwise ramp over two more job times). Sent there straight away, one
                # unlike them (a FIFO worker among batching ones) would have queued a batch.
                step_to = max(step_to, self.peers_limit(state) or 0)
            state.limit = min(p.max_limit, step_to)
            if state.limit == state.base_limit:
                state.phase = Phase.STEADY
            return "startup"
        state.phase = Phase.STEADY
        state.steady_rounds = 0
        state.limit = state.base_limit
        return "startup_done"

    def _steady(self, state: WorkerState, rate: float, latency: float) -> str | None:
        p = self.policy
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
            probe = min(p.max_limit, max(state.limit + 1, math.ceil(state.limit * p.probe_step)))
        else:
            return None
        state.phase = Phase.PROBING
        state.limit = probe
        return "probe"

    def _judge_probe(
        self, state: WorkerState, rate: float, latency: float, congested: bool
    ) -> str | None:
        """Up: kept when throughput grew enough for the jobs added. Down: kept when
        throughput held (what the worker held beyond it only waited there)."""
        p = self.policy
        proportional = state.limit / max(state.base_limit, 1) - 1
        if state.descend:
            # Lost less than half the proportional share: a batching worker below its batch
            # loses about all of it, a sharing or FIFO one nothing. One round decides.
            pays = rate >= state.base_rate * (1 + p.probe_efficiency * proportional)
        elif state.limit < state.base_limit:
            pays = rate >= state.base_rate * (1 - p.probe_efficiency * -proportional / 2)
        else:
            pays = not congested and rate >= state.base_rate * (
                1 + p.probe_efficiency * proportional
            )
        if pays:
            state.probe_wins += 1
            if state.probe_wins < (1 if state.descend else p.probe_rounds):
                return None  # one more round at the probe's limit
            strong = state.limit > state.base_limit and rate >= state.base_rate * (
                1 + STRONG_PROBE * proportional
            )
            self._set_base(state, rate, latency)
            verdict = "probe_kept"
            if strong and state.limit < p.max_limit:
                state.phase = Phase.STARTUP
                state.probe_wins = 0
                state.long_step_failed = 0  # the worker changed: measure anew
                state.limit = min(p.max_limit, state.limit * 2)
                return verdict
            # A probe that paid is followed by another the same way at the next round.
            state.steady_rounds = p.probe_every - 1
            state.probe_down = not state.probe_down
        else:
            state.descend = False
            if state.limit > state.base_limit:
                state.dropped_from = state.base_limit
            state.limit = state.base_limit
            verdict = "probe_dropped"
            state.steady_rounds = 0
        state.phase = Phase.STEADY
        state.probe_wins = 0
        return verdict

    def _cut(self, state: WorkerState, rate: float, latency: float) -> str:
        state.phase = Phase.STEADY
        state.steady_rounds = 0
        state.limit = max(1, math.floor(state.limit * self.policy.backoff))
        self._set_base(state, rate, latency)
        return "congestion"
