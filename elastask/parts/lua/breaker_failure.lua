-- Count one failed push job of a node; open its breaker (out of rotation) when it should be.
-- KEYS: the node's breaker hash (failures, open_until_ms, outage_since_ms, probes)
-- ARGV: hard (1: connection refused, opens at once), threshold (failures in a row that open it),
--       probe interval ms
-- Returns: {1 if this call opened the breaker else 0, failures in a row}
-- An open breaker counts nothing more: failures of pushes sent before it opened belong to the outage
-- already counted, so they neither postpone the next probe nor lengthen the time out of rotation.
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
if redis.call('HEXISTS', KEYS[1], 'open_until_ms') == 1 then return {0, failures} end
failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('PEXPIRE', KEYS[1], 86400000)  -- a node removed from the config leaves nothing for ever
if ARGV[1] == '1' or failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'open_until_ms', now_ms + tonumber(ARGV[3]), 'outage_since_ms', now_ms, 'probes', 0)
  return {1, failures}
end
return {0, failures}
