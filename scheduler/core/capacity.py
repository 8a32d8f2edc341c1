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
swing with which jobs happened to finish in the round. In a round in which jobs waited here for
the worker, only jobs sent into it already at the limit count, those that ended before the
waiting began too: the first ones after a raise meet a worker emptier than the limit will keep
it, and would make a FIFO worker look faster at two jobs than at one. In a round in which none
waited, every job met the worker as the limit keeps it, and all count; so they do in a held
round never kept full, whose few jobs sent at the limit wait at the worker and would keep the
round open while it queues.

* **First contact.** A worker starts at ``initial_limit`` (4): a batching server is a
  doubling further on, and a FIFO one shows itself in the first round, where jobs that ended
  well after the fastest (per unit of cost) waited at the worker; start-up then begins again
  from one job. A worker met once others have settled, and they agree on a limit (an
  endpoint's workers run one server), starts at the lower of ``initial_limit`` and theirs,
  and a first round that shows no queueing takes it to theirs at once: one job time where
  doubling takes two or three (``peers_limit``). It settles there if it delivers about what
  the settled ones deliver at that limit; a worker unlike them still shows itself in that
  round, or in delivering less. A worker whose start-up settles within a doubling of the
  first limit, never measured below it and never paid by a step from it (a sharing worker
  serves four jobs no faster than one), is probed down by halvings at once, each kept while
  throughput holds.
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
  times, before either fallback. A 4x step that paid well short of its length measures the
  doubling it skipped and, if that pays, the 4x step once more before settling below it. A
  limit a step fell back to untested is re-measured and, while the worker's peers agree on
  twice it or more, stepped from again (at most RETESTS times) instead of settled on.
* **Probing.** Every ``probe_every`` rounds the limit is raised by ``probe_step`` (at least one
  job), and kept only if throughput grew by at least ``probe_up_efficiency`` of the
  proportional gain in ``probe_rounds`` rounds in a row (one lucky round of mixed job sizes is
  not enough; they go only while jobs wait here, where a gain short of start-up's still
  pays); after a dropped up probe the next from that limit steps half as far, once (a batch
  of 24 is closed in on from 20); a worker whose batch grew, or a share freed by others, is
  found again. While latency per cost stays within ``HEADROOM`` of the floor (the worker
  queues nothing of what it holds) an up probe comes after two rounds; one that pays about in
  full resumes start-up's doubling, so a worker that settled low under light load climbs back
  in seconds.
* **Rounds that test nothing.** A round in which the worker was not kept at least
  ``FILL_SHARE`` full (the load ebbed, other workers took the jobs) gives no verdict in
  start-up or on a probe: it is measured again. So does one in which it held less than half
  its last paying limit for a while (``LULL_SHARE`` of the round: a closed loop's drain, a
  lull between bursts). The jobs of a round still running at its end
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

from scheduler.core.capacity_probes import cut, descend_if_unproven, judge_probe, steady
from scheduler.core.capacity_startup import Fleet, startup_verdict, unfilled
from scheduler.core.capacity_state import (
    CapacityPolicy,
    Change,
    Phase,
    Round,
    Sent,
    WorkerState,
    round_measure,
)

__all__ = [
    "Capacity", "CapacityPolicy", "Change", "Phase", "Round", "Sent", "WorkerState",
    "round_measure",
]  # fmt: skip

DEFAULT_MAX_WORKERS = 4096
MAX_ROUND_TURNOVERS = 4  # a round with no usable sample ends, without a verdict, after this
# A round tests its limit only if the worker held at least this share of it on average; a
# round the daemon could not keep it filled in (the load ebbed, other workers took the jobs)
# says nothing about the limit, and is measured again, at most MAX_UNFILLED_ROUNDS times.
FILL_SHARE = 0.75
# A round in which the worker held fewer than half its last paying limit for more than this
# share of its time saw the load ebb: measured again (in start-up and on a probe) for as long
# as the lull lasts, not counted among the unfilled rounds.
LULL_SHARE = 0.25
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
        limit it showed paying, in its start-up too; a FIFO worker found queueing in its
        first round counts at one job. While one is still in its first round (it may yet
        show itself unlike the others: in a mixed fleet met together (h), the sharing worker
        was sent the batching one's limit before the FIFO one had shown itself, 34 against
        41.5 jobs/s in the fleet simulation) there is no answer; one that holds nothing and
        never showed anything (it went away) is not counted. They agree when the largest is
        at most PEERS_AGREE times the smallest, whose limit is the answer (an endpoint's
        workers run one server)."""
        initial = self.policy.initial_limit
        paid: list[int] = []
        for peer in self._workers.values():
            if peer is newcomer:
                continue
            if peer.base_limit or peer.phase is not Phase.STARTUP or peer.limit < initial:
                paid.append(peer.base_limit or peer.limit)
            elif peer.inflight:
                return None  # in its first round
        if not paid or max(paid) > PEERS_AGREE * min(paid):
            return None
        return max(1, min(self.policy.max_limit, min(paid)))

    def settled_rate(self, limit: int, newcomer: WorkerState) -> float | None:
        """The least throughput the workers past their start-up showed at ``limit`` (None:
        none settled there)."""
        rates = [
            peer.base_rate
            for peer in self._workers.values()
            if peer is not newcomer and peer.phase is not Phase.STARTUP
            and peer.base_limit == limit and peer.base_rate > 0
        ]  # fmt: skip
        return min(rates, default=None)

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
        span = max(0.0, now - state.changed_at)
        state.round.held_s += state.inflight * span
        if state.inflight < state.base_limit / 2:
            state.round.low_s += span
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
            self._note_settled(state, now)
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
        usable = succeeded and latency_s > 0 and cost > 0 and math.isfinite(cost)
        if usable and state.base_limit == 0:
            current.first_latencies.append(latency_s / cost)
        if usable:
            current.all_latency_s += latency_s
            current.all_cost += cost
            current.all_samples += 1
        if usable and sent.counted:
            current.latency_s += latency_s
            current.cost += cost
            current.samples += 1
        if current.completions < self._round_length(state):
            return None
        held_mean = current.held_s / max(now - current.started_at, 1e-9)
        passing = not _kept_full(state, held_mean) and current.completions >= state.limit
        if not current.blocked or (not current.samples and passing):
            # Unheld, every job met the worker as the limit keeps it. Held only in passing
            # (never kept full over a whole turnover), the few jobs sent at the limit wait at
            # the worker, and the round would wait for them (a batching worker at 64 of its
            # 32 for 6 s under (f2) warm's load, queueing while its peers had room): judged
            # on every job, as the untested step it is. Not before a whole turnover: judged
            # at half of one (start-up's round), a worker still filling in a cold start fell
            # back untested from 32 to 8 (traced in a slow (f2) cold run).
            current.latency_s, current.cost = current.all_latency_s, current.all_cost
            current.samples = current.all_samples
        if not current.samples and current.completions < MAX_ROUND_TURNOVERS * state.limit:
            return None  # no job sent at the limit has ended yet
        if current.samples and (
            current.all_latency_s / current.all_cost > current.latency_s / current.cost
        ):
            # The jobs sent at the limit ended faster than the round's others: the few that
            # had ended entered the worker's batch the moment it had room, while the rest
            # still waited behind it (a batching worker of 32 at 64, judged on 2 such jobs,
            # measured 1.8x its rate at 32 and went to 256; traced in (k)'s warm-up). A round
            # is judged on the slower of its two measures.
            current.latency_s, current.cost = current.all_latency_s, current.all_cost
            current.samples = current.all_samples
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
        measure = round_measure(done, state.limit, now)
        if measure is None:
            return None  # nothing to learn from (failures only)
        rate, latency = measure
        elapsed = now - done.started_at
        p = self.policy
        state.floor = (
            latency if state.floor is None else min(latency, state.floor * (1 + p.floor_drift))
        )
        old, base_rate = state.limit, state.base_rate
        lull = done.low_s > LULL_SHARE * elapsed
        reason = self._verdict(state, done, rate, latency, done.held_s / elapsed, lull)
        self._note_settled(state, now)
        descend_if_unproven(self.policy, state, old)
        if reason is None or state.limit == old:
            return None
        state.unfilled = 0
        measured = (rate, latency, done.held_s / elapsed, base_rate)
        return self._changed(worker, state, old, reason, measured)

    @staticmethod
    def _note_settled(state: WorkerState, now: float) -> None:
        """Records when the worker first left its start-up (a refusal or a round's verdict)."""
        if state.settled_at is None and state.phase is not Phase.STARTUP:
            state.settled_at = now

    @staticmethod
    def _changed(
        worker: str,
        state: WorkerState,
        old: int,
        reason: str,
        measured: tuple[float, float, float, float] | None = None,
    ) -> Change:
        """Records a change of the worker's limit (the last 8 are kept, for the status view);
        ``measured``: the deciding round's rate, latency per cost, jobs held, base rate."""
        change = Change(worker, old, state.limit, reason, *(measured or ()))
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
        lull: bool,
    ) -> str | None:
        held = done.blocked
        filled = _kept_full(state, held_mean)
        # Not kept full, and holding less than even the last limit that paid: the load ebbed
        # (not: there is not load enough for the new limit, which is an answer too).
        ebbed = not filled and held_mean < state.base_limit
        if held and filled:
            state.unfilled = 0
        elif lull and not filled and state.phase is not Phase.STEADY:
            # Less than half the last paying limit held for a while: the load ebbed, and the
            # round is measured again for as long as it does (a limit the load does not reach
            # queues nothing). A round that spanned a closed loop's drain and the lull before
            # the next load fell back untested from 32 to 8, and left a batching worker at 8
            # of its 32 for 2.3 s of the load that followed ((f2) warm, 70 jobs/s against
            # 97), the third time in a row too when lulls counted as unfilled rounds.
            return None
        elif held and ebbed and state.phase is not Phase.STEADY and unfilled(state):
            return None  # jobs waited, yet the worker was not kept full: measured again
        if state.phase is Phase.STARTUP:
            fleet = Fleet(
                lambda: self.peers_limit(state), self.settled_limit,
                lambda limit: self.settled_rate(limit, state),
            )  # fmt: skip
            decided, reason = startup_verdict(
                self.policy, state, done, rate, latency, held_mean, filled, fleet
            )
            if decided:
                return reason
        congested = state.base_latency > 0 and (
            latency > self.policy.congestion_ratio * state.base_latency
        )
        if state.phase is Phase.PROBING:
            return judge_probe(self.policy, state, rate, latency, congested and filled)
        if congested and rate < state.base_rate * 1.1:
            return cut(self.policy, state, rate, latency)
        if held and filled:
            return steady(self.policy, state, rate, latency)
        return None


def _kept_full(state: WorkerState, held_mean: float) -> bool:
    """The worker held at least ``FILL_SHARE`` of its limit on average: the round tested it."""
    return held_mean >= FILL_SHARE * state.limit
