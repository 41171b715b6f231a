-- event_done.lua: acknowledge processed entries of a group and delete them from the stream, in
-- one round trip: for streams of work items (an outbox), which then hold only what is left to do.
--
-- KEYS[1]  the stream
-- ARGV[1]  the group   ARGV[2..] entry ids
-- Reply:   the number of entries acknowledged

local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return acked
