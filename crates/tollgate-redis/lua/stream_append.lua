-- stream_append.lua: append entries of one kind to a token stream, keep its TTL and show (or,
-- at its end, stop showing) that its producer lives: one round trip, one command sent, however
-- many entries.
--
-- KEYS[1]  the stream   KEYS[2] its producer's alive key
-- ARGV[1]  max length (approximate trim)   ARGV[2] the stream's ttl_ms
-- ARGV[3]  the alive key's ttl_ms (0: the stream ended, delete it)   ARGV[4] the entries' kind
-- ARGV[5]  the first entry's sequence number   ARGV[6..] the entries' data
-- Reply:   the last sequence number written
-- Entry ids are `0-SEQ`; an id already used fails the first XADD ("equal or smaller"), before
-- anything is written.

local seq = tonumber(ARGV[5])
for i = 6, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '0-' .. seq, 'k', ARGV[4], 'd', ARGV[i])
  seq = seq + 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
end
return seq - 1
