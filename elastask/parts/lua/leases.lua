-- Every lease of several nodes, with Redis's clock, in one round trip.
-- KEYS: zset1, pending1, zset2, pending2, ... (two per node)
-- ARGV: none
-- Returns: {now_ms, {ids and expiries of node 1, flat}, {pending ids and times of node 1, flat}, ...}
local result = {now_ms}
for k = 1, #KEYS, 2 do
  table.insert(result, redis.call('ZRANGE', KEYS[k], 0, -1, 'WITHSCORES'))
  table.insert(result, redis.call('HGETALL', KEYS[k + 1]))
end
return result
