-- Settles acknowledgements of ONE recipient's devices: each device's wait
-- for each seq goes; a frame no other device waits for is deleted, with
-- its dedup entry (so its id may be queued again, as in SQLite).
--
-- The router's other hot path, written like enqueue.lua for Redis' CPU:
-- no helpers from lib.lua, one ZREM per device (after one ZMSCORE when it
-- acknowledges several frames), one ZMSCORE per frame only when the key
-- has other devices, one HMGET of the records to delete (for their dedup
-- keys) and one HDEL of them all.
--
-- KEYS: 1 f, 2 w, 3 slots
-- ARGV: per acknowledging device: device, count n, then n seqs (at most
--       a thousand per device: the caller splits longer lists).
-- Returns {frames deleted, then per device: waits it had}.
local f, w = KEYS[1], KEYS[2]
local flat = redis.call('HGETALL', KEYS[3])
local slot_of = {}
local others = #flat > 2
for i = 1, #flat, 2 do
  slot_of[flat[i]] = flat[i + 1]
end

-- Whether a live slot other than `slot` still waits for `seq`.
local function waited(slot, seq)
  local ask = { 'ZMSCORE', w }
  for i = 2, #flat, 2 do
    if flat[i] ~= slot then
      ask[#ask + 1] = flat[i] .. ':' .. seq
    end
  end
  for _, score in ipairs(redis.call(unpack(ask))) do
    if score then
      return true
    end
  end
  return false
end

local out = { 0 }
local gone = {}
local i = 1
while i <= #ARGV do
  local slot, n = slot_of[ARGV[i]], tonumber(ARGV[i + 1])
  local done = 0
  if slot then
    local pre = slot .. ':'
    local freed = {}
    if n == 1 then
      if redis.call('ZREM', w, pre .. ARGV[i + 2]) == 1 then
        freed[1] = ARGV[i + 2]
      end
    elseif n > 1 then
      local ask, seqs, seen = { 'ZMSCORE', w }, {}, {}
      for k = i + 2, i + 1 + n do
        if not seen[ARGV[k]] then
          seen[ARGV[k]] = true
          seqs[#seqs + 1] = ARGV[k]
          ask[#ask + 1] = pre .. ARGV[k]
        end
      end
      local scores = redis.call(unpack(ask))
      local rem = { 'ZREM', w }
      for k = 1, #seqs do
        if scores[k] then
          freed[#freed + 1] = seqs[k]
          rem[#rem + 1] = ask[k + 2]
        end
      end
      if #rem > 2 then
        redis.call(unpack(rem))
      end
    end
    done = #freed
    for _, seq in ipairs(freed) do
      if not (others and waited(slot, seq)) then
        gone[#gone + 1] = seq
      end
    end
  end
  out[#out + 1] = done
  i = i + 2 + n
end

-- Delete the frames nobody waits for, with their dedup entries (read from
-- the records: "<at>\n<dedup key 48 bytes><text>"), a thousand at a time.
local deleted = 0
for from = 1, #gone, 1000 do
  local ask = { 'HMGET', f }
  for k = from, math.min(from + 999, #gone) do
    ask[#ask + 1] = gone[k]
  end
  local recs = redis.call(unpack(ask))
  local del = { 'HDEL', f }
  for k, rec in ipairs(recs) do
    if rec then
      local p = string.find(rec, '\n', 1, true)
      del[#del + 1] = ask[k + 2]
      del[#del + 1] = string.sub(rec, p + 1, p + 48)
    end
  end
  if #del > 2 then
    deleted = deleted + (#del - 2) / 2
    redis.call(unpack(del))
  end
end
out[1] = deleted
return out
