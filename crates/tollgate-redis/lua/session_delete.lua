-- session_delete.lua: delete a session if the caller owns it.
--
-- KEYS[1]  meta   KEYS[2] messages
-- ARGV[1]  owner
-- Reply:   1 deleted, 0 not found (missing, or another owner)

if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
