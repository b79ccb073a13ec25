-- Set the push markers of claims about to be pushed: the push switch (loops/dispatch/push_markers.py).
-- KEYS: one push marker per claim
-- ARGV: this execution's marker value, how many values an earlier execution of the same dispatch job
--       set (n), those n values, then one TTL (ms) per key
-- Returns: per key 1 when this execution may push the claim, else 0 (another push marked it first,
-- Kibana answered it, or it was given back). A marker is this execution's when it is unset, already
-- holds this execution's value (the same call run again after its reply was lost: idempotent), or
-- holds a value an earlier execution of this job set before it failed without pushing (the Celery
-- retry of a job whose marker write answered an error although it applied). A redelivered job (its
-- worker died mid-push) runs with a new value and inherits none of its first delivery's: never pushed twice.
local mine = ARGV[1]
local inherited = {}
local n = tonumber(ARGV[2])
for i = 1, n do inherited[ARGV[2 + i]] = true end
local out = {}
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  out[i] = 0
  if (not current) or current == mine or inherited[current] then
    redis.call('SET', KEYS[i], mine, 'PX', ARGV[2 + n + i])
    out[i] = 1
  end
end
return out
