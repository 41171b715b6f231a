-- semantic_check.lua: one checked semantic candidate (its answer compared with the upstream's),
-- folded into the model's shared threshold. The threshold tracks the error rate the operator
-- chose: each wrong candidate raises it by step * (1 - target), each right one lowers it by
-- step * target, so it settles where a `target` share of the candidates checked are wrong.
--
-- KEYS[1]  the model's hash: t (threshold), checked, wrong, served_checked, served_wrong
-- ARGV[1]  the threshold before any check   ARGV[2]  1 when the candidate was wrong, else 0
-- ARGV[3]  step   ARGV[4]  target error rate   ARGV[5]  the least threshold
-- ARGV[6]  1 when the candidate was at or above the threshold (it would have been served)
-- Reply:   the new threshold, as a string

local t = tonumber(redis.call('HGET', KEYS[1], 't') or ARGV[1])
local wrong = ARGV[2] == '1'
local step, target, least = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if wrong then
  t = t + step * (1 - target)
else
  t = t - step * target
end
if t > 1 then t = 1 end
if t < least then t = least end
local out = string.format('%.6f', t)
redis.call('HSET', KEYS[1], 't', out)
redis.call('HINCRBY', KEYS[1], 'checked', 1)
if wrong then redis.call('HINCRBY', KEYS[1], 'wrong', 1) end
if ARGV[6] == '1' then
  redis.call('HINCRBY', KEYS[1], 'served_checked', 1)
  if wrong then redis.call('HINCRBY', KEYS[1], 'served_wrong', 1) end
end
return out
