-- Used capacity units of several nodes, after pruning their expired leases.
-- KEYS: zset1, costs1, pending1, zset2, costs2, pending2, ... (three per node)
-- ARGV: none
-- Returns: one number per node, in KEYS order.
local result = {}
for k = 1, #KEYS, 3 do
  prune(KEYS[k], KEYS[k + 1], KEYS[k + 2])
  local used = usage(KEYS[k + 1])
  table.insert(result, used)
end
return result
