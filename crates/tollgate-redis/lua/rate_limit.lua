-- rate_limit.lua: check, and if every limit allows it, charge N rate limits atomically.
--
-- KEYS[i]   the key of limit i (all keys share one hash tag; the caller checks); after the N
--           limits' keys, two per queued lease limit, in order: its queue (zset: waiter id ->
--           arrival us) and its waiters' deadlines (zset: waiter id -> us)
-- ARGV[1]   N, the number of limits
-- ARGV[2 + 5*(i-1) .. 6 + 5*(i-1)]   limit i: kind, a, b, c, d
--   'gcra'      a=limit  b=period_ms  c=burst  d=cost             (string: theoretical arrival time, us)
--   'swlog'     a=limit  b=window_ms  c=cost   d=unused           (string: a ring of the unit times in the window, us)
--   'swcounter' a=limit  b=window_ms  c=cost   d=unused           (hash: window index -> count)
--   'fixed'     a=limit  b=window_ms  c=cost   d=unused           (hash: w=window index, n=count)
--   'tokens'    a=capacity b=period_ms c=cost  d=unused           (hash: tokens, ts us; may go negative: debt)
--   'lease'     a=limit  b=lease_ms   c=lease id d=queue grace ms (sorted set: lease id -> expiry us)
--               d > 0: the slots are given in order of arrival. A request refused only for want of
--               slots waits in the queue under its lease id (as waiter) and asks again within
--               `d` ms, or loses its place; a slot is free for it only once every waiter ahead
--               of it has one.
-- Reply: {allowed, then for each limit: allowed, limit, remaining, reset_ms, retry_ms, queued}
--   (flat: nested reply tables cost the server measurably more)
--   allowed 1|0; reset_ms: until the limit is whole again; retry_ms: until this request could pass
--   (0 when allowed); queued: the request's place in the limit's queue (1 first), 0 when not in
--   one.
-- Uses the server's TIME (microseconds) so every gateway replica shares one clock. Every write
-- sets an expiry. Nothing is written unless all limits allow, except dropping expired entries.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function ms(us)
  if us <= 0 then return 0 end
  return math.ceil(us / 1000)
end

local function fmt(x)
  return string.format('%.0f', x)
end

local function noop() end

-- Generic cell rate algorithm: exact, O(1) memory. A request of `cost` is allowed when the
-- theoretical arrival time after it is at most `burst` intervals ahead of now.
local function gcra(key, limit, period_ms, burst, cost)
  local interval = period_ms * 1000 / limit
  local tolerance = interval * burst
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  local allow_at = new_tat - tolerance
  if allow_at > now then
    local remaining = math.floor((tolerance - (tat - now)) / interval)
    if remaining < 0 then remaining = 0 end
    return {0, burst, remaining, ms(tat - now), ms(allow_at - now), 0}, noop
  end
  local remaining = math.floor((tolerance - (new_tat - now)) / interval)
  return {1, burst, remaining, ms(new_tat - now), 0, 0}, function()
    redis.call('SET', key, fmt(new_tat), 'PX', ms(new_tat - now) + 1)
  end
end

