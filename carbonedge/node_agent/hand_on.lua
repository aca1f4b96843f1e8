-- KEYS: this node's assigned hash, the next node's, the activation, the next queue, in-flight
-- ARGV: request id, counted '1'/'0', activation, expiry s, task message, next node id,
--       this node id
-- A dispatched request moves to the next node's registry with its task and in-flight
-- count (if that node dies, the request is re-dispatched); one taken from this node
-- meanwhile is not handed on (recovery released its count).
if ARGV[2] == '1' then
  local request = redis.call('HGET', KEYS[1], ARGV[1])
  if not request then return 0 end
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], request)
  redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
  redis.call('HINCRBY', KEYS[5], ARGV[7], -1)
end
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
redis.call('LPUSH', KEYS[4], ARGV[5])
return 1
