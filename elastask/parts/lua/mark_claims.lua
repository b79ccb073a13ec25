-- Mark claims as elastask's (a renewed lease's new version): each claim marker holds the ledger's
-- epoch, as confirm.lua's do.
-- KEYS: the ledger's epoch, then one claim-marker key per claim
-- ARGV: one TTL (ms) per claim marker
-- Returns: how many were marked.
local epoch = redis.call('GET', KEYS[1]) or '-'
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], epoch, 'PX', ARGV[i - 1])
end
return #KEYS - 1
