-- KEYS: the deferred set, the request stream; ARGV: now, batch size, the request field
-- Moves due requests back to the stream and out of the set in one step, so that two
-- dispatchers never release one request twice.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, request in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', ARGV[3], request)
  redis.call('ZREM', KEYS[1], request)
end
return #due
