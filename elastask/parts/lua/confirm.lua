-- A claim cycle's claims are written: confirm their slots, or take one now where the ledger lost it.
-- KEYS: zset, costs, pending, the ledger's epoch, then (optional) one claim-marker key per sextuple
-- ARGV: capacity units, the cycle's token, how long a claim marker outlives its lease (ms), then
--       (id, cost, lease duration ms, concurrency group or '', its limit or 0, the claim's version)
--       sextuples: the slot is the claim's from now on (its fence)
-- Returns: the ids whose slot is held now (confirmed, or reserved here within the capacity and limit).
-- A slot is lost when Redis lost the ledger while the claim write was in flight (it was rebuilt
-- before the write showed in the engine); it is taken again only if it fits, so a claim written
-- late never pushes a node over its cap: the caller gives back the ones not returned. A slot another
-- cycle reserved meanwhile for the same task and node becomes this claim's: only one write applied.
-- A held claim's marker says "elastask claimed this version": the retry loop returns the attempt of
-- an expired lease that has it and no push marker (its dispatch job was lost before any push). It
-- holds the ledger's epoch: after Redis lost writes (a failover to a replica behind) the ledger is
-- rebuilt under a new epoch, and a marker of an older one proves nothing (its push marker may be
-- the write that was lost).
prune(KEYS[1], KEYS[2], KEYS[3])
local capacity = tonumber(ARGV[1])
local marker_extra = tonumber(ARGV[3])
local used, groups = usage(KEYS[2])
local epoch = redis.call('GET', KEYS[4]) or '-'
local held = {}
local k = 0
for i = 4, #ARGV, 6 do
  k = k + 1
  local id, cost, duration = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local group, limit, claim = ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5]
  local holds = false
  if redis.call('ZSCORE', KEYS[1], id) then
    redis.call('HDEL', KEYS[3], id)
    redis.call('HSET', KEYS[2], id, entry(cost, group, claim))
    holds = true
  elseif used + cost <= capacity and (group == '' or (groups[group] or 0) < limit) then
    redis.call('ZADD', KEYS[1], now_ms + duration, id)
    redis.call('HSET', KEYS[2], id, entry(cost, group, claim))
    used = used + cost
    if group ~= '' then groups[group] = (groups[group] or 0) + 1 end
    holds = true
  end
  if holds then
    table.insert(held, id)
    if KEYS[4 + k] then redis.call('SET', KEYS[4 + k], epoch, 'PX', duration + marker_extra) end
  end
end
return held
