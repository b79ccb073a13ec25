-- Switch off the pushes of claims no push marked yet, where Redis still remembers the claim.
-- KEYS: the ledger's epoch, then (claim marker, push marker) pairs
-- ARGV: the given-back value, then one push-marker TTL (ms) per pair
-- Returns: per pair 1 when the claim's pushes are off (now or before), else 0: a push came first, or
-- Redis lost writes since the claim: its claim marker is gone, or holds an older epoch than the
-- ledger's (a failover to a replica behind: the ledger was rebuilt), so a missing push marker
-- proves no push absent.
local epoch = redis.call('GET', KEYS[1])
local out = {}
for i = 2, #KEYS, 2 do
  local n = i / 2
  out[n] = 0
  if epoch and redis.call('GET', KEYS[i]) == epoch then
    redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[n + 1])
    if redis.call('GET', KEYS[i + 1]) == ARGV[1] then out[n] = 1 end
  end
end
return out
