-- lease_renew.lua: extend a concurrency lease that is still held.
--
-- KEYS[1]  the lease set (sorted set: lease id -> expiry us)
-- ARGV[1]  lease id   ARGV[2] lease_ms
-- Reply:   1 renewed, 0 the lease was lost (expired or released)
-- Uses the server's TIME.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local held = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if held == nil or held <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local expiry = now + tonumber(ARGV[2]) * 1000
redis.call('ZADD', KEYS[1], string.format('%.0f', expiry), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(last[2]) - now) / 1000) + 1)
return 1
