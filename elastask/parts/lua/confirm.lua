-- A claim cycle's claims are written: confirm their slots, or take one now where the ledger lost it.
-- KEYS: zset, costs, pending
-- ARGV: capacity units, the cycle's token, then (id, cost, lease duration ms, concurrency group or '',
--       its limit or 0) quintuples
-- Returns: the ids whose slot is held now (confirmed, or reserved here within the capacity and limit).
-- A slot is lost when Redis lost the ledger while the claim write was in flight (it was rebuilt
-- before the write showed in the engine); it is taken again only if it fits, so a claim written
-- late never pushes a node over its cap: the caller gives back the ones not returned. A slot another
-- cycle reserved meanwhile for the same task and node becomes this claim's: only one write applied.
prune(KEYS[1], KEYS[2], KEYS[3])
local capacity = tonumber(ARGV[1])
local used, groups = usage(KEYS[2])
local held = {}
for i = 3, #ARGV, 5 do
  local id, cost, duration = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local group, limit = ARGV[i + 3], tonumber(ARGV[i + 4])
  if redis.call('ZSCORE', KEYS[1], id) then
    redis.call('HDEL', KEYS[3], id)
    table.insert(held, id)
  elseif used + cost <= capacity and (group == '' or (groups[group] or 0) < limit) then
    redis.call('ZADD', KEYS[1], now_ms + duration, id)
    redis.call('HSET', KEYS[2], id, group ~= '' and (cost .. '|' .. group) or cost)
    used = used + cost
    if group ~= '' then groups[group] = (groups[group] or 0) + 1 end
    table.insert(held, id)
  end
end
return held
