-- Take the turn to probe a node whose breaker is open and whose probe is due (one prober per turn).
-- KEYS: the node's breaker hash
-- ARGV: probe interval ms (the next turn, if this probe fails)
-- Returns: 1 if the caller probes now, else 0 (closed, not due, or another process probes).
local open_until = redis.call('HGET', KEYS[1], 'open_until_ms')
if not open_until or tonumber(open_until) > now_ms then return 0 end
redis.call('HSET', KEYS[1], 'open_until_ms', now_ms + tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[1], 'probes', 1)
redis.call('PEXPIRE', KEYS[1], 86400000)
return 1
