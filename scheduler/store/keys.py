"""Every Redis key name the store and the fleet use, in one place (arq keeps its in one
constants module). The Lua scripts get the same names through ``lua_key_functions``, so a key
is spelt once for both sides. Layout, under ``{prefix}:``:

- ``job:{id}``: the job record (``base.to_record`` fields, plus ``entry``: its stream entry id,
  ``claimed_by``, ``cancel_requested``, ``ended_by``: the call that ended it, so that a call
  retried by the client after a lost reply answers as the first one did)
- ``q:{endpoint}``: a Stream of queued jobs (field ``id``) with one consumer group
- ``idem:{endpoint}:{tenant}:{key}``: idempotency key -> job id
- ``backlog:endpoint:{endpoint}``, ``backlog:tenant:{tenant}``: hashes ``jobs``, ``cost`` of
  unfinished jobs (deleted when ``jobs`` reaches 0)
- ``events``: pub/sub channel, ``done <id>`` and ``cancel <id>``
- ``poll:{endpoint}``: the fleet's poller (a replica id); ``warm:{endpoint}``: a worker was
  ready lately
- ``sessions:{replica}``: hash, the replica's open Vast sessions (session id -> record);
  ``session-owners``: set of the replicas with such a hash; ``alive:{replica}``: its heartbeat
  (``redis_sessions``; the take-over script spells the last two from the prefix)
"""

from __future__ import annotations

from dataclasses import dataclass

JOB = "job"
QUEUE = "q"
IDEMPOTENCY = "idem"
ENDPOINT_BACKLOG = "backlog:endpoint"
TENANT_BACKLOG = "backlog:tenant"
EVENTS = "events"
POLL = "poll"
WARM = "warm"
SESSIONS = "sessions"
SESSION_OWNERS = "session-owners"
ALIVE = "alive"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def job(self, job_id: str) -> str:
        return self._key(JOB, job_id)

    def queue(self, endpoint: str) -> str:
        return self._key(QUEUE, endpoint)

    def idempotency(self, endpoint: str, tenant: str, key: str) -> str:
        return self._key(IDEMPOTENCY, endpoint, tenant, key)

    def endpoint_backlog(self, endpoint: str) -> str:
        return self._key(ENDPOINT_BACKLOG, endpoint)

    def tenant_backlog(self, tenant: str) -> str:
        return self._key(TENANT_BACKLOG, tenant)

    @property
    def events(self) -> str:
        return self._key(EVENTS)

    def poll(self, endpoint: str) -> str:
        return self._key(POLL, endpoint)

    def warm(self, endpoint: str) -> str:
        return self._key(WARM, endpoint)

    def sessions(self, replica: str) -> str:
        return self._key(SESSIONS, replica)

    @property
    def session_owners(self) -> str:
        return self._key(SESSION_OWNERS)

    def alive(self, replica: str) -> str:
        return self._key(ALIVE, replica)


def lua_key_functions() -> str:
    """The same names as Lua functions of ``prefix`` (the scripts' ``ARGV[1]``)."""

    def one(name: str, segment: str) -> str:
        return f"local function {name}(x) return prefix .. ':{segment}:' .. x end"

    return "\n".join(
        [
            one("job_key", JOB),
            one("queue_key", QUEUE),
            "local function idem_key(endpoint, tenant, key)",
            f"  return prefix .. ':{IDEMPOTENCY}:' .. endpoint .. ':' .. tenant .. ':' .. key",
            "end",
            one("endpoint_key", ENDPOINT_BACKLOG),
            one("tenant_key", TENANT_BACKLOG),
            f"local events = prefix .. ':{EVENTS}'",
        ]
    )
