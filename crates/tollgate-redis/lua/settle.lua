-- settle.lua: end a request's charges in one call: give its concurrency leases back and settle
-- its token reservations with the real usage.
--
-- KEYS     L lease sets, then one token bucket (hash: tokens, ts) per reservation; all in one
--          slot on a cluster (the caller settles each slot apart)
-- ARGV[1]  L, the number of leases   ARGV[2 .. L+1] the lease ids, in KEYS order
-- ARGV[L+2] period_ms   ARGV[L+3] delta = actual - reserved (negative refunds)
-- ARGV[L+4..] each token bucket's capacity, in KEYS order
-- Reply:   the tokens left in each bucket after settling (floored; negative when in debt)
-- Uses the server's TIME; refunds never fill a bucket above its capacity.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local leases = tonumber(ARGV[1])
for i = 1, leases do
  redis.call('ZREM', KEYS[i], ARGV[1 + i])
end
local period_ms = tonumber(ARGV[leases + 2])
local delta = tonumber(ARGV[leases + 3])
local left = {}
for i = leases + 1, #KEYS do
  local capacity = tonumber(ARGV[i + 3])
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
