-- registry_write.lua: put or delete a model entry, bump the registry version and announce it.
--
-- KEYS[1]  models (hash: name -> entry JSON)   KEYS[2] version (string counter)
-- ARGV[1]  'put' | 'delete'   ARGV[2] name   ARGV[3] entry JSON (put)   ARGV[4] channel
-- Reply:   the new version (0 when a delete found nothing)
-- Registry entries are configuration: they have no TTL. Instances learn of a change from the
-- channel message, and by polling the version (in case a message was missed).

if ARGV[1] == 'delete' then
  if redis.call('HDEL', KEYS[1], ARGV[2]) == 0 then return 0 end
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], version)
return version
