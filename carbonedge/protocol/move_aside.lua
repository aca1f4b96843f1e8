-- KEYS: the key, where to move it; ARGV: the type it should have, seconds to keep it
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' or kind == ARGV[1] then return false end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return kind
