-- Switch off the pushes of claims no push marked yet, where Redis still remembers the claim.
-- KEYS: (claim marker, push marker) pairs
-- ARGV: the given-back value, then one push-marker TTL (ms) per pair
-- Returns: per pair 1 when the claim's pushes are off (now or before), else 0: a push came first, or
-- Redis lost the claim since (its claim marker is gone, so a missing push marker proves no push absent).
local out = {}
for i = 1, #KEYS, 2 do
  local n = (i + 1) / 2
  out[n] = 0
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[n + 1])
    if redis.call('GET', KEYS[i + 1]) == ARGV[1] then out[n] = 1 end
  end
end
return out
