-- session_restore.lua: put a session read from the database back into Redis, unless Redis has
-- one by that id already (written meanwhile, or restored by another instance).
--
-- KEYS[1]  meta (hash)   KEYS[2] messages (stream)
-- ARGV[1]  owner   ARGV[2] ttl_ms   ARGV[3] system ('' none)   ARGV[4] created_ms
-- ARGV[5]  messages appended over the session's life   ARGV[6] max messages kept
-- ARGV[7..] pairs: message JSON, token count (oldest first)
-- Reply:   1 restored, 0 Redis had the session

if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'system', ARGV[3], 'created_ms', ARGV[4],
  'updated_ms', now_ms, 'appended', ARGV[5])
local tokens = 0
for i = 7, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], '*', 'm', ARGV[i], 't', ARGV[i + 1])
  tokens = tokens + tonumber(ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'pending_tokens', tokens)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1
