-- Move held leases' expiries to now + a duration (after they were renewed in the engine).
-- KEYS: zset
-- ARGV: (id, duration ms) pairs; ids not held are left out.
-- Returns: how many were moved.
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[i + 1]), ARGV[i])
    n = n + 1
  end
end
return n
