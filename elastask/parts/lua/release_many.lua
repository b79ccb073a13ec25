-- Free the slots of some tasks on several nodes, in one round trip.
-- KEYS: zset1, costs1, pending1, zset2, costs2, pending2, ... (three per node)
-- ARGV: the number of ids of each node (one count per node, in KEYS order), then every id in that order
-- Returns: how many were held.
local nodes = #KEYS / 3
local n, at = 0, nodes + 1
for k = 1, nodes do
  local zset, costs, pending = KEYS[3 * k - 2], KEYS[3 * k - 1], KEYS[3 * k]
  for _ = 1, tonumber(ARGV[k]) do
    local id = ARGV[at]
    n = n + redis.call('ZREM', zset, id)
    redis.call('HDEL', costs, id)
    redis.call('HDEL', pending, id)
    at = at + 1
  end
end
return n
