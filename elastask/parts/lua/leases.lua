-- Every lease of several nodes, with Redis's clock, in one round trip.
-- KEYS: zset1, costs1, pending1, zset2, costs2, pending2, ... (three per node)
-- ARGV: none
-- Returns: {now_ms, {ids and expiries of node 1, flat}, {pending ids and times of node 1, flat},
--           units held by node 1 (expired leases not yet pruned included), ...}
local result = {now_ms}
for k = 1, #KEYS, 3 do
  table.insert(result, redis.call('ZRANGE', KEYS[k], 0, -1, 'WITHSCORES'))
  table.insert(result, redis.call('HGETALL', KEYS[k + 2]))
  local used = 0
  for _, c in ipairs(redis.call('HVALS', KEYS[k + 1])) do used = used + tonumber(c) end
  table.insert(result, used)
end
return result
