-- KEYS: a hash; ARGV: field, the bad value, the value to put instead ('' deletes)
if redis.pcall('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return false end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return true
