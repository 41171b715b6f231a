-- cache_lookup.lua: read a cache entry of the current generation; on a miss, optionally try to
-- take the single-flight lease so that exactly one caller computes the value.
--
-- KEYS[1]  generation (string)   KEYS[2] entry (hash: g, v, u)   KEYS[3] stats (hash)   KEYS[4] lease
-- ARGV[1]  lease token, or '' to only read
-- ARGV[2]  lease_ms
-- ARGV[3]  '1' to count this lookup in the stats (a waiter's polls count once)
-- ARGV[4]  stats ttl_ms
-- Reply:   {status, value, generation}; status 'hit' | 'miss' | 'lead' (lease taken: compute) |
--          'wait' (another caller holds the lease; value is the holder's token)
-- An entry of an older generation was invalidated: it is deleted and reported as a miss.
-- A counted hit on an entry stored with usage (`u` = "PROMPT COMPLETION") adds it to what the
-- model's hits saved, in this same call.

local gen = redis.call('GET', KEYS[1]) or '0'
local e = redis.call('HMGET', KEYS[2], 'g', 'v', 'u')
if e[1] == gen and e[2] then
  if ARGV[3] == '1' then
    local hits = redis.call('HINCRBY', KEYS[3], 'hits', 1)
    if e[3] then
      local p, c = string.match(e[3], '^(%d+) (%d+)$')
      if p then
        redis.call('HINCRBY', KEYS[3], 'saved_prompt_tokens', p)
        redis.call('HINCRBY', KEYS[3], 'saved_completion_tokens', c)
      end
    end
    -- The stats' expiry is renewed by every miss and every 64th hit: far inside its length at
    -- any rate that matters, and one command fewer on almost every hit.
    if hits % 64 == 1 then redis.call('PEXPIRE', KEYS[3], ARGV[4]) end
  end
  return {'hit', e[2], gen}
end
if e[1] then redis.call('DEL', KEYS[2]) end
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[3], 'misses', 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
if ARGV[1] == '' then return {'miss', '', gen} end
-- SET NX GET (Redis 7.0+): takes the lease, or returns who holds it, in one call.
local holder = redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if not holder then
  return {'lead', '', gen}
end
return {'wait', holder, gen}
