-- cache_invalidate.lua: invalidate every entry of a model in O(1) by bumping its generation.
--
-- KEYS[1]  generation
-- ARGV[1]  max entry ttl_ms (the generation must outlive every entry of the older ones)
-- Reply:   the new generation

local gen = redis.call('INCR', KEYS[1])
local pttl = redis.call('PTTL', KEYS[1])
if pttl < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return gen
