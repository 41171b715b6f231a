-- settle.lua: end a request's charges in one call: give its concurrency lease back and settle
-- its token reservations with the real usage.
--
-- KEYS     the lease set first when ARGV[1] is not '', then one token bucket (hash: tokens, ts)
--          per reservation; all of one subject, so one hash tag
-- ARGV[1]  lease id ('' for none)   ARGV[2] period_ms   ARGV[3] delta = actual - reserved
--          (negative refunds)
-- ARGV[4..] each token bucket's capacity, in KEYS order
-- Reply:   the tokens left in each bucket after settling (floored; negative when in debt)
-- Uses the server's TIME; refunds never fill a bucket above its capacity.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local first = 1
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  first = 2
end
local period_ms = tonumber(ARGV[2])
local delta = tonumber(ARGV[3])
local left = {}
for i = first, #KEYS do
  local capacity = tonumber(ARGV[4 + i - first])
  local rate = capacity / (period_ms * 1000)
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local level = tonumber(v[1])
  local ts = tonumber(v[2])
  if level == nil or ts == nil then
    level = capacity
    ts = now
  end
  level = math.min(capacity, level + (now - ts) * rate)
  local after = math.min(capacity, level - delta)
  if after >= capacity then
    redis.call('DEL', KEYS[i])
  else
    redis.call('HSET', KEYS[i], 'tokens', tostring(after), 'ts', string.format('%.0f', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((capacity - after) / rate / 1000) + 1000)
  end
  left[#left + 1] = math.floor(after)
end
return left
