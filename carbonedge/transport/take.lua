-- KEYS: heartbeat, assigned, queue, in-flight, attempts, requests stream, kombu unacked,
--       kombu unacked index, recoveries stream
-- ARGV: node id, queue name, now (unix seconds), reason, '1' to act on a live node
if ARGV[5] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0, 0} end
local flat = list_of(redis.pcall('HGETALL', KEYS[2]))
if #flat == 0 or not stream_usable(KEYS[6]) then return {0, 0, 0} end
local moved = {}
local n = 0
for i = 1, #flat, 2 do
  local attempt = next_attempt(KEYS[5], flat[i])
  redis.call('XADD', KEYS[6], '*', 'p', flat[i + 1], 'a', tostring(attempt), 'from', ARGV[1])
  moved[flat[i]] = true
  n = n + 1
end
redis.call('DEL', KEYS[2])
local items = list_of(redis.pcall('LRANGE', KEYS[3], 0, -1))
local kept = {}
local dropped = 0
for _, item in ipairs(items) do
  local ok, message = pcall(cjson.decode, item)
  local id = ok and task_id(message) or nil
  if id ~= nil and moved[id] then dropped = dropped + 1 else kept[#kept + 1] = item end
end
if dropped > 0 then
  redis.call('DEL', KEYS[3])
  for _, item in ipairs(kept) do redis.call('RPUSH', KEYS[3], item) end
end
local unacked = list_of(redis.pcall('HGETALL', KEYS[7]))
local forgotten = 0
for i = 1, #unacked, 2 do
  local ok, entry = pcall(cjson.decode, unacked[i + 1])
  if ok and type(entry) == 'table' and entry[3] == ARGV[2] then
    local id = task_id(entry[1])
    if id ~= nil and moved[id] then
      redis.call('HDEL', KEYS[7], unacked[i])
      redis.pcall('ZREM', KEYS[8], unacked[i])
      forgotten = forgotten + 1
    end
  end
end
release(KEYS[4], ARGV[1], n)
redis.pcall('XADD', KEYS[9], 'MAXLEN', '~', '10000', '*', 'node', ARGV[1], 'ts', ARGV[3],
            'requests', tostring(n), 'queued', tostring(dropped),
            'running', tostring(forgotten), 'reason', ARGV[4])
return {n, dropped, forgotten}
