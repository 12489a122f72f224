"""The Lua scripts RedisStore runs: each documents its keys, arguments and why.

Every script's keys share one hash tag, so a Redis Cluster runs it on one slot.
Pure text: no I/O, no redis import.
"""

# KEYS: rpm, tpm, cool, live. ARGV: rpm limit (0 = none), tpm limit (0 = none),
# estimated tokens, window ttl seconds, now (ms). Returns {ok, retry_after_ms} and,
# past the cooldown checks, the window's request and token counts (rate-limit headers).
# `live` is what the provider's headers last said (see LIVE): a limit it called
# exhausted refuses until its reset, and each reservation takes one request off what
# it said is left, so replicas stop before the provider would answer 429.
RESERVE = """
local cool = redis.call('PTTL', KEYS[3])
if cool > 0 then return {0, cool} end
local now = tonumber(ARGV[5])
local live = redis.call('HMGET', KEYS[4], 'req', 'req_until', 'tok', 'tok_until')
local wait = 0
for i = 1, 3, 2 do
  if live[i] and tonumber(live[i + 1]) > now and tonumber(live[i]) <= 0 then
    wait = math.max(wait, tonumber(live[i + 1]) - now)
  end
end
if wait > 0 then return {0, wait} end
local rpm_limit = tonumber(ARGV[1])
local tpm_limit = tonumber(ARGV[2])
local rpm = tonumber(redis.call('GET', KEYS[1]) or '0')
local tpm = tonumber(redis.call('GET', KEYS[2]) or '0')
if rpm_limit > 0 and rpm >= rpm_limit then return {0, -1, rpm, tpm} end
if tpm_limit > 0 and tpm + tonumber(ARGV[3]) > tpm_limit and tpm > 0 then
  return {0, -1, rpm, tpm}
end
if rpm_limit > 0 then
  rpm = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
if live[1] and tonumber(live[2]) > now then redis.call('HINCRBY', KEYS[4], 'req', -1) end
return {1, 0, rpm, tpm}
"""

# KEYS: live. ARGV: now (ms), then per limit (requests, tokens) remaining and reset ms,
# '' when the provider did not say. Each limit keeps its own deadline; the key lives
# until the later one (after a reset the provider's count starts afresh).
LIVE = """
local now = tonumber(ARGV[1])
local fields = {'req', 'tok'}
for i = 1, 2 do
  local left, reset = ARGV[2 * i], ARGV[2 * i + 1]
  if left ~= '' then
    redis.call('HSET', KEYS[1], fields[i], left, fields[i] .. '_until', now + tonumber(reset))
  end
end
local untils = redis.call('HMGET', KEYS[1], 'req_until', 'tok_until')
local last = math.max(tonumber(untils[1] or '0'), tonumber(untils[2] or '0'))
if last > now then redis.call('PEXPIRE', KEYS[1], last - now) else redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: busy (a sorted set: attempt id -> deadline ms). ARGV: attempt id, now (ms),
# lease ms. A lease that is never ended (a crashed replica) stops counting at its
# deadline, and whoever starts the next one sweeps it out.
BUSY = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: latency hash. ARGV: field ('ttft' or 'total'), sample ms, alpha, ttl seconds.
# An exponentially weighted moving average (decisions/strategy.py `ewma`), as a string:
# Lua numbers would come back truncated to integers.
LATENCY = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local sample = tonumber(ARGV[2])
local new = sample
if old then new = old + tonumber(ARGV[3]) * (sample - old) end
redis.call('HSET', KEYS[1], ARGV[1], tostring(new))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return tostring(new)
"""

# KEYS: cooldown key. ARGV: milliseconds. A shorter cooldown never shortens a longer one.
COOL = """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return tonumber(ARGV[1])
end
return left
"""

# KEYS: fail counter, open flag. ARGV: window ms, threshold, open ms.
FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  local left = redis.call('PTTL', KEYS[2])
  if left < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


# KEYS: spend, its once-marker. ARGV: limit, estimate (nano-dollars), ttl seconds,
# marker ttl ms. Returns {ok, spent}. Admits while the period has spent less than the
# limit: only the request admitted last may cross it, whatever the number of replicas
# (values stay below 2^53, exact in Lua's doubles: $9M per period). A call the client
# sends again after a lost reply (a failover) finds its marker and reserves nothing more.
RESERVE_SPEND = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, tonumber(redis.call('GET', KEYS[1]) or '0')}
end
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
if spent >= tonumber(ARGV[1]) then return {0, spent} end
spent = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
return {1, spent}
"""

# KEYS: the call's once-marker, then counters (a key may repeat). ARGV: marker ttl ms,
# then per counter: hash field ('' for a plain counter), amount, ttl seconds (0: keep).
# Returns the first counter's new value. Usage and money are counted once per call:
# a call retried after a failover (its first try may have landed before the primary
# died) finds its marker and adds nothing, answering the counter's current value.
ADD_ONCE = """
local function current()
  if ARGV[2] == '' then return tonumber(redis.call('GET', KEYS[2]) or '0') end
  return tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return current() end
local first
for i = 2, #KEYS do
  local at = 3 * i - 4
  local field, amount, ttl = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  local n
  if field == '' then
    n = redis.call('INCRBY', KEYS[i], amount)
  else
    n = redis.call('HINCRBY', KEYS[i], field, amount)
  end
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
  first = first or n
end
return first
"""
