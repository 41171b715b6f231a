-- event_publish.lua: append an event to a stream and keep the stream's idle expiry, in one
-- round trip (one command sent instead of MULTI, XADD, PEXPIRE, EXEC).
--
-- KEYS[1]  the stream
-- ARGV[1]  max length (approximate trim)   ARGV[2] retention_ms   ARGV[3..] pairs: field, value
-- Reply:   the entry's id

local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return id
