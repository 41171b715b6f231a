-- features_put.lua: replace one feature group of an entity, stamp it with the server's time, and
-- set its TTL, atomically.
--
-- KEYS[1]  the group's hash
-- ARGV[1]  ttl_ms (0: no expiry)   ARGV[2..] pairs: feature name, value (JSON text)
-- Reply:   the update time, ms since the epoch (server clock)
-- The reserved field `@ts` holds the update time; feature names never start with `@`.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[1])
local args = {KEYS[1], '@ts', now_ms}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', unpack(args))
if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return now_ms
