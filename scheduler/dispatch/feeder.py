"""Moves jobs from the store to one endpoint's dispatcher: claims ahead, renews, takes over.

With the memory store it claims everything at once (the dispatcher's fair queue then orders all
of it). With a shared store it claims at most ``prefetch`` jobs beyond what runs, so the other
replicas get the rest; it touches its claims well inside the visibility timeout and takes over
the claims of replicas that stopped touching theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from scheduler.core.retry import backoff_s
from scheduler.dispatch import EndpointDispatcher
from scheduler.jobs import Job
from scheduler.store.base import JobStore, StoreUnavailable

log = structlog.get_logger("scheduler.dispatch.feeder")
CLAIM_BLOCK_S = 1.0
UNSHARED_CLAIM = 10_000  # per call with the memory store: everything there is, in practice
ERROR_PAUSE_S = (0.1, 5.0)  # pause after a failed claim: doubles from the first to the second


class StoreFeeder:
    def __init__(
        self,
        store: JobStore,
        dispatcher: EndpointDispatcher,
        prefetch: int,
        visibility_timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._prefetch = prefetch
        self._visibility_s = visibility_timeout_s
        self._clock = clock
        self._claiming = True
        self._next_upkeep = clock()
        self._errors = 0

    def stop_claiming(self) -> None:
        self._claiming = False
        self._store.push_arrivals(self._dispatcher.name, None)
        self._dispatcher.wake_feeder()

    async def run(self) -> None:
        if self._claiming:  # where the store can, jobs come in the enqueuing call; claims idle
            self._store.push_arrivals(self._dispatcher.name, self._hand_over)
        while self._claiming:
            try:
                await self._feed_once()
                self._errors = 0
            except StoreUnavailable:
                self._errors += 1
                # The shared back-off: a Redis down for hours must not overflow 2**errors.
                pause = backoff_s(self._errors + 1, *ERROR_PAUSE_S, multiplier=2.0, jitter=1.0)
                log.warning("store.claim_failed", endpoint=self._dispatcher.name, pause_s=pause)
                await asyncio.sleep(pause)

    async def _feed_once(self) -> None:
        await self._upkeep()
        room = self._room()
        if room <= 0:
            await self._dispatcher.wait_for_room(self._upkeep_in())
            return
        block_s = min(CLAIM_BLOCK_S, self._upkeep_in())
        jobs = await self._store.claim(self._dispatcher.name, room, block_s)
        self._hand_over(jobs)

    def _room(self) -> int:
        if not self._store.shared:
            return UNSHARED_CLAIM
        return self._prefetch - len(self._dispatcher.queue)

    def _upkeep_in(self) -> float:
        """How long a claim may block: until the next upkeep (no upkeep: a full block)."""
        if not self._store.shared:
            return CLAIM_BLOCK_S
        return max(0.05, self._next_upkeep - self._clock())

    async def _upkeep(self) -> None:
        """Renew this replica's claims and take over abandoned ones (shared store only)."""
        now = self._clock()
        if not self._store.shared or now < self._next_upkeep:
            return
        self._next_upkeep = now + self._visibility_s / 3
        await self._store.touch()
        room = max(1, self._room())
        taken = await self._store.reclaim(self._dispatcher.name, self._visibility_s, room)
        if taken:
            log.warning("store.jobs_taken_over", endpoint=self._dispatcher.name, jobs=len(taken))
        self._hand_over(taken, redelivered=True)

    def _hand_over(self, jobs: list[Job], redelivered: bool = False) -> None:
        for job in jobs:
            if job.finished:
                continue
            self._dispatcher.accept(job, redelivered)
            if job.cancel_requested:  # cancelled while its first claimer was dying
                self._dispatcher.cancel(job)

    async def give_back(self) -> None:
        """Drain: queued jobs this replica claimed go back to the store for the others."""
        self._claiming = False
        job_ids = self._dispatcher.take_queued()
        if job_ids:
            with contextlib.suppress(StoreUnavailable):  # not touched any more: taken over later
                await self._store.requeue(job_ids)
            log.info("store.jobs_given_back", endpoint=self._dispatcher.name, jobs=len(job_ids))
