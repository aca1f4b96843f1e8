-- KEYS: done, result meta, assigned hash, in-flight hash, attempts hash, stats hash
-- ARGV: request id, encoded meta, expiry seconds, node id ('' when none), counted '1'/'0'
-- Bookkeeping keys may hold anything someone left there (pcall): a result is delivered
-- whatever state its registry or counters are in.
if ARGV[4] ~= '' then
  local owned = redis.pcall('HDEL', KEYS[3], ARGV[1])
  if owned == 0 and ARGV[5] == '1' then
    -- the request was re-dispatched away from this node, and recovery already released
    -- its in-flight count: give back the one the agent released after running it
    redis.pcall('HINCRBY', KEYS[4], ARGV[4], 1)
  end
end
if redis.call('SET', KEYS[1], ARGV[4], 'NX', 'EX', ARGV[3]) then
  redis.pcall('HDEL', KEYS[5], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
  return 1
end
redis.pcall('HINCRBY', KEYS[6], 'late_results', 1)
return 0