-- Sliding-window log: exact over any window. The times (us) of the units admitted within the
-- window, oldest first, in one string used as a ring: a 16-byte head (the ring's first slot, the
-- number of times held), then 8-byte slots. Each call drops the times that left the window from
-- the front: it reads the first few slots in one read (a steady stream drops one or two a call)
-- and bisects the rest only when all of those left. The ring doubles when full and halves when
-- under a quarter full, so it costs about 8 bytes per unit admitted within the window, never more
-- than 8 * limit, and a few commands a call whatever the limit.
local FRONT = 16
local function swlog(key, limit, window_ms, cost)
  local edge = now - window_ms * 1000
  local len = redis.call('STRLEN', key)
  local first, n, cap = 0, 0, 0
  if len >= 16 and (len - 16) % 8 == 0 then
    cap = (len - 16) / 8
    first, n = struct.unpack('>dd', redis.call('GETRANGE', key, 0, 15))
    if n < 0 or n > cap or n ~= math.floor(n) or first < 0 or first ~= math.floor(first)
      or (cap > 0 and first >= cap) then
      cap = -1
    end
  elseif len > 0 then
    cap = -1
  end
  if cap < 0 then
    -- Not a log of this layout: start afresh.
    redis.call('DEL', key)
    first, n, cap = 0, 0, 0
  end
  -- The i-th (0-based) time held, oldest first.
  local function at(i)
    local off = 16 + 8 * ((first + i) % cap)
    return (struct.unpack('>d', redis.call('GETRANGE', key, off, off + 7)))
  end
  local gone = 0
  if n > 0 then
    local m = math.min(n, FRONT, cap - first)
    local front = redis.call('GETRANGE', key, 16 + 8 * first, 16 + 8 * (first + m) - 1)
    while gone < m and (struct.unpack('>d', front, 8 * gone + 1)) <= edge do gone = gone + 1 end
    if gone == m and m < n then
      if at(n - 1) <= edge then
        gone = n
      else
        -- The first time still in the window is in [gone, n - 1].
        local lo, hi = gone, n - 1
        while lo < hi do
          local mid = math.floor((lo + hi) / 2)
          if at(mid) > edge then hi = mid else lo = mid + 1 end
        end
        gone = lo
      end
    end
  end
  if cap > 0 then first = (first + gone) % cap end
  n = n - gone
  if n + cost > limit then
    -- Whole again when the newest leaves; this request fits once the (n + cost - limit) oldest
    -- have left.
    local reset = at(n - 1) - edge
    local retry = at(n + cost - limit - 1) - edge
    return {0, limit, math.max(limit - n, 0), ms(reset), ms(retry), 0}, noop
  end
  return {1, limit, limit - n - cost, window_ms, 0, 0}, function()
    if cost == 0 then return end
    local stamps = string.rep(struct.pack('>d', now), cost)
    local need = n + cost
    if need > cap or (cap > 64 and need * 4 < cap) then
      -- Resize: double (at least to what is needed, at most to the limit), or halve.
      local size
      if need > cap then
        size = math.max(need, math.min(limit, math.max(8, cap * 2)))
      else
        size = math.floor(cap / 2)
      end
      local held = ''
      if n > 0 then
        local a = 16 + 8 * first
        if first + n <= cap then
          held = redis.call('GETRANGE', key, a, a + 8 * n - 1)
        else
          held = redis.call('GETRANGE', key, a, 16 + 8 * cap - 1)
            .. redis.call('GETRANGE', key, 16, 16 + 8 * (first + n - cap) - 1)
        end
      end
      redis.call('SET', key, struct.pack('>dd', 0, need) .. held .. stamps
        .. string.rep('\0', 8 * (size - need)), 'PX', window_ms + 1)
      return
    end
    local slot = (first + n) % cap
    local fit = math.min(cost, cap - slot)
    redis.call('SETRANGE', key, 16 + 8 * slot, string.sub(stamps, 1, 8 * fit))
    if fit < cost then redis.call('SETRANGE', key, 16, string.sub(stamps, 8 * fit + 1)) end
    redis.call('SETRANGE', key, 0, struct.pack('>dd', first, need))
    redis.call('PEXPIRE', key, window_ms + 1)
  end
end

-- Sliding-window counter: approximate (the previous window's count weighted by how much of it
-- still overlaps), two counters of memory.
local function swcounter(key, limit, window_ms, cost)
  local window = window_ms * 1000
  local cur = math.floor(now / window)
  local elapsed = (now - cur * window) / window
  local v = redis.call('HMGET', key, fmt(cur), fmt(cur - 1))
  local c = tonumber(v[1]) or 0
  local p = tonumber(v[2]) or 0
  local est = p * (1 - elapsed) + c
  local reset = (1 - elapsed) * window
  if est + cost > limit then
    local retry = reset
    if c + cost <= limit and p > 0 then
      retry = (1 - (limit - cost - c) / p - elapsed) * window
    end
    local remaining = math.floor(limit - est)
    if remaining < 0 then remaining = 0 end
    return {0, limit, remaining, ms(reset), ms(retry), 0}, noop
  end
  return {1, limit, math.floor(limit - est - cost), ms(reset), 0, 0}, function()
    redis.call('HINCRBY', key, fmt(cur), cost)
    redis.call('HDEL', key, fmt(cur - 2))
    redis.call('PEXPIRE', key, 2 * window_ms + 1)
  end
end

-- Fixed window aligned to the epoch: cheapest, allows up to 2x the limit across a boundary.
local function fixed(key, limit, window_ms, cost)
  local window = window_ms * 1000
  local cur = math.floor(now / window)
  local v = redis.call('HMGET', key, 'w', 'n')
  local n = 0
  if tonumber(v[1]) == cur then n = tonumber(v[2]) or 0 end
  local reset = (cur + 1) * window - now
  if n + cost > limit then
    return {0, limit, limit - n, ms(reset), ms(reset), 0}, noop
  end
  return {1, limit, limit - n - cost, ms(reset), 0, 0}, function()
    redis.call('HSET', key, 'w', fmt(cur), 'n', n + cost)
    redis.call('PEXPIRE', key, ms(reset) + 1)
  end
end

