"""Lua scripts of the Redis job store: each runs atomically on the server.

Every script gets the key prefix as ``ARGV[1]`` and the consumer group as ``ARGV[2]``, and
derives the keys it touches from them and the job record (so it targets one Redis server, not
a cluster). The key layout and names are in ``scheduler.store.keys``.
"""

from __future__ import annotations

from scheduler.store import keys
from scheduler.store.keys import lua_key_functions

PRELUDE = (
    r"""
local prefix, group = ARGV[1], ARGV[2]
local TERMINAL = {succeeded = true, failed = true, cancelled = true, expired = true}

"""
    + lua_key_functions()
    + r"""

local function as_table(flat)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end

local function negate(number)
  if string.sub(number, 1, 1) == '-' then return string.sub(number, 2) end
  return '-' .. number
end

-- add (sign 1) or remove (sign -1) one job of cost `cost` (a decimal string)
local function count(key, cost, sign)
  local jobs = redis.call('HINCRBY', key, 'jobs', sign)
  if jobs <= 0 then
    redis.call('DEL', key)
    return
  end
  local delta = cost
  if sign < 0 then delta = negate(cost) end
  if tonumber(redis.call('HINCRBYFLOAT', key, 'cost', delta)) < 0 then
    redis.call('HSET', key, 'cost', '0')
  end
end

local function counters(key)
  local found = redis.call('HMGET', key, 'jobs', 'cost')
  return tonumber(found[1] or '0'), tonumber(found[2] or '0')
end

local function ack_delete(stream, entry)
  if entry and entry ~= '' then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
  end
end

local function owned_by(stream, entry, consumer)
  return #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) > 0
end

-- a job ends: kept for the retention time, no longer counted, waiters told
local function ended(key, record, retention_ms)
  redis.call('PEXPIRE', key, retention_ms)
  if record.idempotency_key then
    redis.call('PEXPIRE', idem_key(record.endpoint, record.tenant, record.idempotency_key),
      retention_ms)
  end
  count(endpoint_key(record.endpoint), record.cost, -1)
  count(tenant_key(record.tenant), record.cost, -1)
  redis.call('PUBLISH', events, 'done ' .. record.id)
end
"""
)

