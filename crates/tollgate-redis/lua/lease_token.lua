-- lease_token.lua: renew, release or take over a lease key, only if the given token still
-- holds it.
--
-- KEYS[1]  lease (string holding the holder's token)
-- KEYS[2]  the model's generation (string; 'takeover' only)
-- ARGV[1]  token   ARGV[2] 'renew' | 'release' | 'takeover'   ARGV[3] lease_ms (renew, takeover)
-- ARGV[4]  the new holder's token (takeover)
-- Reply:   renew, release: 1 done, 0 the lease is not that token's any more
--          takeover: the generation (the new holder computes for it), or 0 when the lease is
--          not the old holder's any more

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
elseif ARGV[2] == 'takeover' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
  return redis.call('GET', KEYS[2]) or '0'
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
