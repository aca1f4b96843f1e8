-- KEYS: done, result meta, assigned hash, in-flight hash, attempts hash, stats hash
-- ARGV: request id, encoded meta, expiry seconds, node id ('' when none), counted '1'/'0'
-- Bookkeeping keys may hold anything someone left there (pcall): a result is delivered
-- whatever state its registry or counters are in.
-- A counted request's in-flight count is released here, before its result is announced
-- (a producer's next request is scheduled from it), by the node whose registry still held
-- it: one re-dispatched away from this node had its count released by recovery.
if ARGV[4] ~= '' then
  local owned = redis.pcall('HDEL', KEYS[3], ARGV[1])
  if owned == 1 and ARGV[5] == '1' then
    redis.pcall('HINCRBY', KEYS[4], ARGV[4], -1)
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
