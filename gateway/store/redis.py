"""Shared hot state in Redis: write-ahead quota reservations and card states, atomic via Lua.

:class:`RedisStore` implements :class:`gateway.store.UsageLedger` (and the
policies' ``CardUsageView``) with the meaning of the SQLite store, for several
gateway instances that share cards. Every operation is **one Lua script**
(``EVALSHA``), so it is atomic on the Redis server:

- ``reserve`` counts the card's calls in the last minute / hour / carrier day,
  its calls in use, its last start (minimum gap), distinct callees and talk
  seconds of the day, its consecutive-failure streak (cooldown) and its
  answer-rate / short-call sample, compares them with the flattened
  :class:`policies.quotas.QuotaProfile`, and either records the reservation
  (write-ahead, before the INVITE leaves) or answers which limit is exhausted
  and when it frees. Two instances racing for a card's last slot are
  serialized by Redis: exactly one wins. The script mirrors
  ``policies.quotas.would_exceed`` limit by limit, in the same order; only the
  night window, which depends on the clock alone, is checked in Python first.
  One deliberate difference: starts *later* than ``now`` (recorded by an
  instance whose clock runs ahead) count too, so clock skew between instances
  can only over-count, never let a card exceed a limit.
- ``release`` (failed before the callee was alerted), ``finish`` (outcome,
  talk seconds, short call) and ``recover`` (this node's reservations left open
  by a crash become orphans: still counted as starts, no longer in use).

Keys (``{p}`` is the configurable prefix, default ``dialgate``)::

    {p}:card:{card}:starts     ZSET  call id → start (counted starts; trimmed by age)
    {p}:card:{card}:starts:blob STRING the same starts as packed doubles (fast reads)
    {p}:card:{card}:inuse      HASH  call id → node (open reservations)
    {p}:card:{card}:held       ZSET  synthetic in-use slots from a rehydration → until
    {p}:card:{card}:meta       HASH  seq (reservation order), ver (mutations), hyd (hydrated)
    {p}:card:{card}:meta:ttl   STRING marker: the card's TTLs were renewed (lives ttl/8)
    {p}:card:{card}:outz       ZSET  packed (seq, start, talk, end, flags) → start: the
                                     last ``outcome_window`` outcomes, read in one ZRANGE
    {p}:card:{card}:day:{d}    HASH  c:{callee} → open+finished calls; t → talk seconds
    {p}:card:{card}:state      HASH  state, reason, since, probation_until, ... (card state)
    {p}:states:ver             STRING version of the card states (one more per change)
    {p}:call:{call id}         HASH  the call's open reservation (card, callee, start, node, …)
    {p}:call:{call id}:tried   SET   cards this call already used (never twice)
    {p}:node:{node}:open       SET   this node's open reservations (for ``recover``)
    {p}:node:{node}:registrations HASH AOR user → JSON list of its registrar bindings
                                     (``save_registrations``/``load_registrations``)

Every write script PUBLISHes ``"{ver}|{card}"`` on ``{p}:usage`` and returns the
card's usage after the write; :mod:`gateway.store.redis_cache` keeps it until
another node announces a newer version, so card selection reads no usage from
Redis while no other node touched the card: a call costs one ``EVALSHA`` to
reserve and one to finish (plus, per 2 s, one to compare the card states'
version and a PING on the subscription).

Memory stays bounded: every key carries a TTL (``history_seconds``, default
two days, refreshed on each write; a day hash lives until its carrier day is
over plus an hour; a call's tried-cards set six hours; card states
``state_ttl_seconds``), starts older than the history are trimmed on each
reservation, and outcomes are capped at ``outcome_window`` per card. TTLs are
durations, never absolute: callers may run on a simulated clock (``now`` is
theirs, the expiry is Redis's). Measured: ~440 bytes of Redis memory per call
kept (bench/bench_redis.py).

Durability and outages. Redis is the shared *hot* copy; SQLite stays the
durable record (CDRs, card transitions). Failure mode: **fail closed** — any
Redis error or a socket timeout (default 250 ms, no retries) is raised as
:class:`gateway.store.StoreUnavailable`, which the gateway answers with 503
``store-unavailable``; nothing is ever allowed without its reservation being
stored. A reservation whose reply is lost (timeout, reset) may still have run;
the store remembers it and releases it when Redis answers again, and a
release/finish that could not reach Redis is replayed then, so an outage
cannot leave a phantom call in use (if the gateway dies first, ``recover``
orphans it at the next start). Counters live in Redis, so a gateway restart or
a reconnect resets nothing.

A *Redis* restart without persistence loses the counters. Run Redis with
``appendonly yes`` (``appendfsync everysec``: a host crash loses at most a
second), and/or give the store a ``facts`` source (:func:`sqlite_facts` over a
SQLite store that also records the call starts). With a source, each card
carries a ``hyd`` mark whose TTL is refreshed with, so outlives, the card's
other keys; a card without it is *cold*: its next reservation or usage read
first calls :meth:`RedisStore.rehydrate` with the durable facts, which writes
a conservative synthetic window (calls placed as late as the facts allow,
in-use slots held for ``rehydrate_hold_seconds``) — after a Redis restart a
card can only look busier than it was, never idler. If the source fails, the
reservation fails closed. Without a source a cold card starts from what Redis
holds (documented trade-off; use AOF then).

The client is synchronous, like the protocols it implements
(:mod:`gateway.store.protocols`: ``RedisStore`` is a ``UsageLedger`` and a
``RegistrationStore``, ``MirroredLedger`` a ``UsageLedger``,
``SharedCardRepository`` a ``CardRepository``): each operation blocks the
caller for one round trip (0.1-0.3 ms on loopback, see the bench), at most
``timeout`` when Redis hangs — except a finish, which is sent without waiting
and whose answer is read before the store's next command (``_collect``,
docs/redis.md). An asynchronous client would implement the same protocol methods.

Deployment: one Redis server (or a primary with replicas), not Redis Cluster
(scripts touch a call's and its card's keys together). This module must never
read a clock (callers pass ``now``), never log a callee number, and imports
the optional ``redis`` package (redis-py) at import time.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
import structlog
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from gateway.store.guard import StoreGuard
from gateway.store.protocols import UsageLedger
from gateway.store.records import (
    CalleesToday,
    CardUsageFacts,
    QuotaExceeded,
    ReservationError,
    StoredCard,
    StoredRegistration,
    StoreUnavailable,
    TransitionRecord,
    unavailable,
)
from gateway.store.redis_cache import UsageCache
from policies.quotas import (
    CallOutcome,
    CardUsage,
    Exhausted,
    QuotaLimit,
    QuotaProfile,
    StartTimes,
    would_exceed,
)
from policies.timeutil import day_bounds

if TYPE_CHECKING:
    from gateway.cards import CardManager, CardStateChanged
    from gateway.config import Settings
    from gateway.store.sqlite import SQLiteStore

__all__ = [
    "HEARTBEAT_TTL",
    "UNCERTAIN_SECONDS",
    "CardStateRecord",
    "MirroredLedger",
    "RedisStore",
    "SharedCardRepository",
    "connect",
    "from_settings",
    "ledger_from_settings",
    "node_name",
    "sqlite_facts",
]

FactsSource = Callable[[str, float], CardUsageFacts]

log = structlog.get_logger("gateway.store.redis")


def connect(url: Any, *, timeout: float = 0.25) -> redis.Redis:
    """A synchronous client with short timeouts and **no retries**.

    ``url`` is a ``redis://``/``rediss://``/``unix://`` string or the config's
    ``ServiceUrl`` (its password stays a ``SecretStr`` until here). The gateway
    calls the store from its event loop and must answer 503 quickly when Redis
    is gone, so connect and read both time out after ``timeout`` seconds and a
    failed command is not retried (redis-py's default retries with backoff).
    """
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_error": [],
        "health_check_interval": 0,
    }
    if isinstance(url, str):
        return redis.Redis.from_url(url, **common)
    password = url.password.get_secret_value() if url.password is not None else None
    if url.scheme == "unix":
        return redis.Redis(unix_socket_path=url.path, password=password, **common)
    db = url.path.strip("/")
    return redis.Redis(
        host=url.ip,
        port=url.port or 6379,
        db=int(db) if db.isdigit() else 0,
        username=url.username,
        password=password,
        ssl=url.scheme == "rediss",
        **common,
    )


# --- Lua ------------------------------------------------------------------------------
#
# why: Redis converts Lua numbers to strings with "%.14g" and truncates float replies
# to integers, so every time value crosses the boundary as a string: the caller's
# repr() going in, "%.17g" (exact round trip) coming out.

_LUA_COMMON = r"""
local OUT = '>I8dddB'  -- outcome member: seq, start, talk, end, flags (1 answered 2 failed 4 short)
local function num(s) if s == nil or s == '' then return nil end return tonumber(s) end
local function fmt(x) return string.format('%.17g', x) end
local function read_outcomes(outz, w)
  local members = redis.call('ZRANGE', outz, -w, -1)
  local st, tk, en, an, fl = {}, {}, {}, {}, {}
  for i = 1, #members do
    local _, s, t, e, f = struct.unpack(OUT, members[i])
    st[i], tk[i], en[i], an[i], fl[i] = s, t, e, bit.band(f, 1) == 1, bit.band(f, 2) == 2
  end
  return #members, st, tk, en, an, fl
end
-- The starts are also kept as one string of packed doubles ({starts}:blob, in no
-- order, possibly with already-trimmed ones): reading a busy day is then one GET
-- instead of hundreds of sorted-set replies (which cost ~0.3 ms per read in Lua).
local function blob_append(k_starts, score_s)
  redis.call('APPEND', k_starts .. ':blob', struct.pack('>d', tonumber(score_s)))
end
local function blob_remove(k_starts, score_s)
  local k = k_starts .. ':blob'
  local blob = redis.call('GET', k)
  if not blob then return end
  local needle, init = struct.pack('>d', tonumber(score_s)), 1
  while true do
    local pos = string.find(blob, needle, init, true)
    if not pos then return end
    if (pos - 1) % 8 == 0 then
      redis.call('SET', k, string.sub(blob, 1, pos - 1) .. string.sub(blob, pos + 8), 'KEEPTTL')
      return
    end
    init = pos + 1
  end
end
local function blob_compact(k_starts)
  local k = k_starts .. ':blob'
  if redis.call('STRLEN', k) > 8 * (redis.call('ZCARD', k_starts) + 256) then
    local raw = redis.call('ZRANGEBYSCORE', k_starts, '-inf', '+inf', 'WITHSCORES')
    local p = {}
    for i = 2, #raw, 2 do p[#p + 1] = struct.pack('>d', tonumber(raw[i])) end
    redis.call('SET', k, table.concat(p))
  end
end
local function in_use(inuse, held, now_s)
  return redis.call('HLEN', inuse) + redis.call('ZCOUNT', held, '(' .. now_s, '+inf')
end
-- The card's usage as every read returns it (RedisStore._parse): packed starts, day
-- fields (NUL-joined), day talk, calls in use, last outcomes, version, hydrated mark,
-- rehydration slots still held. A day holds hundreds of starts and callees: one packed
-- string each instead of hundreds of reply elements keeps the script's and the
-- client's cost flat.
local function snapshot(k_starts, k_inuse, k_held, k_meta, k_outz, k_day, now_s, w)
  local blob = redis.call('GET', k_starts .. ':blob') or ''
  local fields = redis.call('HKEYS', k_day)
  local talk = redis.call('HGET', k_day, 't') or '0'
  local held = redis.call('ZCOUNT', k_held, '(' .. now_s, '+inf')
  local outs = redis.call('ZRANGE', k_outz, -w, -1)
  local meta = redis.call('HMGET', k_meta, 'ver', 'hyd')
  return {blob, table.concat(fields, '\0'), talk, redis.call('HLEN', k_inuse) + held, outs,
          meta[1] or '0', meta[2] or '', held}
end
-- Tells the other nodes' usage caches (gateway/store/redis_cache.py) the card changed
-- and how: "ver US op US fields... US card" (US = \31), the fields of _apply_delta.
local function announce(channel, card, ver, delta)
  if channel == '' then return end
  local parts = {tostring(ver)}
  for i = 1, #delta do parts[#parts + 1] = delta[i] end
  parts[#parts + 1] = card
  redis.call('PUBLISH', channel, table.concat(parts, '\31'))
end
"""

_LUA_RESERVE = (
    _LUA_COMMON
    + r"""
local K_starts, K_inuse, K_held, K_meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_outz, K_day, K_call, K_tried, K_open = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local card, call_id, callee, now_s, node, agent = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local day_start_s, day_key, lower_s, trim_s = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local ttl, day_ttl, w = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local need_hyd, expect_ver, check = ARGV[14] == '1', ARGV[15], ARGV[16] == '1'
local channel, want, have = ARGV[19], ARGV[20] == '1', ARGV[21]
local now = tonumber(now_s)
-- A refusal carries the card's usage too: the caller's copy was older than Redis's.
local function refuse(reply)
  if want then reply[#reply + 1] = snapshot(K_starts, K_inuse, K_held, K_meta, K_outz, K_day, now_s, w) end
  return reply
end

if need_hyd and redis.call('HEXISTS', K_meta, 'hyd') == 0 then return {'COLD'} end
if expect_ver ~= '' and (redis.call('HGET', K_meta, 'ver') or '0') ~= expect_ver then
  return {'STALE'}
end

if check then
  local p, i = {}, 0
  for v in string.gmatch(ARGV[18], '([^,]*),') do i = i + 1; p[i] = num(v) end
  local cpm, cph, cpd, conc, gap, talk_cap, distinct = p[1], p[2], p[3], p[4], p[5], p[6], p[7]
  local floor, ceiling, short_s, rate_calls, rate_secs = p[8], p[9], p[10], p[11], p[12]
  local rate_min, consec, cooldown = p[13], p[14], p[15]

  if conc then
    local used = in_use(K_inuse, K_held, now_s)
    if used >= conc then return refuse({'EXCEEDED', 'concurrent', tostring(used)}) end
  end
  if gap then
    local last = redis.call('ZREVRANGEBYSCORE', K_starts, '+inf', lower_s, 'WITHSCORES', 'LIMIT', 0, 1)
    if #last > 0 and now - tonumber(last[2]) < gap then
      return refuse({'EXCEEDED', 'min_gap_seconds', last[2]})
    end
  end
  local n, st, tk, en, an, fl = 0, nil, nil, nil, nil, nil
  if (consec and consec > 0) or floor or ceiling then
    n, st, tk, en, an, fl = read_outcomes(K_outz, w)
  end
  if consec and consec > 0 and n > 0 and fl[n] then
    local streak = 0
    for j = n, 1, -1 do
      if not fl[j] then break end
      streak = streak + 1
    end
    if streak >= consec and en[n] + cooldown > now then
      return refuse({'EXCEEDED', 'consecutive_failures', fmt(en[n]), tostring(streak)})
    end
  end
  for _, spec in ipairs({{60, cpm, 'calls_per_minute'}, {3600, cph, 'calls_per_hour'}}) do
    local window, limit, name = spec[1], spec[2], spec[3]
    if limit then
      local lo = '(' .. fmt(now - window)
      local used = redis.call('ZCOUNT', K_starts, lo, '+inf')
      if used >= limit then
        local oldest = ''
        if limit > 0 then
          local r = redis.call('ZRANGEBYSCORE', K_starts, lo, '+inf', 'WITHSCORES', 'LIMIT', used - limit, 1)
          oldest = r[2]
        end
        return refuse({'EXCEEDED', name, oldest, tostring(used)})
      end
    end
  end
  if cpd then
    local used = redis.call('ZCOUNT', K_starts, day_start_s, '+inf')
    if used >= cpd then return refuse({'EXCEEDED', 'calls_per_day', tostring(used)}) end
  end
  if talk_cap then
    local talk = redis.call('HGET', K_day, 't') or '0'
    if tonumber(talk) >= talk_cap then return refuse({'EXCEEDED', 'talk_minutes_per_day', talk}) end
  end
  if distinct then
    local used = redis.call('HLEN', K_day) - redis.call('HEXISTS', K_day, 't')
    local again = redis.call('HEXISTS', K_day, 'c:' .. callee) == 1
    if used >= distinct and not again then
      return refuse({'EXCEEDED', 'distinct_callees_per_day', tostring(used)})
    end
  end
  if (floor or ceiling) and n >= rate_min then
    -- the sample: the last rate_calls outcomes that started inside the time window
    local horizon = now - rate_secs
    local idx = {}
    for j = math.max(1, n - rate_calls + 1), n do
      if st[j] > horizon then idx[#idx + 1] = j end
    end
    local m = #idx
    local suf_a, suf_s = {}, {}
    suf_a[m + 1], suf_s[m + 1] = 0, 0
    for j = m, 1, -1 do
      local a, s = 0, 0
      if an[idx[j]] then
        a = 1
        if tk[idx[j]] < short_s then s = 1 end
      end
      suf_a[j], suf_s[j] = suf_a[j + 1] + a, suf_s[j + 1] + s
    end
    local function failing(from)
      local k = m - from + 1
      if k < rate_min then return nil end
      if floor and suf_a[from] / k < floor then return 'answer_rate_floor' end
      if ceiling and suf_s[from] / k > ceiling then return 'short_call_ceiling' end
      return nil
    end
    local limit = failing(1)
    if limit then
      local oldest = ''
      for j = 1, m do
        if failing(j + 1) == nil then oldest = fmt(st[idx[j]]) break end
      end
      return refuse({'EXCEEDED', limit, oldest, tostring(m)})
    end
  end
end

local held = redis.call('HGET', K_call, 'card')
if held then return {'HELD', held} end
if redis.call('SISMEMBER', K_tried, card) == 1 then return {'TRIED'} end

local seq = redis.call('HINCRBY', K_meta, 'seq', 1)
local ver = redis.call('HINCRBY', K_meta, 'ver', 1)
redis.call('HSET', K_meta, 'hyd', '1')
redis.call('ZADD', K_starts, now_s, call_id)
blob_append(K_starts, now_s)
if redis.call('ZREMRANGEBYSCORE', K_starts, '-inf', '(' .. trim_s) > 0 then blob_compact(K_starts) end
redis.call('ZREMRANGEBYSCORE', K_held, '-inf', now_s)
redis.call('HSET', K_inuse, call_id, node)
redis.call('HINCRBY', K_day, 'c:' .. callee, 1)
redis.call('HSET', K_call, 'card', card, 'callee', callee, 'start', now_s, 'node', node,
           'agent', agent, 'seq', seq, 'day', day_key)
redis.call('SADD', K_tried, card)
redis.call('SADD', K_open, call_id)
redis.call('EXPIRE', K_call, ttl)
redis.call('EXPIRE', K_open, ttl)
redis.call('EXPIRE', K_tried, tonumber(ARGV[17]))
redis.call('EXPIRE', K_day, day_ttl)
-- why: the card's own keys only need their TTL renewed now and then (it is two days),
-- not by every call: a marker that lives an eighth of it says when.
if redis.call('SET', K_meta .. ':ttl', '1', 'EX', math.max(1, math.floor(ttl / 8)), 'NX') then
  for _, k in ipairs({K_starts, K_starts .. ':blob', K_inuse, K_held, K_meta, K_outz}) do
    redis.call('EXPIRE', k, ttl)
  end
end
announce(channel, card, ver, {'R', day_key, now_s, callee})
-- why: the caller's copy was the version just before this write: it applies the write
-- itself (as it would another node's announcement) instead of reading the whole card.
if want and have ~= '' and tonumber(have) == ver - 1 then return {'OK', tostring(seq), 'D', tostring(ver)} end
if want then
  return {'OK', tostring(seq), snapshot(K_starts, K_inuse, K_held, K_meta, K_outz, K_day, now_s, w)}
end
return {'OK', tostring(seq)}
"""
)

_LUA_CLOSE = (
    _LUA_COMMON
    + r"""
local K_call = KEYS[1]
local prefix, call_id, mode, now_s = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local answered, talk_s, short, failed = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ttl, w, only_node = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
local channel, want, have = ARGV[12], ARGV[13] == '1', ARGV[15]
-- a live node's reservations are never orphaned by another (its heartbeat decides)
if ARGV[14] ~= '' and redis.call('EXISTS', ARGV[14]) == 1 then return {'NONE'} end

local f = redis.call('HMGET', K_call, 'card', 'callee', 'start', 'node', 'seq', 'day')
local card, callee, start_s, node, seq, day_key = f[1], f[2], f[3], f[4], f[5], f[6]
if not card then return {'NONE'} end
if only_node ~= '' and node ~= only_node then return {'NONE'} end
local base = prefix .. ':card:' .. card .. ':'
local K_starts, K_inuse, K_held, K_meta = base .. 'starts', base .. 'inuse', base .. 'held', base .. 'meta'
local K_outz = base .. 'outz'
local K_open = prefix .. ':node:' .. node .. ':open'

redis.call('HDEL', K_inuse, call_id)
redis.call('SREM', K_open, call_id)
local talk, flags, left, talk_total = 0, nil, '', ''
if mode == 'release' then
  redis.call('ZREM', K_starts, call_id)
  blob_remove(K_starts, start_s)
  -- an emptied set is deleted and the next reservation recreates it: renew TTLs then
  if redis.call('EXISTS', K_starts) == 0 then redis.call('DEL', K_meta .. ':ttl') end
  local n = redis.call('HINCRBY', day_key, 'c:' .. callee, -1)
  if n <= 0 then redis.call('HDEL', day_key, 'c:' .. callee) end
  left = tostring(n)
  if failed == '1' then flags = 2 end
elseif mode == 'finish' then
  talk = tonumber(talk_s)
  flags = 0
  if answered == '1' then flags = flags + 1 end
  if failed == '1' then flags = flags + 2 end
  if short == '1' then flags = flags + 4 end
  if talk ~= 0 then
    talk_total = redis.call('HINCRBYFLOAT', day_key, 't', talk_s)
    if redis.call('TTL', day_key) < 0 then redis.call('EXPIRE', day_key, ttl) end
  end
else
  flags = 0
end
if flags then
  local member = struct.pack(OUT, tonumber(seq), tonumber(start_s), talk, tonumber(now_s), flags)
  redis.call('ZADD', K_outz, start_s, member)
  redis.call('ZREMRANGEBYRANK', K_outz, 0, -(w + 1))
  redis.call('EXPIRE', K_outz, ttl)
end
local ver = redis.call('HINCRBY', K_meta, 'ver', 1)
redis.call('DEL', K_call)
local delta = {({release = 'L', finish = 'F', orphan = 'O'})[mode] or 'X',
               day_key, start_s, callee,
               left, talk_total, flags and tostring(flags) or '', seq,
               fmt(talk), now_s}
announce(channel, card, ver, delta)
if want and have ~= '' and tonumber(have) == ver - 1 then
  -- the caller's copy was current: it applies this change itself (see the reserve script)
  return {'OK', card, day_key, 'D', tostring(ver), unpack(delta)}
end
if want then
  -- as of the call's carrier day: the caller keeps it only if that is still today
  return {'OK', card, day_key,
          snapshot(K_starts, K_inuse, K_held, K_meta, K_outz, day_key, now_s, w)}
end
return {'OK', card}
"""
)

_LUA_READ = (
    _LUA_COMMON
    + r"""
local K_starts, K_inuse, K_held, K_meta, K_outz, K_day =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now_s, w = ARGV[1], tonumber(ARGV[2])
return snapshot(K_starts, K_inuse, K_held, K_meta, K_outz, K_day, now_s, w)
"""
)

_LUA_REHYDRATE = (
    _LUA_COMMON
    + r"""
local K_starts, K_held, K_meta, K_outz, K_day = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ttl, day_ttl, force = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local plan = cjson.decode(ARGV[4])
if not force and redis.call('HEXISTS', K_meta, 'hyd') == 1 then return 0 end
for i, score in ipairs(plan.starts) do
  redis.call('ZADD', K_starts, score, 'h:' .. i)
  blob_append(K_starts, score)
end
for i = 1, plan.callees do redis.call('HINCRBY', K_day, 'c:h:' .. i, 1) end
if plan.talk ~= '0.0' then redis.call('HINCRBYFLOAT', K_day, 't', plan.talk) end
for i, until_s in ipairs(plan.held) do redis.call('ZADD', K_held, until_s, 'h:' .. i) end
for _, o in ipairs(plan.outcomes) do
  -- o = {start, talk, end, flags} (times as exact decimal strings)
  local seq = redis.call('HINCRBY', K_meta, 'seq', 1)
  local member = struct.pack(OUT, seq, tonumber(o[1]), tonumber(o[2]), tonumber(o[3]), o[4])
  redis.call('ZADD', K_outz, o[1], member)
end
redis.call('ZREMRANGEBYRANK', K_outz, 0, -(tonumber(ARGV[5]) + 1))
redis.call('HSET', K_meta, 'hyd', '1')
local ver = redis.call('HINCRBY', K_meta, 'ver', 1)
for _, k in ipairs({K_starts, K_starts .. ':blob', K_held, K_meta, K_outz}) do
  redis.call('EXPIRE', k, ttl)
end
if redis.call('EXISTS', K_day) == 1 then redis.call('EXPIRE', K_day, day_ttl) end
announce(ARGV[6], ARGV[7], ver, {'H'})
return 1
"""
)

_LUA_PUT_STATE = r"""
local K, K_ver = KEYS[1], KEYS[2]
local since, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local current = redis.call('HGET', K, 'since')
if current and tonumber(current) > since then return 0 end
redis.call('HSET', K, 'since', ARGV[1], 'state', ARGV[3], 'reason', ARGV[4],
           'probation_until', ARGV[5], 'profile_override', ARGV[6], 'resume_at', ARGV[7])
redis.call('EXPIRE', K, ttl)
-- The states' version: starts from the server's clock (never reused after a restart
-- that lost it), one more per change.
if redis.call('EXISTS', K_ver) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', K_ver, t[1] .. string.format('%06d', tonumber(t[2])))
end
redis.call('INCR', K_ver)
redis.call('EXPIRE', K_ver, ttl)
return 1
"""

# Every card state in one call, or only the version when it is the one the caller
# already holds; with a TTL, renews the states' (a suspension never expires while
# any instance runs).
_LUA_STATES = r"""
local ver = redis.call('GET', KEYS[1])
if not ver then  -- (see _LUA_PUT_STATE)
  local t = redis.call('TIME')
  ver = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[1], ver, 'EX', ARGV[3])
end
if ARGV[2] ~= '' then
  for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
end
if ver ~= '' and ver == ARGV[1] then return {ver} end
local out = {ver}
for i = 2, #KEYS do
  out[i] = redis.call('HMGET', KEYS[i], 'state', 'reason', 'since', 'probation_until',
                      'profile_override', 'resume_at')
end
return out
"""


# A node's heartbeat: its liveness key (short TTL), its description (kept a day, for
# the operator after it died), its name in the registry; returns the registered nodes
# whose liveness key has expired.
_LUA_HEARTBEAT = r"""
local K_alive, K_info, K_nodes, K_open = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, node, ttl, keep = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local calls = redis.call('SCARD', K_open)
redis.call('SET', K_alive, ARGV[7], 'EX', ttl)
redis.call('HSET', K_info, 'node', node, 'address', ARGV[5], 'started_at', ARGV[6],
           'at', ARGV[7], 'calls', calls, 'ttl', ttl)
redis.call('EXPIRE', K_info, keep)
redis.call('SADD', K_nodes, node)
redis.call('EXPIRE', K_nodes, keep)
local dead = {}
for _, other in ipairs(redis.call('SMEMBERS', K_nodes)) do
  if redis.call('EXISTS', prefix .. ':nodes:' .. other .. ':alive') == 0 then
    dead[#dead + 1] = other
  end
end
return dead
"""

# --- plain data ----------------------------------------------------------------------

#: An outcome as the scripts pack it (Lua ``struct`` format ``>I8dddB``).
_OUTCOME = struct.Struct(">QdddB")
_ANSWERED, _FAILED, _SHORT = 1, 2, 4


# One AOR's bindings in the node's registrations hash; '' deletes the field. The
# key's TTL only ever grows (a key without TTL gets one), so one short binding
# never cuts the life of the others.
_LUA_PUT_REGISTRATIONS = r"""
-- KEYS[1]: this node's hash of AORs (restored at its restart); KEYS[2]: the AOR's
-- cluster-wide copy, what another node reads when the agent reaches it (failover).
local key, shared, aor, value, ttl = KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3])
if value == '' then
  redis.call('HDEL', key, aor)
  redis.call('DEL', shared)
  return 0
end
redis.call('HSET', key, aor, value)
local current = redis.call('TTL', key)
if ttl > 0 and (current == -1 or current < ttl) then
  redis.call('EXPIRE', key, ttl)
end
if ttl > 0 then
  redis.call('SET', shared, value, 'EX', ttl)
else
  redis.call('SET', shared, value)
end
return 1
"""


class _Snapshot(NamedTuple):
    """One atomic read of a card: usage, mutation counter, hydrated mark, short flags.

    ``lower``: starts before it were left out; ``held``: rehydration slots counted
    in ``usage.in_use`` (a snapshot holding any is never cached: they expire).
    """

    usage: CardUsage
    version: str
    hydrated: bool
    shorts: tuple[bool, ...]
    lower: float = 0.0
    held: int = 0
    members: tuple[bytes, ...] = ()  # the outcomes as packed, in the script's order

    def since(self, lower: float) -> _Snapshot:
        """The same snapshot with starts before ``lower`` left out (a cached one, read later)."""
        starts = self.usage.call_starts
        if lower <= self.lower or not starts or starts[0] >= lower:
            return self
        kept = starts[starts.bisect_left(lower) :]
        return self._replace(usage=replace(self.usage, call_starts=kept), lower=lower)


def _parse(raw: Sequence[Any], lower: float) -> _Snapshot:
    """A ``snapshot()`` reply of the scripts (see ``_LUA_COMMON``) as a :class:`_Snapshot`."""
    packed, fields, day_talk, in_use, raw_outs, version, hyd, held = raw
    outcomes, shorts = _outcomes(raw_outs)
    starts = sorted(t for t in struct.unpack(f">{len(packed) // 8}d", packed) if t >= lower)
    usage = CardUsage(
        call_starts=StartTimes.window(starts, 0, len(starts)),
        callees_today=CalleesToday.of(
            f[2:].decode() for f in fields.split(b"\0") if f.startswith(b"c:")
        ),
        talk_seconds_today=float(day_talk),
        in_use=int(in_use),
        recent_outcomes=outcomes,
    )
    return _Snapshot(usage, version.decode(), bool(hyd), shorts, lower, int(held), tuple(raw_outs))


def _callees(usage: CardUsage) -> CalleesToday:
    """The usage's callees as a :class:`CalleesToday` (snapshots are parsed into one)."""
    callees = usage.callees_today
    return callees if isinstance(callees, CalleesToday) else CalleesToday.of(callees)


def _outcomes(members: Sequence[bytes]) -> tuple[tuple[CallOutcome, ...], tuple[bool, ...]]:
    outcomes = []
    shorts = []
    for item in members:
        _seq, started, talk, ended, flags = _OUTCOME.unpack(item)
        outcomes.append(
            CallOutcome(
                started_at=started,
                answered=bool(flags & _ANSWERED),
                talk_seconds=talk,
                failed=bool(flags & _FAILED),
                ended_at=ended,
            )
        )
        shorts.append(bool(flags & _SHORT))
    return tuple(outcomes), tuple(shorts)


def _apply_delta(
    snap: _Snapshot, day_start: float, version: int, fields: Sequence[bytes], window: int
) -> _Snapshot | None:
    """Another node's write (``announce`` in the scripts) applied to the copy just before it.

    ``R day start callee``: a reservation. ``L``/``F``/``O`` (release, finish,
    orphan) ``day start callee left talk_total flags seq talk end``: a close —
    ``left`` the callee's calls of the day after a release, ``talk_total`` the
    day's talk after a finish, ``flags`` the outcome recorded (none: empty).
    None when the change is not one this copy can follow exactly (another
    carrier day, a rehydration, an unknown form): the caller drops the copy.
    """
    op = fields[0]
    size = 4 if op == b"R" else 10 if op in (b"L", b"F", b"O") else 0
    if len(fields) != size:
        return None
    if int(fields[1].rsplit(b":", 1)[1]) != int(day_start):
        return None
    start = float(fields[2])
    callee = fields[3].decode()
    usage = snap.usage
    starts = usage.call_starts
    if op == b"R":
        if start >= snap.lower:
            starts = starts.with_start(start)
        usage = replace(
            usage,
            call_starts=starts,
            callees_today=_callees(usage).with_callee(callee),
            in_use=usage.in_use + 1,
        )
        return snap._replace(usage=usage, version=str(version))
    left, talk_total, flags, seq, talk, end = fields[4:10]
    callees = usage.callees_today
    if op == b"L":
        starts = starts.without(start)
        if int(left) <= 0:
            callees = _callees(usage).without(callee)
    members = snap.members
    outcomes, shorts = usage.recent_outcomes, snap.shorts
    if flags:
        members, outcomes, shorts = _with_outcome(
            snap, _OUTCOME.pack(int(seq), start, float(talk), float(end), int(flags)), window
        )
    usage = replace(
        usage,
        call_starts=starts,
        callees_today=callees,
        talk_seconds_today=float(talk_total) if talk_total else usage.talk_seconds_today,
        in_use=max(0, usage.in_use - 1),
        recent_outcomes=outcomes,
    )
    return snap._replace(usage=usage, version=str(version), shorts=shorts, members=members)


def _with_outcome(
    snap: _Snapshot, member: bytes, window: int
) -> tuple[tuple[bytes, ...], tuple[CallOutcome, ...], tuple[bool, ...]]:
    """The snapshot's outcomes with one more, as the scripts' sorted set orders them (by
    start, then by the packed bytes), the last ``window`` kept: members, outcomes, shorts.

    The new outcome is placed by a walk from the newest (a call usually ends after
    those that ended before it started), and only it is unpacked into a
    :class:`CallOutcome`: the others are the snapshot's, shared.
    """
    members = snap.members
    key = (_OUTCOME.unpack(member)[1], member)
    at = len(members)
    while at and (_OUTCOME.unpack(members[at - 1])[1], members[at - 1]) > key:
        at -= 1
    (added,), (short,) = _outcomes((member,))
    kept = snap.usage.recent_outcomes
    members = (*members[:at], member, *members[at:])[-window:]
    outcomes = (*kept[:at], added, *kept[at:])[-window:]
    shorts = (*snap.shorts[:at], short, *snap.shorts[at:])[-window:]
    return members, outcomes, shorts


class _LazyClose(NamedTuple):
    """The finish sent without waiting for its answer (``RedisStore._collect`` reads it)."""

    call_id: str
    mode: str
    now: float
    flags: dict[str, Any]
    card: str
    epoch: int | None


_OWN_CARDS_MAX = 65_536
"""Open reservations whose card a node remembers for its closes (beyond: forgotten)."""


@dataclass(frozen=True, slots=True)
class CardStateRecord:
    """The shared hot copy of one card's state (the durable history is in SQLite)."""

    card: str
    state: str
    reason: str | None
    since: float
    probation_until: float | None = None
    profile_override: str | None = None
    resume_at: float | None = None


def _opt(value: float | str | None) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _opt_float(raw: bytes | None) -> float | None:
    return None if raw is None or raw == b"" else float(raw)


def _opt_str(raw: bytes | None) -> str | None:
    return None if raw is None or raw == b"" else raw.decode()


@lru_cache(maxsize=256)
def _night_only(window: str) -> QuotaProfile:
    return QuotaProfile(name="night", concurrent=None, night_window=window)


@lru_cache(maxsize=256)
def _flatten(profile: QuotaProfile) -> str:
    """The profile's limits, comma-terminated, in the order the reserve script reads them.

    An empty value means "no limit". One argument instead of fifteen: encoding
    arguments is a good part of a call's client-side cost.
    """
    talk_cap = None if profile.talk_minutes_per_day is None else profile.talk_minutes_per_day * 60.0
    values = [
        _opt(profile.calls_per_minute),
        _opt(profile.calls_per_hour),
        _opt(profile.calls_per_day),
        _opt(profile.concurrent),
        _opt(None if profile.min_gap_seconds is None else float(profile.min_gap_seconds)),
        _opt(talk_cap),
        _opt(profile.distinct_callees_per_day),
        _opt(None if profile.answer_rate_floor is None else float(profile.answer_rate_floor)),
        _opt(None if profile.short_call_ceiling is None else float(profile.short_call_ceiling)),
        repr(float(profile.short_call_seconds)),
        str(profile.rate_window_calls),
        repr(float(profile.rate_window_seconds)),
        str(profile.rate_min_sample),
        _opt(profile.consecutive_failures),
        repr(float(profile.cooldown_seconds)),
    ]
    return "".join(f"{v}," for v in values)


def _exhausted(
    reply: Sequence[bytes], profile: QuotaProfile, now: float, day_end: float
) -> Exhausted:
    """Rebuild the ``policies.quotas`` answer (same frees-at and detail) from the script's."""
    name = QuotaLimit(reply[1].decode())
    values = [r.decode() for r in reply[2:]]
    frees: float | None
    match name:
        case QuotaLimit.CONCURRENT:
            return Exhausted(name, None, f"{values[0]}/{profile.concurrent} in use")
        case QuotaLimit.MIN_GAP:
            last = float(values[0])
            gap = float(profile.min_gap_seconds or 0.0)
            return Exhausted(name, last + gap, f"last start {now - last:.1f}s ago")
        case QuotaLimit.CONSECUTIVE_FAILURES:
            frees = float(values[0]) + profile.cooldown_seconds
            return Exhausted(name, frees, f"{values[1]} failures in a row")
        case QuotaLimit.CALLS_PER_MINUTE | QuotaLimit.CALLS_PER_HOUR:
            window = 60.0 if name is QuotaLimit.CALLS_PER_MINUTE else 3600.0
            limit = profile.calls_per_minute if window == 60.0 else profile.calls_per_hour
            frees = float(values[0]) + window if values[0] else None
            return Exhausted(name, frees, f"{values[1]}/{limit} in {int(window)}s")
        case QuotaLimit.CALLS_PER_DAY:
            return Exhausted(name, day_end, f"{values[0]}/{profile.calls_per_day} today")
        case QuotaLimit.TALK_MINUTES_PER_DAY:
            talk = float(values[0])
            return Exhausted(
                name, day_end, f"{talk / 60:.1f}/{profile.talk_minutes_per_day} min today"
            )
        case QuotaLimit.DISTINCT_CALLEES_PER_DAY:
            return Exhausted(name, day_end, f"{values[0]}/{profile.distinct_callees_per_day} today")
        case QuotaLimit.ANSWER_RATE_FLOOR | QuotaLimit.SHORT_CALL_CEILING:
            frees = float(values[0]) + profile.rate_window_seconds if values[0] else None
            return Exhausted(name, frees, f"{name} over last {values[1]} calls")
    raise StoreUnavailable(f"redis: unexpected quota answer {name}")


# --- the store -----------------------------------------------------------------------

#: How long (caller's clock) a reservation whose reply was lost may still show up.
UNCERTAIN_SECONDS = 60.0

#: How often (caller's clock) the periodic sync renews the TTL of the shared card states.
STATE_TOUCH_SECONDS = 3600.0

#: Seconds a node's heartbeat (renewed by every 2 s sync) keeps it alive.
HEARTBEAT_TTL = 6

#: Seconds a node's description stays readable after its last heartbeat.
NODE_INFO_SECONDS = 86400


def _unreachable(exc: StoreUnavailable) -> bool:
    """Whether Redis was not reached or did not answer (as opposed to refusing a command)."""
    return isinstance(exc.__cause__, RedisConnectionError | RedisTimeoutError)


class RedisStore:
    """Usage ledger and card states over one Redis server, shared by gateway instances.

    ``client`` comes from :func:`connect` (short timeouts, no retries).
    ``node`` names this instance (``[mqtt] node``): :meth:`recover` only
    orphans its own reservations. ``card_carriers`` (card → carrier) and
    ``carrier_timezones`` (carrier → IANA zone) give each card's calendar day
    (UTC when unknown). ``facts`` is the durable source a cold card (keys lost
    in a Redis restart) is rehydrated from; without one a cold card starts from
    what Redis holds. ``short_call_seconds`` and ``outcome_window`` mean what
    they mean for :class:`gateway.store.SQLiteStore`. ``tried_ttl_seconds``
    bounds how long a call remembers the cards it tried (failover happens
    while the call is set up; one small set per call is the bulk of the keys).
    ``lazy_finish``: a finish is sent without waiting for its answer (read before
    anything else this store does; False: it waits, as a release does).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        node: str,
        prefix: str = "dialgate",
        card_carriers: Mapping[str, str] | None = None,
        carrier_timezones: Mapping[str, str] | None = None,
        short_call_seconds: float = 10.0,
        outcome_window: int = 50,
        history_seconds: float = 2 * 86400.0,
        state_ttl_seconds: float = 30 * 86400.0,
        facts: FactsSource | None = None,
        rehydrate_hold_seconds: float = 3600.0,
        tried_ttl_seconds: float = 6 * 3600.0,
        max_retries: int = 20,
        usage_cache: bool = True,
        lazy_finish: bool = True,
    ) -> None:
        if outcome_window < 1:
            raise ValueError("outcome_window must be >= 1")
        if history_seconds < 26 * 3600.0:
            # A carrier day (25 h on a DST change) plus the rolling hour must stay readable.
            raise ValueError("history_seconds must cover at least 26 hours")
        # redis-py types every reply as "value or awaitable" (one class for sync and
        # async clients); this store only uses the synchronous client.
        self.client: Any = client
        self.node = node
        self.prefix = prefix
        self.card_carriers = dict(card_carriers or {})
        self.carrier_timezones = dict(carrier_timezones or {})
        self.short_call_seconds = short_call_seconds
        self.outcome_window = outcome_window
        self.history_seconds = history_seconds
        self.state_ttl_seconds = state_ttl_seconds
        self.facts = facts
        self.rehydrate_hold_seconds = rehydrate_hold_seconds
        self.tried_ttl_seconds = tried_ttl_seconds
        self.max_retries = max_retries
        self.lazy_finish = lazy_finish
        # Reservations whose reply was lost (timeout, reset): the script may have run.
        self._uncertain: dict[str, float] = {}
        # release/finish that failed to reach Redis: replayed when it answers again.
        self._unclosed: dict[str, tuple[str, float, dict[str, Any]]] = {}
        # call id → card of this node's open reservations: a close passes the version of
        # its copy of that card, so the script can answer with the change alone.
        self._own_cards: dict[str, str] = {}
        # A recover() that could not reach Redis (caller time): run before anything else.
        self._recover_at: float | None = None
        # The finish sent on ``_lazy_conn`` and not yet answered (see ``finish``): its
        # answer is read before this store sends anything else, so there is one at most.
        self._lazy: _LazyClose | None = None
        self._lazy_conn: Any = None
        self._reserve = client.register_script(_LUA_RESERVE)
        self._close = client.register_script(_LUA_CLOSE)
        self._read = client.register_script(_LUA_READ)
        self._rehydrate = client.register_script(_LUA_REHYDRATE)
        self._put_state = client.register_script(_LUA_PUT_STATE)
        self._heartbeat = client.register_script(_LUA_HEARTBEAT)
        #: This node as the heartbeat describes it (``from_settings``: its SIP listeners).
        self.address = ""
        self.started_at: float | None = None  # the first heartbeat's ``now``
        self._states = client.register_script(_LUA_STATES)
        # The last card_states() answer: (card ids, states version, states).
        self._states_last: tuple[tuple[str, ...], str, dict[str, CardStateRecord]] = ((), "", {})
        self._put_registrations = client.register_script(_LUA_PUT_REGISTRATIONS)
        # Card usage read or written here, kept until another node announces a change
        # of the card (redis_cache.py): selection then costs no round trip.
        self.channel = f"{prefix}:usage"
        self.cache = UsageCache(
            client,
            self.channel,
            apply=lambda snap, day, ver, fields: _apply_delta(
                snap, day, ver, fields, self.outcome_window
            ),
        )
        self.cache.enabled = usage_cache
        # /health: opened when Redis is not reached, closed by a PING from a
        # worker thread. It only reports here: a refused connection already fails at once.
        self.guard = StoreGuard(self._probe, unavailable, name="redis")

    # --- plumbing -------------------------------------------------------------------

    def close(self) -> None:
        """Read what the last finish answered, then close the client's connections."""
        self._collect()
        self._drop_lazy_conn()
        self.guard.stop()
        self.cache.close()
        self.client.close()

    def keepalive(self) -> None:
        """The periodic check of the usage cache's subscription (the 2 s sync); never raises.

        Also reads the answer of a finish sent since the last operation, so an idle
        node learns within the sync's period that it did not reach Redis (kept then).
        """
        self._collect()
        self.cache.keepalive()

    def _probe(self) -> None:
        """The guard's probe (a worker thread): raises while Redis does not answer."""
        self.client.ping()

    def ping(self) -> bool:
        """Whether Redis answers (health checks); never raises."""
        try:
            return bool(self.client.ping())
        except RedisError:
            return False

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Redis errors (refused, reset, timeout, script error) become StoreUnavailable.

        The answer of a finish sent earlier is read first (``_collect``): every
        command this store sends reaches Redis after it.
        """
        if self._lazy is not None:
            self._collect()
        try:
            yield
        except RedisError as exc:
            if isinstance(exc, RedisConnectionError | RedisTimeoutError):
                self.guard.trip(f"{type(exc).__name__}: {exc}")
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    def _settle(self, now: float) -> None:
        """Replay lost closes, release lost reservations (see ``unclosed``, ``uncertain``).

        A command buffered by a hung server may run after this instance's next
        commands (they use another connection), so an entry whose release found
        nothing is kept and retried until ``UNCERTAIN_SECONDS`` (caller time)
        have passed since the attempt. Redis still unreachable: raises
        StoreUnavailable (the caller fails closed); any other error drops the
        entry, so one bad entry can never block every later operation.

        A :meth:`recover` that could not reach Redis runs first: until it has,
        this instance holds no reservation of its own (every operation failed),
        so it can only orphan what an earlier run of this node left open.
        """
        if self._recover_at is not None:
            try:
                self._recover(self._recover_at)
            except StoreUnavailable as exc:
                if _unreachable(exc):
                    raise
            self._recover_at = None
        for call_id, (mode, at, kwargs) in list(self._unclosed.items()):
            try:
                self._run_close(call_id, mode, at, **kwargs)  # None if it had run after all
            except StoreUnavailable as exc:
                if _unreachable(exc):
                    raise
            self._unclosed.pop(call_id, None)
        for call_id, started in list(self._uncertain.items()):
            try:
                released = self._run_close(call_id, "release", now, failed=False)
            except StoreUnavailable as exc:
                if _unreachable(exc):
                    raise
                released = call_id
            if released is not None or now - started >= UNCERTAIN_SECONDS:
                self._uncertain.pop(call_id, None)

    @property
    def _dirty(self) -> bool:
        if self._lazy is not None:
            self._collect()
        return bool(self._uncertain or self._unclosed or self._recover_at is not None)

    def settle(self, now: float) -> bool:
        """Replay what an outage left pending, if Redis answers; never raises.

        Every operation does this first anyway; the gateway also calls it on a
        timer (``HealthRunner``) so an idle instance does not keep a call "in
        use" in Redis after the outage. Returns False while Redis is unreachable.
        """
        if not self._dirty:
            return True
        try:
            self._settle(now)
        except StoreUnavailable:
            return False
        return True

    @property
    def pending(self) -> int:
        """Everything kept for Redis: lost reservations, closes, a deferred recover."""
        self._collect()
        return len(self._uncertain) + len(self._unclosed) + (self._recover_at is not None)

    def is_kept(self, call_id: str) -> bool:
        """Whether a release/finish of this call is kept for a replay."""
        return call_id in self._unclosed

    @property
    def uncertain(self) -> int:
        """Reservations sent when Redis failed, to be undone when it answers again."""
        return len(self._uncertain)

    @property
    def unclosed(self) -> int:
        """Releases/finishes that failed to reach Redis, to be replayed when it answers."""
        return len(self._unclosed)

    def _close_or_keep(
        self, call_id: str, mode: str, now: float, *, lazy: bool = False, **kwargs: Any
    ) -> str | None:
        """Close the reservation; if Redis is unreachable keep the close for a replay, raise.

        Settling what is already pending comes first, inside the same guard: a
        Redis still unreachable there must keep *this* close too. ``lazy``: see
        ``_run_close`` (a replay is never lazy).
        """
        try:
            if self._dirty:
                self._settle(now)
            return self._run_close(call_id, mode, now, lazy=lazy, **kwargs)
        except StoreUnavailable as exc:
            if _unreachable(exc):
                # Otherwise the call would stay "in use" in Redis until a recover().
                self._unclosed[call_id] = (mode, now, kwargs)
            raise

    def _card_keys(self, card: str) -> dict[str, str]:
        base = f"{self.prefix}:card:{card}:"
        return {w: base + w for w in ("starts", "inuse", "held", "meta", "outz", "state")}

    def _day_key(self, card: str, day_start: float) -> str:
        return f"{self.prefix}:card:{card}:day:{int(day_start)}"

    def _call_key(self, call_id: str) -> str:
        return f"{self.prefix}:call:{call_id}"

    def _open_key(self) -> str:
        return f"{self.prefix}:node:{self.node}:open"

    def timezone(self, card: str) -> str:
        """The IANA zone of the card's carrier day (UTC when unknown)."""
        carrier = self.card_carriers.get(card)
        return self.carrier_timezones.get(carrier, "UTC") if carrier else "UTC"

    def _day(self, card: str, now: float) -> tuple[float, float, int]:
        """(day start, day end, TTL of the day hash) of the card's carrier day at ``now``."""
        start, end = day_bounds(now, self.timezone(card))
        ttl = int(min(max(end - now, 0.0) + 3600.0, self.history_seconds)) + 1
        return start, end, ttl

    # --- reads ----------------------------------------------------------------------

    def card_usage(self, card_id: str, now: float) -> CardUsage:
        """``policies.quotas.CardUsage`` of the card at ``now`` (one atomic read)."""
        if self._dirty:
            self._settle(now)
        return self._usage(card_id, now).usage

    def _usage(self, card: str, now: float) -> _Snapshot:
        if self._lazy is not None:
            self._collect()  # the copy then holds this node's last finish
        start, _end, _ttl = self._day(card, now)
        cached = self.cache.get(card, start)
        if cached is not None:
            return cached.since(min(start, now - 3600.0))  # type: ignore[no-any-return]
        snap = self._snapshot(card, now)
        if not snap.hydrated and self.facts is not None:
            self.rehydrate(card, self.facts(card, now), now)
            snap = self._snapshot(card, now)
        return snap

    def _snapshot(self, card: str, now: float) -> _Snapshot:
        keys = self._card_keys(card)
        start, _end, _ttl = self._day(card, now)
        epoch = self.cache.ready()
        with self._guard():
            raw = self._read(
                keys=[
                    keys["starts"],
                    keys["inuse"],
                    keys["held"],
                    keys["meta"],
                    keys["outz"],
                    self._day_key(card, start),
                ],
                args=[repr(now), self.outcome_window],
            )
        return self._keep(card, raw, start, now, epoch)

    def _keep(
        self, card: str, raw: Sequence[Any], day_start: float, now: float, epoch: int | None
    ) -> _Snapshot:
        """Parse a script's snapshot of ``card`` and keep it in the usage cache if it may be."""
        snap = _parse(raw, min(day_start, now - 3600.0))
        if snap.held == 0 and (snap.hydrated or self.facts is None) and self.cache.still(epoch):
            self.cache.put(card, snap, int(snap.version), day_start)
        else:
            self.cache.forget(card)
        return snap

    def open_reservations(self, *, every_node: bool = False) -> list[tuple[str, str]]:
        """``(call_id, card)`` of every open reservation of this node (or of all), by call id."""
        with self._guard():
            if every_node:
                keys = list(self.client.scan_iter(match=f"{self.prefix}:node:*:open", count=500))
            else:
                keys = [self._open_key()]
            call_ids = sorted({m.decode() for k in keys for m in self.client.smembers(k)})
            pipe = self.client.pipeline(transaction=False)
            for call_id in call_ids:
                pipe.hget(self._call_key(call_id), "card")
            cards = pipe.execute()
        return [(c, k.decode()) for c, k in zip(call_ids, cards, strict=True) if k is not None]

    def usage_facts(self, card: str, now: float, *, window: int | None = None) -> CardUsageFacts:
        """Aggregated facts (the shape :meth:`SQLiteStore.usage` returns), for reports."""
        if self._dirty:
            self._settle(now)
        snap = self._usage(card, now)
        usage = snap.usage
        start, _end, _ttl = self._day(card, now)
        starts = usage.call_starts
        upto = starts.bisect_right(now)  # the starts up to now, counted by bisection
        size = self.outcome_window if window is None else window
        recent = usage.recent_outcomes[-size:] if size > 0 else ()
        shorts = snap.shorts[-size:] if size > 0 else ()
        streak = 0
        for outcome in reversed(recent):
            if not outcome.failed:
                break
            streak += 1
        answered = [o for o in recent if o.answered]
        short = sum(1 for o, flag in zip(recent, shorts, strict=True) if o.answered and flag)
        return CardUsageFacts(
            card=card,
            now=now,
            calls_last_minute=upto - starts.bisect_right(now - 60.0),
            calls_last_hour=upto - starts.bisect_right(now - 3600.0),
            calls_today=max(0, upto - starts.bisect_left(start)),
            concurrent=usage.in_use,
            last_start_at=starts[upto - 1] if upto else None,
            talk_seconds_today=usage.talk_seconds_today,
            distinct_callees_today=len(usage.callees_today),
            window_size=size,
            window_calls=len(recent),
            window_answered=len(answered),
            window_short=short,
            consecutive_failures=streak,
        )

    # --- writes ---------------------------------------------------------------------

    def reserve(
        self,
        card: str,
        call_id: str,
        callee: str,
        now: float,
        *,
        profile: QuotaProfile | None = None,
        admit: Callable[[CardUsage], None] | None = None,
        agent: str = "",
    ) -> None:
        """Check the card's limits and commit the call start, in one Lua script.

        Raises :class:`QuotaExceeded` (nothing written) when ``profile`` would
        be broken, :class:`ReservationError` when the call already holds a
        reservation or already tried this card, :class:`StoreUnavailable` when
        Redis cannot answer. ``admit`` (any callable over the usage; raise to
        refuse) runs in Python on a snapshot; the script then commits only if
        the card did not change since (optimistic, retried).
        """
        if profile is not None and profile.night_window is not None:
            night = would_exceed(
                _night_only(profile.night_window), CardUsage(), self.timezone(card), callee, now
            )
            if night is not None:
                raise QuotaExceeded(card, night)
        if self._dirty:
            self._settle(now)
        hydrated_once = False
        for _ in range(self.max_retries):
            expect = ""
            if admit is not None:
                snap = self._snapshot(card, now)
                usage, expect, hydrated = snap.usage, snap.version, snap.hydrated
                if not hydrated and self.facts is not None and not hydrated_once:
                    self.rehydrate(card, self.facts(card, now), now)
                    hydrated_once = True
                    continue
                admit(usage)
            reply = self._run_reserve(card, call_id, callee, now, profile, agent, expect)
            status = reply[0]
            if status == b"OK":
                return
            if status == b"COLD":
                if self.facts is None or hydrated_once:
                    raise StoreUnavailable(f"card {card}: usage could not be rehydrated")
                self.rehydrate(card, self.facts(card, now), now)
                hydrated_once = True
                continue
            if status == b"STALE":
                continue
            if status == b"EXCEEDED" and profile is not None:
                _start, end, _ttl = self._day(card, now)
                raise QuotaExceeded(card, _exhausted(reply, profile, now, end))
            if status == b"HELD":
                raise ReservationError(
                    f"call {call_id!r} already holds a reservation on {reply[1].decode()!r}"
                )
            if status == b"TRIED":
                raise ReservationError(f"call {call_id!r} already tried card {card!r}")
            raise StoreUnavailable(f"redis: unexpected reserve answer {status!r}")
        raise StoreUnavailable(f"reservation on {card} lost {self.max_retries} races in a row")

    def _run_reserve(
        self,
        card: str,
        call_id: str,
        callee: str,
        now: float,
        profile: QuotaProfile | None,
        agent: str,
        expect: str,
    ) -> list[bytes]:
        keys = self._card_keys(card)
        start, _end, day_ttl = self._day(card, now)
        day_key = self._day_key(card, start)
        call_key = self._call_key(call_id)
        args: list[Any] = [
            card,
            call_id,
            callee,
            repr(now),
            self.node,
            agent,
            repr(start),
            day_key,
            repr(min(start, now - 3600.0)),
            repr(now - self.history_seconds),
            int(self.history_seconds),
            day_ttl,
            self.outcome_window,
            "1" if self.facts is not None else "0",
            expect,
            "1" if profile is not None else "0",
            int(self.tried_ttl_seconds),
            _flatten(profile) if profile is not None else "",
            self.channel,
        ]
        epoch = self.cache.ready()
        args.append("1" if epoch is not None else "0")
        have = self.cache.current(card, start) if epoch is not None else None
        args.append("" if have is None else str(have))
        try:
            reply = self._eval_reserve(keys, day_key, call_key, args)
        except StoreUnavailable as exc:
            if _unreachable(exc):
                # The script may have run before the connection failed: undo it once
                # Redis answers again (the caller answered 503, no INVITE left).
                self._uncertain[call_id] = now
            raise
        if reply and reply[0] == b"OK":
            if len(self._own_cards) >= _OWN_CARDS_MAX:
                self._own_cards.clear()  # (closes then read the whole card: still right)
            self._own_cards[call_id] = card
        if len(reply) == 4 and reply[0] == b"OK" and reply[2] == b"D":
            # The copy was the version just before: apply this reservation to it (the
            # fields of the script's announcement) instead of reading the card again.
            own = [b"R", day_key.encode(), args[3].encode(), callee.encode()]
            if not (
                self.cache.still(epoch) and self.cache.advance(card, int(reply[3]), own, start)
            ):
                self.cache.forget(card)
            return reply[:2]
        if reply and isinstance(reply[-1], list):
            # The card's usage after the reservation (or at the refusal): kept for selection.
            self._keep(card, reply.pop(), start, now, epoch)
        elif reply and reply[0] == b"OK":
            self.cache.forget(card)  # (see _run_close)
        return reply

    def _eval_reserve(
        self, keys: dict[str, str], day_key: str, call_key: str, args: list[Any]
    ) -> list[bytes]:
        with self._guard():
            reply: list[bytes] = self._reserve(
                keys=[
                    keys["starts"],
                    keys["inuse"],
                    keys["held"],
                    keys["meta"],
                    keys["outz"],
                    day_key,
                    call_key,
                    f"{call_key}:tried",
                    self._open_key(),
                ],
                args=args,
            )
        return reply

    def _run_close(
        self,
        call_id: str,
        mode: str,
        now: float,
        *,
        answered: bool = False,
        talk_seconds: float = 0.0,
        short: bool = False,
        failed: bool = False,
        only_node: str = "",
        unless_alive: str = "",
        lazy: bool = False,
    ) -> str | None:
        """Run the close script; its card, or None when Redis held no such reservation.

        ``lazy`` (a finish of this node's own reservation): the script is sent and its
        answer read later (``_collect``); the card returned is the one reserved.
        """
        if self._lazy is not None:
            self._collect()  # so ``have`` below is the version of a copy that is current
        epoch = self.cache.ready() if not only_node else None
        card_of = self._own_cards.pop(call_id, None)
        have = None
        if epoch is not None and card_of is not None:
            have = self.cache.current(card_of, self._day(card_of, now)[0])
        keys = [self._call_key(call_id)]
        args = [
            self.prefix,
            call_id,
            mode,
            repr(now),
            "1" if answered else "0",
            repr(float(talk_seconds)),
            "1" if short else "0",
            "1" if failed else "0",
            int(self.history_seconds),
            self.outcome_window,
            only_node,
            self.channel,
            "1" if epoch is not None else "0",
            unless_alive,
            "" if have is None else str(have),
        ]
        if lazy and card_of is not None:
            flags = {
                "answered": answered,
                "talk_seconds": talk_seconds,
                "short": short,
                "failed": failed,
            }
            with self._guard():
                conn = self._lazy_conn
                if conn is None:
                    # (a script Redis does not hold yet would make the first answer NOSCRIPT)
                    self._close.sha = self.client.script_load(self._close.script)
                    conn = self._lazy_conn = self.client.connection_pool.get_connection()
                try:
                    conn.send_command("EVALSHA", self._close.sha, len(keys), *keys, *args)
                except RedisError:
                    self._drop_lazy_conn()
                    raise
            self._lazy = _LazyClose(call_id, mode, now, flags, card_of, epoch)
            return card_of
        with self._guard():
            reply = self._close(keys=keys, args=args)
        return self._closed(reply, now, card_of, epoch)

    def _closed(
        self, reply: list[Any], now: float, card_of: str | None, epoch: int | None
    ) -> str | None:
        """What the close script answered, applied to this node's copy; the card or None."""
        if reply[0] == b"NONE":
            return None
        card = str(reply[1].decode())
        if len(reply) > 5 and reply[3] == b"D":
            # The copy was current: the close applied to it like an announcement.
            start, _end, _ttl = self._day(card, now)
            if not (
                card == card_of
                and self.cache.still(epoch)
                and self.cache.advance(card, int(reply[4]), list(reply[5:]), start)
            ):
                self.cache.forget(card)
            return card
        if len(reply) == 4:
            # The card's usage after the close, kept if the call's day is still today.
            start, _end, _ttl = self._day(card, now)
            if reply[2].decode() == self._day_key(card, start):
                self._keep(card, reply[3], start, now, epoch)
                return card
        # why: this node's own announcement may not have arrived yet; never serve
        # a copy older than a write made here.
        self.cache.forget(card)
        return card

    def _collect(self) -> None:
        """Read the answer of the finish sent lazily; never raises.

        An answer that cannot be read (the connection failed or timed out): the
        finish is run again at once on a new connection (the script may have run; a
        close that ran finds nothing to close the second time), and kept for a
        replay (``unclosed``) if Redis does not answer then. A script Redis no longer
        holds (restarted, flushed) is loaded and the finish run again at once. Any
        other error drops the finish, as a refused synchronous finish is dropped
        (logged); an answer of an unexpected shape is logged and the card's copy
        dropped (it is read inside another operation).
        """
        close, self._lazy = self._lazy, None  # (what runs below sends nothing lazily)
        if close is None:
            return
        try:
            reply = self._lazy_conn.read_response()
        except NoScriptError:
            self._replay(close)
            return
        except ResponseError as exc:
            log.warning("redis.finish.failed", key=close.call_id, kept=False, error=str(exc))
            self.cache.forget(close.card)
            return
        except (RedisError, OSError) as exc:
            # The common cause: a server that closed the idle connection (``timeout``
            # in redis.conf).
            self._drop_lazy_conn()
            log.info("redis.finish.resent", error=f"{type(exc).__name__}: {exc}")
            self.cache.forget(close.card)
            self._replay(close)
            return
        try:
            self._closed(reply, close.now, close.card, close.epoch)
        except (IndexError, TypeError, ValueError, AttributeError) as exc:
            # why: read inside another operation's guard, an answer of an unexpected
            # shape must not fail that operation (the close ran).
            log.warning("redis.finish.unreadable", key=close.call_id, error=repr(exc))
            self.cache.forget(close.card)

    def _replay(self, close: _LazyClose) -> None:
        """Run one lazily sent finish again, synchronously (its script was missing, or its
        answer was lost: a close that ran finds nothing to close the second time)."""
        self._own_cards[close.call_id] = close.card
        try:
            self._close_or_keep(close.call_id, close.mode, close.now, **close.flags)
        except StoreUnavailable as exc:
            log.warning(
                "redis.finish.failed",
                key=close.call_id,
                kept=self.is_kept(close.call_id),
                error=str(exc),
            )

    def _drop_lazy_conn(self) -> None:
        conn, self._lazy_conn = self._lazy_conn, None
        if conn is not None:
            conn.disconnect()
            self.client.connection_pool.release(conn)

    def release(self, call_id: str, now: float, *, failed: bool = True) -> str | None:
        """Undo the call's open reservation (failed before the callee was alerted).

        The start stops counting; with ``failed`` (a card-level failure) it still
        feeds the consecutive-failures streak. Returns the card, or None.
        """
        return self._close_or_keep(call_id, "release", now, failed=failed)

    def finish(
        self,
        call_id: str,
        now: float,
        *,
        answered: bool,
        talk_seconds: float = 0.0,
        short: bool | None = None,
        failed: bool = False,
        answered_at: float | None = None,
    ) -> str | None:
        """Record the outcome of the call's open reservation; return its card (or None).

        With ``lazy_finish`` (the default) the script is sent and this returns the
        card this node reserved without waiting; the answer is read before the
        store's next command (a close Redis finds nothing to do for changes nothing).
        ``short`` defaults to "answered and talked less than ``short_call_seconds``".
        ``answered_at`` is accepted for the interface; answer times (frequency
        caps) are read from the SQLite store, not from here.
        """
        if short is None:
            short = answered and talk_seconds < self.short_call_seconds
        return self._close_or_keep(
            call_id,
            "finish",
            now,
            answered=answered,
            talk_seconds=talk_seconds,
            short=bool(short),
            failed=failed,
            lazy=self.lazy_finish,
        )

    def recover(self, now: float) -> int:
        """This node's reservations left open by a crash become orphaned starts.

        Orphans still count as call starts (over-count, never under-count) but no
        longer as calls in use. Call once at startup, before taking traffic.
        If Redis cannot be reached the recovery is kept and runs before the
        next operation that reaches it (StoreUnavailable is raised now).
        """
        try:
            count = self._recover(now)
        except StoreUnavailable as exc:
            if _unreachable(exc):
                self._recover_at = now
            raise
        self._recover_at = None
        return count

    def _recover(self, now: float) -> int:
        with self._guard():
            call_ids = [m.decode() for m in self.client.smembers(self._open_key())]
        count = 0
        stale: list[str] = []
        for call_id in call_ids:
            if self._run_close(call_id, "orphan", now, only_node=self.node) is None:
                stale.append(call_id)  # its call key expired: nothing left to close
            else:
                count += 1
        if stale:
            with self._guard():
                self.client.srem(self._open_key(), *stale)
        return count

    # --- node heartbeats ------------------------------------------------------------

    def _alive_key(self, node: str) -> str:
        return f"{self.prefix}:nodes:{node}:alive"

    def _info_key(self, node: str) -> str:
        return f"{self.prefix}:nodes:{node}:info"

    def heartbeat(self, now: float, *, ttl: int = HEARTBEAT_TTL) -> list[str]:
        """Renew this node's liveness (``ttl`` seconds) and description; the dead nodes.

        The description: name, SIP address, started_at, the time of this beat and
        the calls in progress (open reservations). Returns the registered nodes
        whose liveness expired (their reservations are :meth:`reap`'s). Raises
        StoreUnavailable.
        """
        if self.started_at is None:
            self.started_at = now
        with self._guard():
            dead = self._heartbeat(
                keys=[
                    self._alive_key(self.node),
                    self._info_key(self.node),
                    f"{self.prefix}:nodes",
                    self._open_key(),
                ],
                args=[
                    self.prefix,
                    self.node,
                    ttl,
                    NODE_INFO_SECONDS,
                    self.address,
                    repr(self.started_at),
                    repr(now),
                ],
            )
        return sorted(d.decode() for d in dead if d.decode() != self.node)

    def reap(self, node: str, now: float) -> int:
        """Orphan a dead node's open reservations (still counted as starts, no longer in use).

        Each close checks, atomically, that ``node``'s heartbeat is still gone: a
        node that came back keeps its calls. Once none is left the node leaves
        the registry (its description stays for the operator). Returns how many
        were orphaned. Raises StoreUnavailable.
        """
        if node == self.node:
            return 0
        open_key = f"{self.prefix}:node:{node}:open"
        alive = self._alive_key(node)
        with self._guard():
            call_ids = [m.decode() for m in self.client.smembers(open_key)]
        count = 0
        for call_id in sorted(call_ids):
            if self._run_close(call_id, "orphan", now, only_node=node, unless_alive=alive):
                count += 1
        with self._guard():
            if self.client.exists(alive):
                return count
            left = [m.decode() for m in self.client.smembers(open_key)]
            stale = [c for c in left if not self.client.exists(self._call_key(c))]
            if stale:
                self.client.srem(open_key, *stale)
            if len(stale) == len(left):
                self.client.srem(f"{self.prefix}:nodes", node)
        if count:
            log.warning("cluster.node.reaped", node=node, orphaned=count, by=self.node)
        return count

    def nodes(self) -> list[dict[str, Any]]:
        """Every node Redis knows of (registered or described in the last day), by name.

        Each: ``node``, ``address``, ``started_at``, ``at`` (last heartbeat, the
        node's clock), ``calls`` (open reservations then), ``alive`` (its
        liveness key has not expired) and ``open`` (its reservations open now).
        Raises StoreUnavailable.
        """
        with self._guard():
            registered = {m.decode() for m in self.client.smembers(f"{self.prefix}:nodes")}
            described = {
                k.decode().removeprefix(f"{self.prefix}:nodes:").removesuffix(":info")
                for k in self.client.scan_iter(match=f"{self.prefix}:nodes:*:info", count=500)
            }
            out = []
            for node in sorted(registered | described):
                raw = self.client.hgetall(self._info_key(node))
                info = {k.decode(): v.decode() for k, v in raw.items()}
                out.append(
                    {
                        "node": node,
                        "address": info.get("address", ""),
                        "started_at": _opt_float(raw.get(b"started_at")),
                        "at": _opt_float(raw.get(b"at")),
                        "calls": int(info.get("calls", "0")),
                        "alive": bool(self.client.exists(self._alive_key(node))),
                        "open": int(self.client.scard(f"{self.prefix}:node:{node}:open")),
                    }
                )
        return out

    # --- rehydration after a Redis restart without persistence ----------------------

    def is_hydrated(self, card: str) -> bool:
        """Whether the card's keys are live (False after a Redis restart or long idleness)."""
        with self._guard():
            return bool(self.client.hexists(self._card_keys(card)["meta"], "hyd"))

    def rehydrate(
        self, card: str, facts: CardUsageFacts, now: float, *, force: bool = False
    ) -> bool:
        """Rebuild a cold card's window from durable ``facts``; False if it was warm.

        The facts hold counts, not times, so the window written is the most
        conservative one they allow: the last minute's calls all at the last
        start, the rest of the hour's at ``now - 60`` (or the last start), the
        rest of the day's at ``now - 3600`` (not before the day began); the
        day's distinct callees as anonymous ones, its talk seconds; open calls
        as in-use slots held for ``rehydrate_hold_seconds``; the rolling sample
        with its failure streak last. Limits computed on it can only be as
        tight as or tighter than on the real history. Atomic; applied only to
        a cold card unless ``force``.
        """
        start, _end, day_ttl = self._day(card, now)
        last = facts.last_start_at if facts.last_start_at is not None else now
        minute = max(0, facts.calls_last_minute)
        hour = max(0, facts.calls_last_hour - minute)
        day = max(0, facts.calls_today - facts.calls_last_hour)
        starts = [repr(min(last, now))] * minute
        starts += [repr(min(now - 60.0, last))] * hour
        starts += [repr(max(start, min(now - 3600.0, last)))] * day
        window = min(facts.window_calls, self.outcome_window)
        failures = min(facts.consecutive_failures, window)
        good = window - failures
        answered = min(facts.window_answered, good)
        short = min(facts.window_short, answered)
        at = repr(min(last, now))
        records: list[list[str | int]] = []  # [start, talk, end, flags]
        for i in range(good):
            is_answered = i < answered
            is_short = is_answered and i < short
            talk = 0.0 if is_short or not is_answered else 3600.0
            flags = (_ANSWERED if is_answered else 0) | (_SHORT if is_short else 0)
            records.append([at, repr(talk), repr(now), flags])
        records += [[at, "0.0", repr(now), _FAILED]] * failures
        plan = {
            "starts": starts,
            "callees": max(0, facts.distinct_callees_today),
            "talk": repr(float(facts.talk_seconds_today)),
            "held": [repr(now + self.rehydrate_hold_seconds)] * max(0, facts.concurrent),
            "outcomes": records,
        }
        keys = self._card_keys(card)
        with self._guard():
            applied = self._rehydrate(
                keys=[
                    keys["starts"],
                    keys["held"],
                    keys["meta"],
                    keys["outz"],
                    self._day_key(card, start),
                ],
                args=[
                    int(self.history_seconds),
                    day_ttl,
                    "1" if force else "0",
                    json.dumps(plan),
                    self.outcome_window,
                    self.channel,
                    card,
                ],
            )
        self.cache.forget(card)
        return bool(applied)

    def rehydrate_cold(self, now: float, cards: Sequence[str] | None = None) -> int:
        """Rehydrate every cold card (default: the configured ones) from ``facts``.

        Done at startup so the window is rebuilt before the first call or
        wallboard read (they would also do it lazily). Returns how many were cold.
        """
        if self.facts is None:
            return 0
        count = 0
        for card in self.card_carriers if cards is None else cards:
            if not self.is_hydrated(card):
                count += self.rehydrate(card, self.facts(card, now), now)
        return count

    # --- card state (shared hot copy) ----------------------------------------------

    def put_card_state(self, card: StoredCard) -> bool:
        """Publish the card's state; a state older (``since``) than the stored one is ignored.

        Returns whether it was applied. Instances writing concurrently converge
        on the most recent transition; SQLite keeps the durable history.
        """
        with self._guard():
            applied = self._put_state(
                keys=[self._card_keys(card.id)["state"], self._states_version_key()],
                args=[
                    repr(float(card.since)),
                    int(self.state_ttl_seconds),
                    card.state,
                    _opt(card.reason),
                    _opt(card.probation_until),
                    _opt(card.profile_override),
                    _opt(card.resume_at),
                ],
            )
        return bool(applied)

    def _states_version_key(self) -> str:
        return f"{self.prefix}:states:ver"

    def card_states(
        self, card_ids: Sequence[str], *, touch: bool = False
    ) -> dict[str, CardStateRecord]:
        """The shared states of the given cards (cards Redis knows nothing of are left out).

        One script call; when no instance changed a state since the last call
        for the same cards, only the states' version travels. With ``touch``
        their TTL is renewed: a state every running instance keeps reading (a
        long suspension) never expires while any of them runs.
        """
        ids = tuple(card_ids)
        last_ids, last_ver, last = self._states_last
        known = last_ver if last_ids == ids else ""
        with self._guard():
            reply = self._states(
                keys=[self._states_version_key(), *(self._card_keys(c)["state"] for c in ids)],
                args=[
                    known,
                    int(self.state_ttl_seconds) if touch else "",
                    int(self.state_ttl_seconds),
                ],
            )
        version = reply[0].decode()
        if len(reply) == 1:
            return dict(last)
        rows = reply[1:]
        out: dict[str, CardStateRecord] = {}
        for card, row in zip(card_ids, rows, strict=True):
            state, reason, since, probation, override, resume = row
            if state is None or since is None:
                continue
            out[card] = CardStateRecord(
                card=card,
                state=state.decode(),
                reason=_opt_str(reason),
                since=float(since),
                probation_until=_opt_float(probation),
                profile_override=_opt_str(override),
                resume_at=_opt_float(resume),
            )
        self._states_last = (ids, version, out) if version else ((), "", {})
        return dict(out)

    # --- registrations (the registrar's bindings) -----------------------------------

    def _registrations_key(self, node: str | None) -> str:
        return f"{self.prefix}:node:{node or self.node}:registrations"

    def _shared_registration_key(self, aor: str) -> str:
        return f"{self.prefix}:registration:{aor.lower()}"

    def save_registrations(
        self,
        aor: str,
        rows: Sequence[StoredRegistration],
        now: float,
        *,
        node: str | None = None,
    ) -> None:
        """Replace the bindings of ``aor`` (none: unregistered) in this node's hash and
        in the AOR's cluster-wide copy (one script).

        The hash's TTL is raised to cover the longest binding written (never
        lowered by a shorter one), so it lives while anything is registered
        and goes away by itself when nothing is; the shared copy lives as long as
        its longest binding. The last node to write an AOR owns its shared copy (an
        agent registers through one node at a time). Raises StoreUnavailable.
        """
        value = json.dumps([r.as_json() for r in rows], separators=(",", ":")) if rows else ""
        ttl = max((int(r.expires_at - now) + 60 for r in rows), default=0)
        with self._guard():
            self._put_registrations(
                keys=[self._registrations_key(node), self._shared_registration_key(aor)],
                args=[aor, value, max(ttl, 0)],
            )

    def registrations_of(
        self, aor: str, now: float, *, node: str | None = None
    ) -> list[StoredRegistration]:
        """The live bindings of ``aor`` as the cluster last saw them, whichever node wrote
        them (``node`` is not used: the copy is cluster-wide). One GET.

        What a node reads when an agent it does not know reaches it — the node the
        agent registered through died and the balancer moved the agent here, or a
        sibling worker took the REGISTER. Raises StoreUnavailable.
        """
        del node
        with self._guard():
            raw = self.client.get(self._shared_registration_key(aor))
        if not raw:
            return []
        try:
            items = json.loads(raw)
        except ValueError:
            return []
        rows = [
            r
            for r in (StoredRegistration.from_json(i) for i in (items or []))
            if r is not None and r.expires_at > now
        ]
        return sorted(rows, key=lambda r: (r.position, r.contact))

    def load_registrations(
        self, now: float, *, node: str | None = None
    ) -> list[StoredRegistration]:
        """Every binding of this node still live at ``now``; AORs left with none are removed."""
        key = self._registrations_key(node)
        with self._guard():
            raw = self.client.hgetall(key)
        out: list[StoredRegistration] = []
        dead: list[bytes] = []
        for field, value in sorted(raw.items()):
            try:
                items = json.loads(value)
            except ValueError:
                items = None
            rows = [
                r
                for r in (StoredRegistration.from_json(i) for i in (items or []))
                if r is not None and r.expires_at > now
            ]
            if not rows:
                dead.append(field)
            out.extend(sorted(rows, key=lambda r: (r.position, r.contact)))
        if dead:
            try:
                with self._guard():
                    self.client.hdel(key, *dead)
            except StoreUnavailable:
                pass  # removed at the next load
        return out


def sqlite_facts(store: SQLiteStore, timezone_of: Callable[[str], str]) -> FactsSource:
    """A :data:`FactsSource` over the SQLite store's per-card usage (``usage()``).

    Only useful when the gateway also records its call starts in that store;
    ``timezone_of`` gives a card's carrier zone (``RedisStore.timezone``).
    """

    def facts(card: str, now: float) -> CardUsageFacts:
        start, _ = day_bounds(now, timezone_of(card))
        return store.usage(card, now, day_start_at=start, window=store.outcome_window)

    return facts


class SharedCardRepository:
    """``gateway.store.CardRepository``: SQLite keeps the history, Redis the shared state.

    ``save_transition`` writes SQLite first (durable, with evidence), then
    publishes the state to Redis for the other instances. If Redis is down the
    publication is kept and retried on the next call (the transition is not
    written twice). ``load_cards`` / ``upsert_card`` overlay the shared state on
    the stored rows, so ``CardManager.sync_from_store`` adopts what another
    instance decided; :meth:`sync` is what the gateway runs on a timer.

    Which state wins: the shared one when it is newer (``since``), and always
    over a row this SQLite file never saw a transition of (a card just
    inserted "active since now" by a new instance must not undo a suspension
    another instance shared an hour ago). A stored transition newer than the
    shared state (Redis restarted empty, or a publication lost with a crash)
    is published again, so the instances converge on the latest one.
    """

    def __init__(self, store: SQLiteStore, shared: RedisStore) -> None:
        self.store = store
        self.shared = shared
        self._pending: dict[str, StoredCard] = {}
        self._fresh: dict[str, bool] = {}  # card → no transition in this SQLite file
        self._strict = False
        self._touch = False
        self._touched_at: float | None = None  # caller's clock

    def _is_fresh(self, card_id: str) -> bool:
        fresh = self._fresh.get(card_id)
        if fresh is None:
            fresh = self._fresh[card_id] = not self.store.transitions(card_id)
        return fresh

    def _overlay(self, rows: list[StoredCard]) -> list[StoredCard]:
        self._publish_pending()
        try:
            states = self.shared.card_states([r.id for r in rows], touch=self._touch)
        except StoreUnavailable:
            if self._strict:
                raise
            return rows
        out = []
        for row in rows:
            hot = states.get(row.id)
            if hot is None or hot.since <= row.since:
                if self._is_fresh(row.id):
                    if hot is None:
                        out.append(row)
                        continue
                else:
                    if hot is None or hot.since < row.since:
                        self._republish(row)  # Redis lost it, or never got it
                    out.append(row)
                    continue
            out.append(
                StoredCard(
                    id=row.id,
                    carrier=row.carrier,
                    number=row.number,
                    pool=row.pool,
                    priority=row.priority,
                    quota_profile=row.quota_profile,
                    state=hot.state,
                    reason=hot.reason,
                    since=hot.since,
                    probation_until=hot.probation_until,
                    profile_override=hot.profile_override,
                    resume_at=hot.resume_at,
                )
            )
        return out

    def _republish(self, row: StoredCard) -> None:
        try:
            self.shared.put_card_state(row)
        except StoreUnavailable:
            self._pending.setdefault(row.id, row)

    def _publish_pending(self) -> None:
        for card_id, card in list(self._pending.items()):
            try:
                self.shared.put_card_state(card)
            except StoreUnavailable:
                return
            del self._pending[card_id]

    @property
    def unpublished(self) -> int:
        """Card states saved in SQLite but not yet shared through Redis."""
        return len(self._pending)

    def upsert_card(self, card: StoredCard) -> StoredCard:
        """Insert or update the card in SQLite; return it with the newest shared state."""
        return self._overlay([self.store.upsert_card(card)])[0]

    def load_cards(self) -> list[StoredCard]:
        """Every stored card, with the newest shared state overlaid."""
        return self._overlay(self.store.load_cards())

    def save_transition(self, card: StoredCard, transition: TransitionRecord) -> None:
        """Record the transition durably, then share the card's new state."""
        self.store.save_transition(card, transition)
        self._fresh[card.id] = False
        self._pending[card.id] = card
        self._publish_pending()

    def sync(self, manager: CardManager, now: float) -> list[CardStateChanged]:
        """The periodic work of a gateway sharing Redis; never raises StoreUnavailable.

        Replays what a Redis outage left pending in the ledger (closes, a
        deferred recover), publishes kept card states, then lets ``manager``
        adopt the states other instances shared. While Redis cannot be read
        nothing is adopted: the stored rows alone could be older than what
        this instance already adopted from a peer.
        """
        self.shared.keepalive()
        if not self.shared.settle(now):
            return []
        self.beat(now)
        self._strict = True
        # The states' TTL is a month: renewing it hourly is plenty (not every 2 s).
        last = self._touched_at
        self._touch = last is None or not 0.0 <= now - last < STATE_TOUCH_SECONDS
        try:
            changed = manager.sync_from_store(now)
        except StoreUnavailable as exc:
            log.warning("cards.sync.store_unavailable", error=str(exc))
            return []
        finally:
            self._strict = False
        if self._touch:
            self._touched_at = now
        self._touch = False
        return changed

    def beat(self, now: float) -> None:
        """This node's heartbeat, then the reservations of nodes whose heartbeat is gone
        are orphaned (so a crashed node's calls do not stay "in use"); never raises."""
        try:
            dead = self.shared.heartbeat(now)
            for node in dead:
                self.shared.reap(node, now)
        except StoreUnavailable as exc:
            log.warning("cluster.heartbeat.failed", node=self.shared.node, error=str(exc))

    def close(self) -> None:
        """Close the Redis client (shared with the ledger; closing twice is harmless)."""
        self.shared.close()


def node_name(settings: Settings) -> str:
    """This instance's name in Redis: ``[mqtt] node``, else host and SIP listeners.

    Must be unique among the instances sharing Redis and stable across
    restarts (``recover`` orphans only its own node's reservations: a name
    shared by two running instances would orphan the other's live calls).
    """
    if settings.mqtt is not None:
        return settings.mqtt.node
    listen = ",".join(str(spec) for spec in settings.sip.listen)
    return f"{socket.gethostname()}/{listen}"


def from_settings(
    settings: Settings,
    *,
    node: str,
    store: SQLiteStore | None = None,
    prefix: str = "dialgate",
    timeout: float = 0.25,
) -> RedisStore:
    """The :class:`RedisStore` for ``[store] redis`` (raises ValueError when it is unset).

    ``node`` names this instance (``[mqtt] node``). With ``store`` (the SQLite
    store the gateway also records usage in) a card whose Redis keys were lost
    is rehydrated from it. Nothing is sent to Redis here; the first operation
    connects (and fails closed if it cannot).
    """
    url = settings.store.redis
    if url is None:
        raise ValueError("[store] redis is not set")
    shared = RedisStore(
        connect(url, timeout=timeout),
        node=node,
        prefix=prefix,
        card_carriers={c.id: c.carrier for c in settings.cards},
        carrier_timezones={c.name: c.timezone for c in settings.carriers},
    )
    shared.address = ",".join(str(spec) for spec in settings.sip.listen)
    if store is not None:
        shared.facts = sqlite_facts(store, shared.timezone)
    return shared


class MirroredLedger:
    """``UsageLedger``: Redis decides (shared, atomic), SQLite keeps the durable record.

    ``reserve`` runs the quota check and the write-ahead reservation in Redis,
    then records the same start in SQLite (no second quota check). If SQLite
    cannot record it, the Redis reservation is released and the error raised:
    a call is never placed without both records (fail closed). ``release`` and
    ``finish`` update SQLite first, then Redis; a Redis that cannot be reached
    then is logged, not raised — the store keeps the close and replays it when
    Redis answers again (next operation or :meth:`settle`), so a call's
    teardown never fails on Redis and no counter is lost. Usage reads come
    from Redis.

    Why: the SQLite rows are what the other policies read (per-callee
    frequency caps, agent limits) and what :func:`sqlite_facts` rebuilds a
    card's Redis window from after a Redis restart without persistence, so
    with this ledger such a restart resets no counter — provided the SQLite
    file holds every instance's calls (instances on one host sharing the WAL
    file). With one file per host, each holds only its own share; a card's
    rebuilt window is then a lower bound, so run Redis with AOF there.
    """

    def __init__(self, shared: RedisStore, store: SQLiteStore) -> None:
        self.shared = shared
        self.store = store

    def reserve(
        self,
        card: str,
        call_id: str,
        callee: str,
        now: float,
        *,
        profile: QuotaProfile | None = None,
        admit: Callable[[CardUsage], None] | None = None,
        agent: str = "",
    ) -> None:
        """Reserve in Redis (atomic check), then record the start in SQLite."""
        self.shared.reserve(card, call_id, callee, now, profile=profile, admit=admit, agent=agent)
        try:
            self.store.reserve(card, call_id, callee, now, agent=agent)
        except BaseException:
            try:
                self.shared.release(call_id, now, failed=False)
            except StoreUnavailable:
                if not self.shared.is_kept(call_id):  # replayed if kept, else retried
                    self.shared._uncertain[call_id] = now
            raise

    def _shared_close(self, op: str, call_id: str, close: Callable[[], str | None]) -> str | None:
        try:
            return close()
        except StoreUnavailable as exc:
            kept = self.shared.is_kept(call_id)
            log.warning(
                f"redis.{op}.deferred" if kept else f"redis.{op}.failed",
                key=call_id,  # the reservation key (internal), not the SIP Call-ID
                kept=kept,
                error=str(exc),
            )
            return None

    def release(self, call_id: str, now: float, *, failed: bool = True) -> str | None:
        """Undo the reservation in both stores; the card (from SQLite, else Redis).

        Raises StoreUnavailable only when SQLite failed (after Redis was updated).
        """
        durable_error: StoreUnavailable | None = None
        try:
            durable = self.store.release(call_id, now, failed=failed)
        except StoreUnavailable as exc:
            durable, durable_error = None, exc
        shared = self._shared_close(
            "release", call_id, lambda: self.shared.release(call_id, now, failed=failed)
        )
        if durable_error is not None:
            raise durable_error
        return durable if durable is not None else shared

    def finish(
        self,
        call_id: str,
        now: float,
        *,
        answered: bool,
        talk_seconds: float = 0.0,
        short: bool | None = None,
        failed: bool = False,
        answered_at: float | None = None,
    ) -> str | None:
        """Record the outcome in both stores (SQLite first: the durable one).

        Raises StoreUnavailable only when SQLite failed (after Redis was updated).
        """
        durable_error: StoreUnavailable | None = None
        try:
            durable = self.store.finish(
                call_id,
                now,
                answered=answered,
                talk_seconds=talk_seconds,
                short=short,
                failed=failed,
                answered_at=answered_at,
            )
        except StoreUnavailable as exc:
            durable, durable_error = None, exc
        shared = self._shared_close(
            "finish",
            call_id,
            lambda: self.shared.finish(
                call_id,
                now,
                answered=answered,
                talk_seconds=talk_seconds,
                short=short,
                failed=failed,
                answered_at=answered_at,
            ),
        )
        if durable_error is not None:
            raise durable_error
        return durable if durable is not None else shared

    def card_usage(self, card_id: str, now: float) -> CardUsage:
        """The shared usage (Redis), rehydrated from SQLite if the card's keys were lost."""
        return self.shared.card_usage(card_id, now)

    def recover(self, now: float) -> int:
        """Startup: orphan open reservations (SQLite, this node's in Redis), rehydrate cold cards.

        Orphans still count as starts (a crash can only over-count). Cards whose
        Redis keys were lost are rebuilt from SQLite now rather than on their
        first call. A Redis that cannot be reached does not stop the gateway:
        calls are refused (503) until it answers, and this recovery runs first
        then. Returns how many reservations were orphaned.
        """
        count = self.store.recover(now)
        try:
            count = self.shared.recover(now)
            self.shared.rehydrate_cold(now)
        except StoreUnavailable as exc:
            log.warning("redis.recover.deferred", node=self.shared.node, error=str(exc))
        return count

    def settle(self, now: float) -> bool:
        """Replay what a Redis outage left pending (see :meth:`RedisStore.settle`)."""
        return self.shared.settle(now)

    def close(self) -> None:
        """Close the Redis client."""
        self.shared.close()


def ledger_from_settings(settings: Settings, store: SQLiteStore, *, node: str) -> UsageLedger:
    """The gateway's ledger: ``store`` alone, or Redis mirrored to it when ``[store] redis`` is set.

    ``gateway.store.ledger_from_settings`` delegates here: the Redis side
    decides atomically for every instance, ``store`` keeps each start for the
    frequency and agent policies and for rehydration.
    """
    if settings.store.redis is None:
        return store
    return MirroredLedger(from_settings(settings, node=node, store=store), store)


if TYPE_CHECKING:
    from gateway.store.protocols import CardRepository, RegistrationStore

    def _satisfies(
        shared: RedisStore, mirrored: MirroredLedger, cards: SharedCardRepository
    ) -> tuple[UsageLedger, RegistrationStore, UsageLedger, CardRepository]:
        """mypy checks here that the Redis backends satisfy their protocols."""
        return shared, shared, mirrored, cards
