-- cache_store.lua: store a computed value, unless the model was invalidated meanwhile, and
-- release the single-flight lease if this caller holds it.
--
-- KEYS[1]  generation   KEYS[2] entry (hash: g, v)   KEYS[3] lease
-- ARGV[1]  the generation the value was computed under   ARGV[2] value   ARGV[3] ttl_ms
-- ARGV[4]  lease token ('' when none)
-- ARGV[5]  usage "PROMPT COMPLETION" ('' when unknown): what a hit on this entry saves
-- Reply:   1 stored, 0 not stored (the generation moved on: the value may be stale)
-- Keeps the generation key alive at least as long as any entry, so an expired generation can
-- never revive entries of an older one.

local gen = redis.call('GET', KEYS[1]) or '0'
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
if gen ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'g', gen, 'v', ARGV[2], 'u', ARGV[5])
else
  redis.call('HSET', KEYS[2], 'g', gen, 'v', ARGV[2])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local pttl = redis.call('PTTL', KEYS[1])
if pttl >= 0 and pttl < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
