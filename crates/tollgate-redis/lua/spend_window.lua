-- spend_window.lua: spend over sliding windows (a budget's), read or charged, and the alerts a
-- charge sets off.
--
-- KEYS[i]  the spend of window i (hash: bucket index -> billionths of a dollar; 'a:SHARE' ->
--          when that share's alert last went out, ms), all of one subject
-- ARGV[1]  billionths of a dollar to charge (0: only read)
-- ARGV[2]  N, the number of windows
-- then per window: window_ms, limit (billionths), A, then A alert shares (0 < share <= 1)
-- Reply:   per window: spent (after the charge), ms until the oldest bucket counted leaves the
--          window; then the alerts set off, as pairs: window number (1-based), share
-- A window is 60 buckets of window/60 each: spend within the last 60 buckets counts, so the
-- window slides in steps of a sixtieth of it. A share's alert goes out when a charge takes the
-- spend from below it to at or above it, at most once per window length, whichever replica
-- charges. Uses the server's TIME.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nanos = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local reply, alerts = {}, {}
local o = 3
for i = 1, n do
  local window, limit, a = tonumber(ARGV[o]), tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
  local step = math.max(math.floor(window / 60), 1)
  local cur = math.floor(now / step)
  local spent, oldest = 0, nil
  local fields = redis.call('HGETALL', KEYS[i])
  local stale = {}
  for j = 1, #fields, 2 do
    local idx = tonumber(fields[j])
    if idx then
      if idx > cur - 60 then
        spent = spent + tonumber(fields[j + 1])
        if not oldest or idx < oldest then oldest = idx end
      else
        stale[#stale + 1] = fields[j]
      end
    end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[i], unpack(stale)) end
  if nanos > 0 then
    redis.call('HINCRBY', KEYS[i], cur, nanos)
    redis.call('PEXPIRE', KEYS[i], window + step)
    local before = spent
    spent = spent + nanos
    if not oldest then oldest = cur end
    for s = 1, a do
      local share = ARGV[o + 2 + s]
      local mark = tonumber(share) * limit
      if before < mark and spent >= mark then
        local last = tonumber(redis.call('HGET', KEYS[i], 'a:' .. share))
        if not last or now - last >= window then
          redis.call('HSET', KEYS[i], 'a:' .. share, now)
          alerts[#alerts + 1] = i
          alerts[#alerts + 1] = share
        end
      end
    end
  end
  local leaves = 0
  if oldest then leaves = (oldest + 60) * step - now end
  reply[#reply + 1] = spent
  reply[#reply + 1] = math.max(leaves, 0)
  o = o + 3 + a
end
for j = 1, #alerts do reply[#reply + 1] = alerts[j] end
return reply
