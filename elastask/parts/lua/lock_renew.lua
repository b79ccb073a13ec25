-- Extend a lock only if this holder still has it.
-- KEYS: lock
-- ARGV: token, ttl ms
-- Returns: 1 if renewed, 0 if the lock was lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
