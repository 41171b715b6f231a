-- vector_write.lua: store or delete items of a vector collection and log each change, atomically.
--
-- KEYS[1]  meta hash (dim, epoch, seq)   KEYS[2]  items hash (id -> record)   KEYS[3]  change log
-- ARGV[1]  'put' | 'del'   ARGV[2]  dim   ARGV[3]  epoch for a new collection   ARGV[4]  log MAXLEN
-- ARGV[5..]  put: id, record pairs; del: ids
-- Reply:   {seq, n} (the last change's sequence number, changes made); {-1, dim} when a put's
--          dimension is not the collection's; {0, 0} for a delete in a missing collection.
--
-- The log's entry ids are 0-SEQ, dense from 1, so a reader that saw SEQ and reads an entry other
-- than 0-(SEQ+1) next knows it missed changes (trimmed) and reloads. A put creates the
-- collection; collections are durable records: no TTL (the log is bounded by MAXLEN).

local dim = redis.call('HGET', KEYS[1], 'dim')
if not dim then
  if ARGV[1] == 'del' then return {0, 0} end
  redis.call('HSET', KEYS[1], 'dim', ARGV[2], 'epoch', ARGV[3], 'seq', 0)
  dim = ARGV[2]
end
if ARGV[1] == 'put' and dim ~= ARGV[2] then return {-1, tonumber(dim)} end
local seq, n = tonumber(redis.call('HGET', KEYS[1], 'seq')), 0
local step = (ARGV[1] == 'put') and 2 or 1
for i = 5, #ARGV, step do
  local id, changed = ARGV[i], 0
  if ARGV[1] == 'put' then
    redis.call('HSET', KEYS[2], id, ARGV[i + 1])
    changed = 1
  else
    changed = redis.call('HDEL', KEYS[2], id)
  end
  if changed == 1 then
    seq, n = seq + 1, n + 1
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '0-' .. seq, 'id', id)
  end
end
redis.call('HSET', KEYS[1], 'seq', seq)
return {seq, n}
