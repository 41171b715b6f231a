-- session_summary.lua: record a summary of a session's messages up to a stream entry, unless a
-- newer summary is there already; the messages it covers stop counting as pending.
--
-- KEYS[1]  meta (hash)
-- ARGV[1]  owner   ARGV[2] summary   ARGV[3] the last entry id it covers   ARGV[4] their tokens
-- Reply:   1 recorded, 0 not (another owner, missing, or a newer summary)

if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local current = redis.call('HGET', KEYS[1], 'summary_upto')
if current then
  local a_ms, a_seq = parse(current)
  local b_ms, b_seq = parse(ARGV[3])
  if b_ms < a_ms or (b_ms == a_ms and b_seq <= a_seq) then return 0 end
end
redis.call('HSET', KEYS[1], 'summary', ARGV[2], 'summary_upto', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'pending_tokens', -tonumber(ARGV[4]))
return 1
