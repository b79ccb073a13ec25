-- Every lease of several nodes, with Redis's clock, in one round trip; and the tasks finished lately.
-- KEYS: zset1, costs1, pending1, zset2, costs2, pending2, ... (three per node), then the finished zset
-- ARGV: none (the finished zset's scores are until when each task is remembered, ms)
-- Returns: {now_ms, {ids and expiries of node 1, flat}, {pending ids and times of node 1, flat},
--           units held by node 1 (expired leases not yet pruned included), {group, count, ... of node 1},
--           {ids and claim versions of node 1's written claims, flat}, ..., {finished ids}}
local result = {now_ms}
local finished = KEYS[#KEYS]
for k = 1, #KEYS - 1, 3 do
  table.insert(result, redis.call('ZRANGE', KEYS[k], 0, -1, 'WITHSCORES'))
  table.insert(result, redis.call('HGETALL', KEYS[k + 2]))
  local used, groups = usage(KEYS[k + 1])
  table.insert(result, used)
  local flat = {}
  for group, count in pairs(groups) do
    table.insert(flat, group)
    table.insert(flat, count)
  end
  table.insert(result, flat)
  local claims = {}
  local entries = redis.call('HGETALL', KEYS[k + 1])
  for i = 1, #entries, 2 do
    local claim = claim_of(entries[i + 1])
    if claim ~= '' then
      table.insert(claims, entries[i])
      table.insert(claims, claim)
    end
  end
  table.insert(result, claims)
end
redis.call('ZREMRANGEBYSCORE', finished, '-inf', now_ms)
table.insert(result, redis.call('ZRANGE', finished, 0, -1))
return result
