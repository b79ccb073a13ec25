-- Included by scripts that read or prune one node's slots.
-- A slot's entry in the costs hash is "<units>", "<units>|<concurrency group>" (a type with a
-- maxConcurrency, or a group of types sharing one), and, once its claim is written, "|<claim>" after
-- them (the claim write's _seq_no, the slot's fence): "2", "2|reporting", "2||57", "2|reporting|57".
-- cost_of, group_of and claim_of read it back; entry writes it.
local function cost_of(entry) return tonumber(string.match(entry, '^(%d+)')) end
local function group_of(entry) return string.match(entry, '^%d+|([^|]+)') end
local function claim_of(entry) return entry and string.match(entry, '^%d+|[^|]*|(%d+)$') or '' end
local function entry(cost, group, claim)
  if claim ~= '' then return cost .. '|' .. group .. '|' .. claim end
  return group ~= '' and (cost .. '|' .. group) or tostring(cost)
end
-- A slot is the claim's that took it: a release naming another claim (a late or stale caller, the
-- slot freed and taken again since by a newer lease of the same task) leaves it alone. '*' names any.
local function held_by(costs, id, claim)
  return claim == '*' or claim_of(redis.call('HGET', costs, id)) == claim
end
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
