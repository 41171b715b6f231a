-- vector_drop.lua: delete a whole vector collection.
--
-- KEYS[1]  meta hash   KEYS[2]  items hash   KEYS[3]  change log   KEYS[4]  expiries
-- Reply:   1 when it existed, 0 otherwise.
-- Readers notice through the meta hash (gone, or a new epoch when the name is used again).

return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4]) > 0 and 1 or 0
