"""Route answers kept for renewing a worker's sessions without a route call. Pure.

The official worker (``vastai`` 1.9.1) signs only the URL, so an answer opens any number of
sessions on its worker; but it accounts each session as one in-flight entry keyed by the
answer's ``reqnum``, so two live sessions on one answer overwrite each other's entry, and the
first to end drops the other's load from what the worker reports. An answer is therefore kept
only once the worker has confirmed the end of the session it opened, and given out again only
while no live session of the daemon's holds its ``reqnum``. A session near its bound
(``SessionClock.renewal_due``) is renewed from one: the new session opens before the old one
is spent, and the old one ends once its jobs have, which keeps its answer for the next
renewal. Renewals then cost a ``/session/create`` and a ``/session/end``, not a route call
and the wait for its answer.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class Answer(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def cost(self) -> float: ...

    @property
    def reqnum(self) -> int: ...


A = TypeVar("A", bound=Answer)


@dataclass(frozen=True, slots=True)
class Kept(Generic[A]):
    answer: A
    until: float  # its first lease's end (``lease.ttl_s`` after the route call): no use after


@dataclass
class KeptAnswers(Generic[A]):
    """At most ``per_worker`` answers for each of at most ``max_workers`` workers. An answer
    serves no longer than the lease it first came with would have (``until``): renewals do not
    keep a worker past the route call that ``lease.ttl_s`` asks for."""

    per_worker: int
    max_workers: int
    _by_worker: dict[str, list[Kept[A]]] = field(default_factory=dict)

    def keep(self, answer: A, until: float) -> None:
        """An answer whose session the worker confirmed ended. When the worker has
        ``per_worker`` already, the smallest goes (renewals want budget)."""
        kept = self._by_worker.get(answer.url)
        if kept is None:
            if len(self._by_worker) >= self.max_workers:
                self._by_worker.pop(next(iter(self._by_worker)))  # the oldest worker
            kept = self._by_worker[answer.url] = []
        if any(other.answer.reqnum == answer.reqnum for other in kept):
            return
        kept.append(Kept(answer, until))
        if len(kept) > self.per_worker:
            kept.remove(min(kept, key=lambda other: other.answer.cost))

    def take(
        self, worker_url: str, cost: float, live_reqnums: Collection[int], now: float
    ) -> Kept[A] | None:
        """The largest kept answer for the worker, still in use before its ``until``, that
        declares at least ``cost`` and whose ``reqnum`` no live session holds, removed; None
        when there is none. Those past their ``until`` are dropped."""
        kept = [k for k in self._by_worker.get(worker_url, []) if k.until > now]
        fits = [k for k in kept if k.answer.cost >= cost and k.answer.reqnum not in live_reqnums]
        best = max(fits, key=lambda k: k.answer.cost) if fits else None
        if best is not None:
            kept.remove(best)
        if kept:
            self._by_worker[worker_url] = kept
        else:
            self._by_worker.pop(worker_url, None)
        return best

    def forget(self, worker_url: str) -> None:
        """The worker is gone or refused a session: its answers are of no more use."""
        self._by_worker.pop(worker_url, None)

    def count(self, worker_url: str | None = None) -> int:
        if worker_url is not None:
            return len(self._by_worker.get(worker_url, []))
        return sum(len(kept) for kept in self._by_worker.values())
