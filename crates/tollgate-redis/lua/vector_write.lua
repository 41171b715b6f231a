-- vector_write.lua: store or delete items of a vector collection and log each change, atomically;
-- purge items whose expiry has passed.
--
-- KEYS[1]  meta hash (dim, epoch, seq, maxexp, durable)   KEYS[2]  items hash (id -> record)
-- KEYS[3]  change log   KEYS[4]  expiries (zset: id -> expiry, ms)
-- ARGV[1]  'put' | 'del' | 'max'   ARGV[2]  dim   ARGV[3]  epoch for a new collection
-- ARGV[4]  log MAXLEN   ARGV[5]  the most expiring items the collection keeps (0: no bound)
-- ARGV[6..]  put: id, record, expiry ms (0: never) triples; del: ids; max: id, number name,
--            value triples (an item's metadata number raised to at least the value; items that
--            are gone are left gone)
-- Reply:   {seq, n} (the last change's sequence number, changes made); {-1, dim} when a put's
--          dimension is not the collection's; {0, 0} for a delete in a missing collection.
--
-- The log's entry ids are 0-SEQ, dense from 1, so a reader that saw SEQ and reads an entry other
-- than 0-(SEQ+1) next knows it missed changes (trimmed) and reloads. A put creates the
-- collection. A collection holding an item that never expires is a durable record (no TTL; the
-- log is bounded by MAXLEN); one whose items all expire expires with the last of them. Each call
-- purges up to 100 expired items (logged as deletions, so every reader drops them). Past the
-- bound, a put drops the items that expire soonest (for items of one TTL, the oldest) the same way.

local dim = redis.call('HGET', KEYS[1], 'dim')
if not dim then
  if ARGV[1] ~= 'put' then return {0, 0} end
  redis.call('HSET', KEYS[1], 'dim', ARGV[2], 'epoch', ARGV[3], 'seq', 0, 'maxexp', 0, 'durable', 0)
  dim = ARGV[2]
end
if ARGV[1] == 'put' and dim ~= ARGV[2] then return {-1, tonumber(dim)} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq, n = tonumber(redis.call('HGET', KEYS[1], 'seq')), 0
local function logged(id)
  seq, n = seq + 1, n + 1
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '0-' .. seq, 'id', id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[4], id)
  if redis.call('HDEL', KEYS[2], id) == 1 then logged(id) end
end
local maxexp = tonumber(redis.call('HGET', KEYS[1], 'maxexp') or '0')
local durable = redis.call('HGET', KEYS[1], 'durable') == '1'
if ARGV[1] == 'put' then
  for i = 6, #ARGV, 3 do
    local id, exp = ARGV[i], tonumber(ARGV[i + 2])
    redis.call('HSET', KEYS[2], id, ARGV[i + 1])
    if exp > 0 then
      redis.call('ZADD', KEYS[4], exp, id)
      if exp > maxexp then maxexp = exp end
    else
      redis.call('ZREM', KEYS[4], id)
      durable = true
    end
    logged(id)
  end
  local over = tonumber(ARGV[5]) > 0 and redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[5]) or 0
  if over > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, over - 1)) do
      redis.call('ZREM', KEYS[4], id)
      if redis.call('HDEL', KEYS[2], id) == 1 then logged(id) end
    end
  end
elseif ARGV[1] == 'max' then
  -- A record is the dimension (u32, little-endian), the vector (4 bytes a component), then the
  -- metadata as JSON.
  local head = 4 + 4 * tonumber(dim)
  for i = 6, #ARGV, 3 do
    local id, name, value = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local record = redis.call('HGET', KEYS[2], id)
    if record then
      local meta = cjson.decode(string.sub(record, head + 1))
      local numbers = meta.numbers or {}
      if not numbers[name] or numbers[name] < value then
        numbers[name] = value
        meta.numbers = numbers
        redis.call('HSET', KEYS[2], id, string.sub(record, 1, head) .. cjson.encode(meta))
        logged(id)
      end
    end
  end
else
  for i = 6, #ARGV do
    redis.call('ZREM', KEYS[4], ARGV[i])
    if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then logged(ARGV[i]) end
  end
end
redis.call('HSET', KEYS[1], 'seq', seq, 'maxexp', maxexp, 'durable', durable and 1 or 0)
if durable then
  for k = 1, 4 do redis.call('PERSIST', KEYS[k]) end
elseif maxexp > 0 then
  -- A minute past the last expiry, so readers see the last purges before the keys go.
  for k = 1, 4 do redis.call('PEXPIREAT', KEYS[k], maxexp + 60000) end
end
return {seq, n}
