-- dead_letter.lua: move an entry that failed too often to the dead-letter stream, atomically:
-- copy it there (with why and how often it was tried) and acknowledge it in the group.
--
-- KEYS[1]  the stream   KEYS[2] its dead-letter stream (same hash tag)
-- ARGV[1]  group   ARGV[2] entry id   ARGV[3] deliveries   ARGV[4] reason
-- ARGV[5]  dead-letter max length (approximate)   ARGV[6] dead-letter ttl_ms (0: none)
-- Reply:   the dead-letter entry id, or false when the entry is gone from the stream (trimmed)

local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if #entry == 0 then return false end
local fields = entry[1][2]
local args = {KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'tg_origin_id', ARGV[2], 'tg_deliveries', ARGV[3], 'tg_reason', ARGV[4]}
for i = 1, #fields do args[#args + 1] = fields[i] end
local id = redis.call('XADD', unpack(args))
if tonumber(ARGV[6]) > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
return id
