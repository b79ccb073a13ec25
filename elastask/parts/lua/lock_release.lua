-- Delete a lock only if this holder still has it (a lock that expired and was taken by another
-- process must not be released by us).
-- KEYS: lock
-- ARGV: token
-- Returns: 1 if deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
