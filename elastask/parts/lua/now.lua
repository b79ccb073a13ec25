-- Included first by the ledger's scripts: now_ms, Redis's own clock (one clock for every machine).
-- Effects replication (the default since Redis 5) lets a script write after reading TIME.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
