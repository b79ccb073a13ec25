-- Keep why a task failed, and forget the oldest reasons beyond a count or an age.
-- KEYS: reasons hash (id -> JSON), the same ids by time (zset, ms)
-- ARGV: id, the reason's JSON, now ms, the most reasons kept, the longest a reason is kept (ms)
-- Returns: how many old reasons were forgotten.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[5]))
local excess = redis.call('ZCARD', KEYS[2]) - #old - tonumber(ARGV[4])
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], #old, #old + excess - 1)) do table.insert(old, id) end
end
for _, id in ipairs(old) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return #old
