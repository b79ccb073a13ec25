-- Move held leases' expiries to now + a duration (after they were renewed in the engine).
-- KEYS: zset, costs, pending
-- ARGV: (id, duration ms, the claim's version: '*' for any) triples; ids not held by that claim are left out.
-- Returns: the ids moved. A lease whose expiry already passed is not held (pruned first): renewing
-- it would take a slot back that a cycle with a newer view may have handed to another task.
prune(KEYS[1], KEYS[2], KEYS[3])
local moved = {}
for i = 1, #ARGV, 3 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) and held_by(KEYS[2], ARGV[i], ARGV[i + 2]) then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[i + 1]), ARGV[i])
    table.insert(moved, ARGV[i])
  end
end
return moved
