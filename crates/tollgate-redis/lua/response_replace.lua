-- response_replace.lua: replace a stored response (a summarized conversation), keeping its TTL,
-- unless it is gone or deleted.
--
-- KEYS[1]  the response (string)
-- ARGV[1]  the new value   ARGV[2] the tombstone value
-- Reply:   1 replaced, 0 missing or deleted

local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 1