-- Token bucket: refills continuously at capacity per period. The balance may go below zero when
-- a reconciliation charges more than was reserved (debt is paid back by the refill).
local function tokens(key, capacity, period_ms, cost)
  local rate = capacity / (period_ms * 1000)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local level = tonumber(v[1])
  local ts = tonumber(v[2])
  if level == nil or ts == nil then
    level = capacity
    ts = now
  end
  level = math.min(capacity, level + (now - ts) * rate)
  if level < cost then
    local remaining = math.floor(level)
    if remaining < 0 then remaining = 0 end
    return {0, capacity, remaining, ms((capacity - level) / rate), ms((cost - level) / rate), 0}, noop
  end
  local after = level - cost
  return {1, capacity, math.floor(after), ms((capacity - after) / rate), 0, 0}, function()
    redis.call('HSET', key, 'tokens', tostring(after), 'ts', fmt(now))
    -- A missing bucket is a full one, so the key may go once it would have refilled.
    redis.call('PEXPIRE', key, ms((capacity - after) / rate) + 1000)
  end
end

-- Concurrency slots as leases: a slot is held until released or until its lease expires, so a
-- dead holder's slot comes back by itself. Acquiring a lease id already held renews it (looked up
-- only at the limit, where it decides). Every lease lasts `lease_ms`, so the newest expiry is the
-- key's: set on a new key, pushed later (GT) on one that has expiring members.
-- With a queue (`q`, `qd`), waiters that stopped asking go first; then a request is admitted only
-- if the free slots outnumber the waiters ahead of it (all of them, for one not yet waiting).
local function lease(key, limit, lease_ms, id, grace_ms, q, qd)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local used = redis.call('ZCARD', key)
  local ahead, waiting = 0, false
  if q and redis.call('ZCARD', q) > 0 then
    local gone = redis.call('ZRANGEBYSCORE', qd, '-inf', now, 'LIMIT', 0, 64)
    for _, w in ipairs(gone) do
      redis.call('ZREM', q, w)
      redis.call('ZREM', qd, w)
    end
    local rank = redis.call('ZRANK', q, id)
    waiting = rank ~= false and rank ~= nil
    if waiting then ahead = rank else ahead = redis.call('ZCARD', q) end
  end
  if used + ahead >= limit and redis.call('ZSCORE', key, id) then
    -- It holds a slot already: this renews it.
    used, ahead = used - 1, 0
  end
  if used + ahead >= limit then
    local retry = 0
    if used >= limit then
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      retry = tonumber(first[2]) - now
    end
    if not q then return {0, limit, 0, ms(retry), ms(retry), 0}, noop, nil end
    return {0, limit, 0, ms(retry), ms(retry), ahead + 1}, noop, function()
      -- Joins the queue (its arrival kept while it asks again in time).
      if not waiting then redis.call('ZADD', q, fmt(now), id) end
      redis.call('ZADD', qd, fmt(now + grace_ms * 1000), id)
      redis.call('PEXPIRE', q, grace_ms + 1000)
      redis.call('PEXPIRE', qd, grace_ms + 1000)
    end
  end
  local expiry = now + lease_ms * 1000
  return {1, limit, math.max(limit - used - ahead - 1, 0), lease_ms, 0, 0}, function()
    redis.call('ZADD', key, fmt(expiry), id)
    if used == 0 then
      redis.call('PEXPIRE', key, lease_ms + 1)
    else
      redis.call('PEXPIRE', key, lease_ms + 1, 'GT')
    end
    if waiting then
      redis.call('ZREM', q, id)
      redis.call('ZREM', qd, id)
    end
  end, nil
end

local n = tonumber(ARGV[1])
local decisions = {}
local commits = {}
local waits = {}
local all = 1
local queues = n
for i = 1, n do
  local o = 2 + 5 * (i - 1)
  local kind = ARGV[o]
  local key = KEYS[i]
  local d, commit, wait
  if kind == 'gcra' then
    d, commit = gcra(key, tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]))
  elseif kind == 'swlog' then
    d, commit = swlog(key, tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]))
  elseif kind == 'swcounter' then
    d, commit = swcounter(key, tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]))
  elseif kind == 'fixed' then
    d, commit = fixed(key, tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]))
  elseif kind == 'tokens' then
    d, commit = tokens(key, tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]))
  elseif kind == 'lease' then
    local grace, q, qd = tonumber(ARGV[o + 4]), nil, nil
    if grace > 0 then
      q, qd = KEYS[queues + 1], KEYS[queues + 2]
      queues = queues + 2
    end
    d, commit, wait = lease(key, tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), ARGV[o + 3], grace, q, qd)
  else
    return redis.error_reply('unknown limit kind ' .. tostring(kind))
  end
  if d[1] == 0 then all = 0 end
  decisions[i] = d
  commits[i] = commit
  waits[i] = wait
end
if all == 1 then
  for i = 1, n do commits[i]() end
else
  -- Refused only for want of slots that queue: it waits in those queues.
  local queue = true
  for i = 1, n do
    if decisions[i][1] == 0 and not waits[i] then queue = false end
  end
  for i = 1, n do
    if decisions[i][1] == 0 and waits[i] and queue then
      waits[i]()
    else
      decisions[i][6] = 0
    end
  end
end
local reply = {all}
for i = 1, n do
  local d = decisions[i]
  for j = 1, 6 do reply[#reply + 1] = d[j] end
end
return reply
