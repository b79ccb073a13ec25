-- A claim cycle's claims are written: confirm their slots, or take one now where the ledger lost it.
-- KEYS: zset, costs, pending
-- ARGV: capacity units, the cycle's token, then (id, cost, lease duration ms) triples
-- Returns: the ids whose slot is held now (confirmed, or reserved here within the capacity).
-- A slot is lost when Redis lost the ledger while the claim write was in flight (it was rebuilt
-- before the write showed in the engine); it is taken again only if it fits, so a claim written
-- late never pushes a node over its cap: the caller gives back the ones not returned. A slot another
-- cycle reserved meanwhile for the same task and node becomes this claim's: only one write applied.
prune(KEYS[1], KEYS[2], KEYS[3])
local capacity = tonumber(ARGV[1])
local used = 0
for _, c in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(c) end
local held = {}
for i = 3, #ARGV, 3 do
  local id, cost, duration = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if redis.call('ZSCORE', KEYS[1], id) then
    redis.call('HDEL', KEYS[3], id)
    table.insert(held, id)
  elseif used + cost <= capacity then
    redis.call('ZADD', KEYS[1], now_ms + duration, id)
    redis.call('HSET', KEYS[2], id, cost)
    used = used + cost
    table.insert(held, id)
  end
end
return held
