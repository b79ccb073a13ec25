-- Free the slots of some tasks on several nodes, in one round trip.
-- KEYS: zset1, costs1, pending1, zset2, costs2, pending2, ... (three per node)
-- ARGV: a claim cycle's token ('' = by claim), the number of pairs of each node (one count per node, in
--       KEYS order), then every (id, claim's version: '' for a reservation not written, '*' for any)
--       pair in that order
-- Returns: how many were freed.
-- With a token, only that cycle's own unwritten reservations are freed: a slot another cycle reserved
-- since for the same task (the first one paused past the pending window) is not this cycle's to free.
-- Without, a slot is freed only while it is the claim's named: reconcile judged a lease finished, then
-- paused; the slot was freed and the task claimed again for the same node: the newer lease keeps it.
local token = ARGV[1]
local suffix = ':' .. token
local nodes = #KEYS / 3
local n, at = 0, nodes + 2
for k = 1, nodes do
  local zset, costs, pending = KEYS[3 * k - 2], KEYS[3 * k - 1], KEYS[3 * k]
  for _ = 1, tonumber(ARGV[k + 1]) do
    local id, claim = ARGV[at], ARGV[at + 1]
    local mark = redis.call('HGET', pending, id)
    local ours
    if token == '' then ours = held_by(costs, id, claim)
    else ours = mark and string.sub(mark, -#suffix) == suffix end
    if ours then
      n = n + redis.call('ZREM', zset, id)
      redis.call('HDEL', costs, id)
      redis.call('HDEL', pending, id)
    end
    at = at + 2
  end
end
return n
