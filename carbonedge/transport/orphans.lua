-- KEYS: assigned, queue, in-flight, attempts, requests stream, kombu unacked, recoveries
-- ARGV: node id, queue name, now, 'find' or 'move', request ids (for 'move')
-- 'find' returns the ids assigned to the node that are in neither its queue nor kombu's
-- unacked registry (for its queue); 'move' re-dispatches those of the given ids that
-- still are, like TAKE_LUA does for a dead node, and returns how many it moved.
local held = {}
for _, item in ipairs(list_of(redis.pcall('LRANGE', KEYS[2], 0, -1))) do
  local ok, message = pcall(cjson.decode, item)
  local id = ok and task_id(message) or nil
  if id ~= nil then held[id] = true end
end
for _, raw in ipairs(list_of(redis.pcall('HVALS', KEYS[6]))) do
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' and entry[3] == ARGV[2] then
    local id = task_id(entry[1])
    if id ~= nil then held[id] = true end
  end
end
if ARGV[4] == 'find' then
  local orphans = {}
  for _, id in ipairs(list_of(redis.pcall('HKEYS', KEYS[1]))) do
    if not held[id] then orphans[#orphans + 1] = id end
  end
  return orphans
end
if not stream_usable(KEYS[5]) then return 0 end
local n = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local request = redis.pcall('HGET', KEYS[1], id)
  if type(request) == 'string' and not held[id] then
    local attempt = next_attempt(KEYS[4], id)
    redis.call('XADD', KEYS[5], '*', 'p', request, 'a', tostring(attempt), 'from', ARGV[1])
    redis.call('HDEL', KEYS[1], id)
    n = n + 1
  end
end
if n > 0 then
  release(KEYS[3], ARGV[1], n)
  redis.pcall('XADD', KEYS[7], 'MAXLEN', '~', '10000', '*', 'node', ARGV[1], 'ts', ARGV[3],
              'requests', tostring(n), 'queued', '0', 'running', '0', 'reason', 'orphaned')
end
return n
