-- Included by scripts that read or prune one node's slots.
-- A slot's entry in the costs hash is "<units>" or "<units>|<concurrency group>" (a type with a
-- maxConcurrency, or a group of types sharing one): cost_of and group_of read it back.
local function cost_of(entry) return tonumber(string.match(entry, '^(%d+)')) end
local function group_of(entry) return string.match(entry, '^%d+|(.+)$') end
-- Units in use on a node, and per concurrency group how many of its tasks hold a slot.
local function usage(costs)
  local used, groups = 0, {}
  local entries = redis.call('HVALS', costs)
  for _, entry in ipairs(entries) do
    used = used + cost_of(entry)
    local group = group_of(entry)
    if group then groups[group] = (groups[group] or 0) + 1 end
  end
  return used, groups
end
-- prune(zset, costs, pending) drops the leases whose expiry (ms, Redis's clock) has passed, with
-- their cost and pending mark.
local function prune(zset, costs, pending)
  local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', now_ms)
  for _, id in ipairs(expired) do
    redis.call('HDEL', costs, id)
    redis.call('HDEL', pending, id)
  end
  redis.call('ZREMRANGEBYSCORE', zset, '-inf', now_ms)
end
