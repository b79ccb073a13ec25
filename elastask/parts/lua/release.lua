-- Free the slots of some tasks on one node.
-- KEYS: zset, costs, pending
-- ARGV: task ids
-- Returns: how many were held.
local n = 0
for _, id in ipairs(ARGV) do
  n = n + redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return n
