-- Retention for ONE key: deletes frames committed before a cutoff (a
-- prefix of each device's waits, which are in seq order), then forgets
-- live devices last seen before it: one among others releases its waits;
-- the last one leaves its frames to the key's next first device (slot 0).
-- Stops after `most` deletions, to keep each call short.
--
-- KEYS: 1 f, 2 w, 3 slots, 4 dev, 5 sess
-- ARGV: 1 cutoff, 2 most deletions
-- Returns {frames expired, devices forgotten, frames released, more (0|1),
-- idle (0|1: nothing left for this key)}.
local before, most = ARGV[1], tonumber(ARGV[2])
local devs, slots = live(KEYS[3])
local all = { '0' }
for _, s in ipairs(slots) do
  if s ~= '0' then
    all[#all + 1] = s
  end
end
local expired = 0
for _, s in ipairs(all) do
  local done = false
  while not done do
    local members = redis.call('ZRANGEBYSCORE', KEYS[2], lo(s), hi(s), 'LIMIT', 0, 100)
    if #members < 100 then
      done = true
    end
    for _, m in ipairs(members) do
      local seq = seq_of(m)
      local rec = redis.call('HGET', KEYS[1], seq)
      if rec and at_of(rec) >= before then
        done = true
        break
      end
      for _, t in ipairs(all) do
        redis.call('ZREM', KEYS[2], member(t, seq))
      end
      if rec then
        expired = expired + drop(KEYS[1], seq)
        if expired >= most then
          return { expired, 0, 0, 1, 0 }
        end
      end
    end
  end
end

local forgotten, released = 0, 0
for i = 1, #devs do
  local device, slot = devs[i], slots[i]
  local rec = redis.call('HGET', KEYS[4], device)
  local last = rec and cjson.decode(rec).l or ''
  if last < before then
    local others = {}
    for _, d in ipairs(devs) do
      if d ~= device and redis.call('HEXISTS', KEYS[3], d) == 1 then
        others[#others + 1] = redis.call('HGET', KEYS[3], d)
      end
    end
    if #others > 0 then
      released = released + release(KEYS[1], KEYS[2], others, slot)
    elseif slot ~= '0' then
      -- The last device: its waits become the key's (slot 0).
      local flat = redis.call('ZRANGEBYSCORE', KEYS[2], lo(slot), hi(slot))
      redis.call('ZREMRANGEBYSCORE', KEYS[2], lo(slot), hi(slot))
      for j = 1, #flat, 500 do
        local args = {}
        for k = j, math.min(j + 499, #flat) do
          local seq = seq_of(flat[k])
          args[#args + 1] = seq
          args[#args + 1] = member('0', seq)
        end
        redis.call('ZADD', KEYS[2], unpack(args))
      end
    end
    redis.call('HDEL', KEYS[3], device)
    redis.call('HDEL', KEYS[4], device)
    redis.call('HDEL', KEYS[5], device)
    forgotten = forgotten + 1
  end
end
local idle = 0
if redis.call('HLEN', KEYS[1]) <= 1 and redis.call('EXISTS', KEYS[3]) == 0 then
  idle = 1
end
return { expired, forgotten, released, 0, idle }