# KEYS[1] job key. ARGV: prefix, group, max_depth, max_cost, tenant_max_jobs, tenant_max_cost
# ('' = no limit), then the record as field, value pairs.
# -> {'existing', flat record} | {'full', jobs, cost, tenant jobs, tenant cost} | {'created'}
# Job ids are unique: a record already there was written by this very call, retried.
ENQUEUE = (
    PRELUDE
    + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return {'created'} end
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
local record = as_table(fields)
local idem = nil
if record.idempotency_key then
  idem = idem_key(record.endpoint, record.tenant, record.idempotency_key)
  local existing = redis.call('GET', idem)
  if existing then
    local found = redis.call('HGETALL', job_key(existing))
    if #found > 0 then return {'existing', found} end
  end
end
local jobs, cost = counters(endpoint_key(record.endpoint))
local tenant_jobs, tenant_cost = counters(tenant_key(record.tenant))
local job_cost = tonumber(record.cost)
if (limits[1] and jobs + 1 > limits[1]) or (limits[2] and cost + job_cost > limits[2])
    or (limits[3] and tenant_jobs + 1 > limits[3])
    or (limits[4] and tenant_cost + job_cost > limits[4]) then
  return {'full', tostring(jobs), string.format('%.17g', cost), tostring(tenant_jobs),
          string.format('%.17g', tenant_cost)}
end
local stream = queue_key(record.endpoint)
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
end
local entry = redis.call('XADD', stream, '*', 'id', record.id)
redis.call('HSET', KEYS[1], 'entry', entry, unpack(fields))
redis.call('HSET', KEYS[1], 'status', 'queued')
count(endpoint_key(record.endpoint), record.cost, 1)
count(tenant_key(record.tenant), record.cost, 1)
if idem then redis.call('SET', idem, record.id) end
return {'created'}
"""
)

# ARGV: prefix, group, consumer, stream, then job id, entry id pairs just delivered to consumer.
# Marks each live job running and returns its record; ended (cancelled) ones are acknowledged
# and skipped ({}).
MARK_CLAIMED = (
    PRELUDE
    + r"""
local consumer, stream = ARGV[3], ARGV[4]
local out = {}
for i = 5, #ARGV, 2 do
  local key, entry = job_key(ARGV[i]), ARGV[i + 1]
  local found = redis.call('HMGET', key, 'status', 'entry')
  if (not found[1]) or TERMINAL[found[1]] or found[2] ~= entry then
    ack_delete(stream, entry)
    out[#out + 1] = {}
  else
    redis.call('HSET', key, 'status', 'running', 'claimed_by', consumer)
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
"""
)

# KEYS[1] job key. ARGV: prefix, group, retention_ms, the finishing consumer's entry id ('' if
# none), a token unique to this call, then the terminal fields as pairs.
# -> 1 recorded (by this call, maybe retried), 0 it had ended already (or unknown).
FINISH = (
    PRELUDE
    + r"""
local record = as_table(redis.call('HGETALL', KEYS[1]))
if not record.status then return 0 end
local stream = queue_key(record.endpoint)
ack_delete(stream, ARGV[4])
if TERMINAL[record.status] then
  if record.ended_by == ARGV[5] then return 1 end
  return 0
end
ack_delete(stream, record.entry)
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'ended_by', ARGV[5], unpack(fields))
ended(KEYS[1], record, ARGV[3])
return 1
"""
)

# KEYS[1] job key. ARGV: prefix, group, consumer, the consumer's entry id.
# -> 1 queued again under a new entry, 0 not this consumer's claim any more (or ended).
REQUEUE = (
    PRELUDE
    + r"""
local consumer, entry = ARGV[3], ARGV[4]
local found = redis.call('HMGET', KEYS[1], 'status', 'endpoint', 'id')
if not found[1] then return 0 end
local stream = queue_key(found[2])
if not owned_by(stream, entry, consumer) then return 0 end
ack_delete(stream, entry)
if TERMINAL[found[1]] then return 0 end
local fresh = redis.call('XADD', stream, '*', 'id', found[3])
redis.call('HSET', KEYS[1], 'status', 'queued', 'entry', fresh)
redis.call('HDEL', KEYS[1], 'claimed_by')
return 1
"""
)

# ARGV: prefix, group, consumer, stream, entry ids. Resets the idle time of the entries this
# consumer still owns; returns those.
TOUCH = (
    PRELUDE
    + r"""
local consumer, stream = ARGV[3], ARGV[4]
local owned = {}
for i = 5, #ARGV do
  if owned_by(stream, ARGV[i], consumer) then owned[#owned + 1] = ARGV[i] end
end
if #owned == 0 then return {} end
return redis.call('XCLAIM', stream, group, consumer, 0, unpack(owned), 'JUSTID')
"""
)

# KEYS[1] job key. ARGV: prefix, group, now (wall clock, s), retention_ms, error, a token unique
# to this call. -> 'unknown' | 'finished' | 'cancelled' (it was queued, maybe by this call
# retried) | 'signalled' (it was claimed)
CANCEL = (
    PRELUDE
    + r"""
local record = as_table(redis.call('HGETALL', KEYS[1]))
if not record.status then return 'unknown' end
if TERMINAL[record.status] then
  if record.ended_by == ARGV[6] then return 'cancelled' end
  return 'finished'
end
if record.status ~= 'queued' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('PUBLISH', events, 'cancel ' .. record.id)
  return 'signalled'
end
ack_delete(queue_key(record.endpoint), record.entry)
local total = math.max(0, tonumber(ARGV[3]) - tonumber(record.created_wall))
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'error', ARGV[5], 'payload', '',
  'cancel_requested', '1', 'total_s', string.format('%.17g', total), 'ended_by', ARGV[6])
ended(KEYS[1], record, ARGV[4])
return 'cancelled'
"""
)

# KEYS[1] lease key. ARGV[1] owner, ARGV[2] ttl ms. -> 1 if ours (acquired or renewed).
LEASE = r"""
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] lease key. ARGV[1] owner. Deletes it only if ours.
RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] session owners set, KEYS[2] this replica's sessions hash. ARGV[1] key prefix,
# ARGV[2] this replica. Every other owner whose heartbeat key is gone hands its sessions over
# (moved into KEYS[2]); -> the moved records.
TAKE_OVER_SESSIONS = (
    f"local alive, sessions = ':{keys.ALIVE}:', ':{keys.SESSIONS}:'"
    + r"""
local moved = {}
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if owner ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. alive .. owner) == 0 then
    local theirs = ARGV[1] .. sessions .. owner
    local fields = redis.call('HGETALL', theirs)
    for i = 1, #fields, 2 do
      redis.call('HSET', KEYS[2], fields[i], fields[i + 1])
      moved[#moved + 1] = fields[i + 1]
    end
    redis.call('DEL', theirs)
    redis.call('SREM', KEYS[1], owner)
  end
end
return moved
"""
)
