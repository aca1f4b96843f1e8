-- KEYS: in-flight hash, the node's assigned registry; ARGV: node id
-- A node's in-flight count never exceeds its registry: the dispatcher adds to both in one
-- MULTI, and an agent releases the count before its delivery removes the entry. A larger
-- count leaked or was forged; it becomes the registry's size.
local count = tonumber(redis.pcall('HGET', KEYS[1], ARGV[1]))
local held = redis.pcall('HLEN', KEYS[2])
if count == nil or type(held) ~= 'number' or count <= held then return false end
redis.call('HSET', KEYS[1], ARGV[1], held)
return {count, held}
