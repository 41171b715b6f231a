-- lease_token.lua: renew or release a lease key, only if the caller's token still holds it.
--
-- KEYS[1]  lease (string holding the holder's token)
-- ARGV[1]  token   ARGV[2] 'renew' | 'release'   ARGV[3] lease_ms (renew)
-- Reply:   1 done, 0 the lease is not ours any more

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
