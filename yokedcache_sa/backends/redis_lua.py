"""The Lua scripts of the Redis backend: one per multi-key step, each one round trip.

See :mod:`yokedcache_sa.backends.redis` for the key layout they work on.
"""

from __future__ import annotations

import hashlib

__all__ = ["SCRIPTS", "SHAS"]

_LUA_HELPERS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live(m, now)
  for e in string.gmatch(m, ':(%d+);') do
    if tonumber(e) > now then return true end
  end
  return false
end
local function others(m, w, now)
  local out = {}
  for wid, e in string.gmatch(m or '', '([^:;]+):(%d+);') do
    if wid ~= w and tonumber(e) > now then out[#out + 1] = wid .. ':' .. e .. ';' end
  end
  return out
end
local function drop_writer(meta, field, w, now)
  local m = redis.call('HGET', meta, field)
  if not m then return end
  local out = others(m, w, now)
  if #out == 0 then redis.call('HDEL', meta, field)
  else redis.call('HSET', meta, field, table.concat(out)) end
end
local function epoch(meta, candidate)
  local ep = redis.call('HGET', meta, 'epoch')
  if not ep then
    redis.call('HSET', meta, 'epoch', candidate)
    ep = candidate
  end
  return ep
end
"""

# KEYS: entry, meta. ARGV: epoch candidate.
# -> {payload|nil, epoch, seq, max version of the entry's tags, flag (1 marked, 2 malformed)}
# KEYS: entry, meta, lock. ARGV: epoch candidate, lock token ('' = none), lock ttl ms.
# -> {payload|nil, epoch, seq, max version of the entry's tags, flag (1 marked, 2 malformed),
#     tag block, lock (1 taken, -1 held by another, 0 not asked or the entry is fresh)}
# The entry's framing is "<epoch>:<seq>\n<tag id>\n...\0<payload>"; epoch and seq repeat the
# signed header's, so the script can tell a fresh entry and only then skip the compute lock.
_FETCH = (
    _LUA_HELPERS
    + """
local meta = KEYS[2]
local v = redis.call('GET', KEYS[1])
local h = redis.call('HMGET', meta, 'epoch', 'seq')
local ep = h[1]
if not ep then
  redis.call('HSET', meta, 'epoch', ARGV[1])
  ep = ARGV[1]
end
local seq = tonumber(h[2] or '0')
local top, flag, block, body, fresh = 0, 0, '', false, false
if v then
  local i = string.find(v, '\\0', 1, true)
  local nl = i and string.find(v, '\\n', 1, true)
  local e_ep, e_seq = nil, nil
  if i and (not nl or nl > i) then nl = i end
  if i then e_ep, e_seq = string.match(string.sub(v, 1, nl - 1), '^(.*):(%d+)$') end
  if not e_ep then
    flag = 2
  else
    block = string.sub(v, nl + 1, i - 1)
    body = string.sub(v, i + 1)
    local fields = {}
    for tag in string.gmatch(block, '[^\\n]+') do
      fields[#fields + 1] = 'v:' .. tag
      fields[#fields + 1] = 'm:' .. tag
    end
    if #fields > 0 then
      local r = redis.call('HMGET', meta, unpack(fields))
      local now = nil
      for j = 1, #fields, 2 do
        local tv = tonumber(r[j] or '0')
        if tv > top then top = tv end
        if flag == 0 and r[j + 1] then
          now = now or now_ms()
          if live(r[j + 1], now) then flag = 1 end
        end
      end
    end
    fresh = flag == 0 and e_ep == ep and top <= tonumber(e_seq)
  end
end
local lock = 0
if ARGV[2] ~= '' and not fresh then
  if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then lock = 1 else lock = -1 end
end
if flag == 2 then body = false end
return {body, ep, seq, top, flag, block, lock}
"""
)

# KEYS: meta. ARGV: epoch candidate. -> {epoch, seq}
_OBSERVE = (
    _LUA_HELPERS
    + """
local ep = epoch(KEYS[1], ARGV[1])
return {ep, tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')}
"""
)

# KEYS: entry, meta, lock. ARGV: framed value, ttl ms (0 = none), epoch, seq, lock token,
# tag ids... -> 1 stored, 0 stale, -1 being written. Drops the compute lock if it holds it.
_STORE = (
    _LUA_HELPERS
    + """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then redis.call('DEL', KEYS[3]) end
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[3] then return 0 end
local s = tonumber(ARGV[4])
local now = now_ms()
for i = 6, #ARGV do
  local r = redis.call('HMGET', KEYS[2], 'v:' .. ARGV[i], 'm:' .. ARGV[i])
  if tonumber(r[1] or '0') > s then return 0 end
  if r[2] and live(r[2], now) then return -1 end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
else redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""
)

# KEYS: meta. ARGV: writer, lease ms, epoch candidate, bump (0/1), tag ids...
_BEGIN = (
    _LUA_HELPERS
    + """
local meta = KEYS[1]
epoch(meta, ARGV[3])
local now = now_ms()
local w = ARGV[1]
local mark = w .. ':' .. string.format('%d', now + tonumber(ARGV[2])) .. ';'
if ARGV[4] == '1' then
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  for i = 5, #ARGV do redis.call('HSET', meta, 'v:' .. ARGV[i], seq) end
end
for i = 5, #ARGV do
  local f = 'm:' .. ARGV[i]
  local out = others(redis.call('HGET', meta, f), w, now)
  out[#out + 1] = mark
  redis.call('HSET', meta, f, table.concat(out))
end
return 1
"""
)

# KEYS: meta. ARGV: writer, epoch candidate, tag ids... -> new seq
_END = (
    _LUA_HELPERS
    + """
local meta = KEYS[1]
epoch(meta, ARGV[2])
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local now = now_ms()
for i = 3, #ARGV do
  redis.call('HSET', meta, 'v:' .. ARGV[i], seq)
  drop_writer(meta, 'm:' .. ARGV[i], ARGV[1], now)
end
return seq
"""
)

# KEYS: meta. ARGV: writer, tag ids...
_RELEASE = (
    _LUA_HELPERS
    + """
local now = now_ms()
for i = 2, #ARGV do drop_writer(KEYS[1], 'm:' .. ARGV[i], ARGV[1], now) end
return 1
"""
)

# KEYS: lock. ARGV: token. Delete the lock only if this token holds it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

SCRIPTS = {
    "unlock": _UNLOCK,
    "fetch": _FETCH,
    "observe": _OBSERVE,
    "store": _STORE,
    "begin": _BEGIN,
    "end": _END,
    "release": _RELEASE,
}

SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in SCRIPTS.items()}
