-- rate_refund.lua: give back what rate_limit.lua charged, for limits charged in one slot of a
-- cluster when a limit in another slot refused the request (all or nothing across slots).
--
-- KEYS, ARGV  exactly as rate_limit.lua took them (N, then kind, a, b, c, d per limit; the
--             queue keys of leases that wait after the limits' keys)
-- Reply:      the number of limits given back
-- A waiting request's slot given back puts it back at the head of that slot's queue: it was
-- admitted there, so nobody ahead of it was kept out by it, and a newcomer must not take the
-- place it keeps while another slot holds it up.
-- Uses the server's TIME. A refund never leaves more than a limit holds when untouched: a
-- sliding log drops its newest times (the request's own, or one admitted a moment after it: the
-- window then frees a moment later than exact), a bucket never fills above its capacity.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function fmt(x)
  return string.format('%.0f', x)
end

local function gcra(key, limit, period_ms, cost)
  local tat = tonumber(redis.call('GET', key))
  if not tat then return end
  tat = tat - period_ms * 1000 / limit * cost
  if tat <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, fmt(tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
end

local function swlog(key, cost)
  local len = redis.call('STRLEN', key)
  if len < 16 or (len - 16) % 8 ~= 0 then return end
  local first, n = struct.unpack('>dd', redis.call('GETRANGE', key, 0, 15))
  redis.call('SETRANGE', key, 0, struct.pack('>dd', first, math.max(n - cost, 0)))
end

local function swcounter(key, window_ms, cost)
  local cur = math.floor(now / (window_ms * 1000))
  for _, w in ipairs({cur, cur - 1}) do
    local c = tonumber(redis.call('HGET', key, fmt(w))) or 0
    if c >= cost then
      redis.call('HINCRBY', key, fmt(w), -cost)
      return
    end
  end
end

local function fixed(key, window_ms, cost)
  local cur = math.floor(now / (window_ms * 1000))
  local v = redis.call('HMGET', key, 'w', 'n')
  if tonumber(v[1]) == cur and (tonumber(v[2]) or 0) >= cost then
    redis.call('HINCRBY', key, 'n', -cost)
  end
end

local function tokens(key, capacity, period_ms, cost)
  local rate = capacity / (period_ms * 1000)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local level, ts = tonumber(v[1]), tonumber(v[2])
  if level == nil or ts == nil then return end
  local after = math.min(capacity, level + (now - ts) * rate + cost)
  if after >= capacity then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'tokens', tostring(after), 'ts', fmt(now))
    redis.call('PEXPIRE', key, math.ceil((capacity - after) / rate / 1000) + 1000)
  end
end

local n = tonumber(ARGV[1])
local queues = n
for i = 1, n do
  local o = 2 + 5 * (i - 1)
  local kind, key = ARGV[o], KEYS[i]
  local a, b, c, d = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 4]
  if kind == 'gcra' then
    gcra(key, tonumber(a), tonumber(b), tonumber(d))
  elseif kind == 'swlog' then
    swlog(key, tonumber(c))
  elseif kind == 'swcounter' then
    swcounter(key, tonumber(b), tonumber(c))
  elseif kind == 'fixed' then
    fixed(key, tonumber(b), tonumber(c))
  elseif kind == 'tokens' then
    tokens(key, tonumber(a), tonumber(b), tonumber(c))
  elseif kind == 'lease' then
    redis.call('ZREM', key, c)
    local grace = tonumber(d)
    if grace > 0 then
      local q, qd = KEYS[queues + 1], KEYS[queues + 2]
      queues = queues + 2
      local head = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
      local at = now
      if head[2] then at = math.min(now, tonumber(head[2]) - 1) end
      redis.call('ZADD', q, fmt(at), c)
      redis.call('ZADD', qd, fmt(now + grace * 1000), c)
      redis.call('PEXPIRE', q, grace + 1000)
      redis.call('PEXPIRE', qd, grace + 1000)
    end
  else
    return redis.error_reply('unknown limit kind ' .. tostring(kind))
  end
end
return n
