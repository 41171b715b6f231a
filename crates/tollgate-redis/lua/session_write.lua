-- session_write.lua: create a session and/or append messages, refreshing both keys' TTL.
--
-- KEYS[1]  meta (hash: owner, system, created_ms, updated_ms, appended, summary, summary_upto,
--          pending_tokens: tokens of the messages after the summary)   KEYS[2] messages (stream)
-- ARGV[1]  owner   ARGV[2] ttl_ms   ARGV[3] max messages kept   ARGV[4] '1' create if missing
-- ARGV[5]  system prompt for a new session ('' none)   ARGV[6] '1' replace the system prompt
-- ARGV[7..] pairs: message JSON, token count
-- Reply:   {status, stored message count, messages appended over the session's life, created_ms,
--          system prompt ('' none), now_ms, pending_tokens}; status 'ok' | 'not_found' (missing, or
--          another owner)
-- Uses the server's TIME for timestamps.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then
  if ARGV[4] ~= '1' then return {'not_found', 0, 0, 0, '', 0, 0} end
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'system', ARGV[5], 'created_ms', now_ms, 'appended', 0)
elseif owner ~= ARGV[1] then
  return {'not_found', 0, 0, 0, '', 0, 0}
elseif ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'system', ARGV[5])
end
local added, tokens = 0, 0
for i = 7, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', 'm', ARGV[i], 't', ARGV[i + 1])
  added = added + 1
  tokens = tokens + tonumber(ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'updated_ms', now_ms)
if added > 0 then
  redis.call('HINCRBY', KEYS[1], 'appended', added)
  redis.call('HINCRBY', KEYS[1], 'pending_tokens', tokens)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
local m = redis.call('HMGET', KEYS[1], 'appended', 'created_ms', 'system', 'pending_tokens')
return {'ok', redis.call('XLEN', KEYS[2]), tonumber(m[1]) or 0, tonumber(m[2]) or 0, m[3] or '',
  now_ms, math.max(tonumber(m[4]) or 0, 0)}
