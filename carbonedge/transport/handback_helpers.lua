-- Everything in these keys may have been left there by anyone: a registry of the wrong
-- type holds nothing to move, a count that is not a number is started again, and the
-- requests go back to the stream only while it is a stream (else nothing is moved and
-- the dispatcher, which moves a wrong-typed stream aside, lets the next pass do it).
local function list_of(reply)
  if type(reply) ~= 'table' or reply.err then return {} end
  return reply
end
local function next_attempt(attempts, id)
  local n = redis.pcall('HINCRBY', attempts, id, 1)
  if type(n) ~= 'number' then
    redis.pcall('HSET', attempts, id, 1)
    n = 1
  end
  return n
end
local function release(in_flight, node, n)
  local left = redis.pcall('HINCRBY', in_flight, node, -n)
  if type(left) ~= 'number' or left < 0 then redis.pcall('HSET', in_flight, node, 0) end
end
local function stream_usable(stream)
  local kind = redis.call('TYPE', stream)['ok']
  return kind == 'stream' or kind == 'none'
end
local function task_id(message)
  if type(message) == 'table' and type(message.headers) == 'table'
      and type(message.headers.id) == 'string' then
    return message.headers.id
  end
  return nil
end
