-- Reserve as many candidate tasks on one node as fit in its capacity, atomically.
-- KEYS: zset (id -> lease expiry ms), costs (id -> units), pending (id -> "reserved at ms:token")
-- ARGV: capacity units, force (1 = rebuild from the engine: no capacity check, claims already
--       written, so not pending), the reserving claim cycle's token, then (id, cost, lease duration ms)
--       triples
-- Returns: the ids reserved. A held id is never reserved twice (a stale hit of a task just claimed).
prune(KEYS[1], KEYS[2], KEYS[3])
local capacity, force, token = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3]
local used = 0
for _, c in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(c) end
local reserved = {}
for i = 4, #ARGV, 3 do
  local id, cost, duration = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if not redis.call('ZSCORE', KEYS[1], id) and (force or used + cost <= capacity) then
    redis.call('ZADD', KEYS[1], now_ms + duration, id)
    redis.call('HSET', KEYS[2], id, cost)
    if not force then redis.call('HSET', KEYS[3], id, now_ms .. ':' .. token) end
    used = used + cost
    table.insert(reserved, id)
  end
end
return reserved
