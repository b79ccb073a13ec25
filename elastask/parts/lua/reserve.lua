-- Reserve as many candidate tasks on one node as fit in its capacity and their group's limit, atomically.
-- KEYS: zset (id -> lease expiry ms), costs (id -> "units" or "units|group"), pending (id -> "reserved
--       at ms:token")
-- ARGV: capacity units, force (1 = rebuild from the engine: no capacity or limit check, claims already
--       written, so not pending), the reserving claim cycle's token, then (id, cost, lease duration ms,
--       concurrency group or '', the group's limit per node or 0, the claim's version or '') sextuples
--       (a reservation's claim is not written yet: ''; a rebuild knows it)
-- Returns: the ids reserved. A held id is never reserved twice (a stale hit of a task just claimed),
-- but a rebuild makes a held slot the claim the engine shows: the slot was carried over from before
-- Redis lost writes (a failover to a replica behind), perhaps a reservation whose confirm was lost
-- while its cycle went on to push; left pending, it would be judged by the dead-cycle rule ("never
-- sent") and given back while Kibana runs it.
-- A group's limit (Kibana's maxConcurrency, per node) is held here beside the cap, in the same script.
prune(KEYS[1], KEYS[2], KEYS[3])
local capacity, force, token = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3]
local used, groups = usage(KEYS[2])
local reserved = {}
for i = 4, #ARGV, 6 do
  local id, cost, duration = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local group, limit, claim = ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5]
  local group_full = group ~= '' and (groups[group] or 0) >= limit
  local held = redis.call('ZSCORE', KEYS[1], id)
  if held and force and claim ~= '' then
    redis.call('ZADD', KEYS[1], now_ms + duration, id)
    redis.call('HSET', KEYS[2], id, entry(cost, group, claim))
    redis.call('HDEL', KEYS[3], id)
    table.insert(reserved, id)
  elseif not held and (force or (used + cost <= capacity and not group_full)) then
    redis.call('ZADD', KEYS[1], now_ms + duration, id)
    redis.call('HSET', KEYS[2], id, entry(cost, group, claim))
    if not force then redis.call('HSET', KEYS[3], id, now_ms .. ':' .. token) end
    used = used + cost
    if group ~= '' then groups[group] = (groups[group] or 0) + 1 end
    table.insert(reserved, id)
  end
end
return reserved
