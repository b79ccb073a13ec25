-- Free the slots of some tasks on one node, each only while it is still the slot of the claim named.
-- KEYS: zset, costs, pending
-- ARGV: (task id, the claim's version: '' for a reservation not written yet, '*' for any) pairs
-- Returns: how many were freed.
local n = 0
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  if held_by(KEYS[2], id, ARGV[i + 1]) then
    n = n + redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return n
