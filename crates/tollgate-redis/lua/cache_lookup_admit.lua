-- cache_lookup_admit.lua: a cache lookup and, on a hit, the request's limits, in one call (one
-- round trip for a hit instead of two). Loaded after cache_lookup.lua and rate_limit.lua, each
-- wrapped as a function of its own KEYS and ARGV (`lookup`, `admit`). Single Redis only: the
-- cache's keys and the limits' keys are in different hash slots.
--
-- KEYS[1..4]  cache_lookup.lua's keys        KEYS[5..]  rate_limit.lua's keys
-- ARGV[1..4]  cache_lookup.lua's arguments   ARGV[5..]  rate_limit.lua's arguments
-- Reply: cache_lookup.lua's reply; on a hit, followed by rate_limit.lua's (flat). The limits are
--   checked (and charged) only on a hit: anything else is admitted by its own call.

local found = lookup({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4]})
if found[1] ~= 'hit' then return found end
local limit_keys, limit_args = {}, {}
for i = 5, #KEYS do limit_keys[#limit_keys + 1] = KEYS[i] end
for i = 5, #ARGV do limit_args[#limit_args + 1] = ARGV[i] end
local decision = admit(limit_keys, limit_args)
if decision.err then return decision end
for i = 1, #decision do found[#found + 1] = decision[i] end
return found
