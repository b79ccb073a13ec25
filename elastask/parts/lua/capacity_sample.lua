-- Add one sample of the units each node has in flight, weighted by the time since the last sample.
-- KEYS: bucket (hash of the current minute), last (the last sample's time)
-- ARGV: max_dt_ms, ttl_s, then owner1, units1, owner2, units2, ...
-- Returns: the milliseconds this sample stands for (0 for the first sample, or a clock that went back).
-- The in-flight units measured now are taken to have held since the last sample (at most max_dt_ms:
-- a dispatcher that was stopped does not count as idle).
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('SET', KEYS[2], now_ms, 'EX', ARGV[2])
if last == 0 or now_ms <= last then return 0 end
local dt = math.min(now_ms - last, tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[1], 'sampled_ms', dt)
for i = 3, #ARGV, 2 do
  local units = tonumber(ARGV[i + 1])
  if units > 0 then redis.call('HINCRBY', KEYS[1], 'in_flight_unit_ms|' .. ARGV[i], units * dt) end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return dt
