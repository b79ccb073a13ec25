-- Included by scripts that prune one node: prune(zset, costs, pending) drops the leases whose
-- expiry (ms, Redis's clock) has passed, with their cost and pending mark.
local function prune(zset, costs, pending)
  local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', now_ms)
  for _, id in ipairs(expired) do
    redis.call('HDEL', costs, id)
    redis.call('HDEL', pending, id)
  end
  redis.call('ZREMRANGEBYSCORE', zset, '-inf', now_ms)
end
