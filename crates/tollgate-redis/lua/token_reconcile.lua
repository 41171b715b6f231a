-- token_reconcile.lua: settle a token-bucket reservation with the real usage.
--
-- KEYS[1]  the token bucket (hash: tokens, ts)
-- ARGV[1]  capacity   ARGV[2] period_ms   ARGV[3] delta = actual - reserved (negative refunds)
-- Reply:   tokens left after the adjustment (floored; negative when in debt)
-- Uses the server's TIME; refunds never fill the bucket above capacity.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local capacity = tonumber(ARGV[1])
local period_ms = tonumber(ARGV[2])
local delta = tonumber(ARGV[3])
local rate = capacity / (period_ms * 1000)
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local level = tonumber(v[1])
local ts = tonumber(v[2])
if level == nil or ts == nil then
  level = capacity
  ts = now
end
level = math.min(capacity, level + (now - ts) * rate)
local after = math.min(capacity, level - delta)
if after >= capacity then
  redis.call('DEL', KEYS[1])
  return math.floor(after)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(after), 'ts', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - after) / rate / 1000) + 1000)
return math.floor(after)
