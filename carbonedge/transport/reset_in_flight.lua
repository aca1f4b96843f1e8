-- KEYS: in-flight hash, the node's assigned registry; ARGV: node id, the bad value
-- (pcall: the hash may have been replaced by a key of another type since it was read)
if redis.pcall('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return false end
local held = redis.pcall('HLEN', KEYS[2])
if type(held) ~= 'number' then held = 0 end
redis.call('HSET', KEYS[1], ARGV[1], held)
return held
