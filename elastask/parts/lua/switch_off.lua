-- Switch off the pushes of claims no push marked yet, where Redis still remembers the claim.
-- KEYS: the ledger's epoch, then (claim marker, push marker) pairs
-- ARGV: the given-back value, then one push-marker TTL (ms) per pair
-- Returns: per pair 1 when the claim's pushes are off (now or before), else 0: a push came first, or
-- Redis lost writes since the claim: its claim marker is gone, or holds an older epoch than the
-- ledger's (a flush, or a failover to a replica behind: the ledger was rebuilt), or the ledger's epoch
-- names another server than this one (a failover after the caller checked and before this script
-- ran: the promoted replica may lack the last push markers), so a missing push marker proves no push
-- absent. The epoch is "<ms>.<nonce>@<run_id>" (ledger.py); a server without INFO reads "unknown",
-- as ledger.py's own check does.
local epoch = redis.call('GET', KEYS[1])
local info = redis.pcall('INFO', 'server')
local server = type(info) == 'string' and string.match(info, 'run_id:(%w+)') or 'unknown'
local out = {}
for i = 2, #KEYS, 2 do
  local n = i / 2
  out[n] = 0
  if epoch and string.match(epoch, '@(.*)$') == server and redis.call('GET', KEYS[i]) == epoch then
    redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[n + 1])
    if redis.call('GET', KEYS[i + 1]) == ARGV[1] then out[n] = 1 end
  end
end
return out
