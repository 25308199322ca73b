-- Helpers prepended to every script (see redis.rs, "Scripts").
--
-- A wait is a member "<slot>:<seq>" of the recipient's `w` sorted set,
-- scored slot * SPAN + seq, so one device's waits are one score range in
-- seq order. Numbers are formatted with %.0f: Lua's own tostring keeps
-- only 14 digits.
local SPAN = 1099511627776

local function num(x)
  return string.format('%.0f', x)
end

-- The score range of `slot`'s waits.
local function lo(slot)
  return num(tonumber(slot) * SPAN)
end

local function hi(slot)
  return num(tonumber(slot) * SPAN + SPAN - 1)
end

local function member(slot, seq)
  return num(tonumber(slot)) .. ':' .. seq
end

-- The seq of a member, as text.
local function seq_of(m)
  return string.sub(m, string.find(m, ':', 1, true) + 1)
end

-- A stored frame is "<at>\n<sender 32 bytes><id 16 bytes><text>".
local function at_of(rec)
  return string.sub(rec, 1, string.find(rec, '\n', 1, true) - 1)
end

local function dedup_of(rec)
  local p = string.find(rec, '\n', 1, true)
  return string.sub(rec, p + 1, p + 48)
end

-- The live devices: a list of devices and one of their slots (text).
local function live(slots_key)
  local flat = redis.call('HGETALL', slots_key)
  local devs, slots = {}, {}
  for i = 1, #flat, 2 do
    devs[#devs + 1] = flat[i]
    slots[#slots + 1] = flat[i + 1]
  end
  return devs, slots
end

-- Whether a slot of `slots` other than `except` waits for `seq`.
local function waited(w_key, slots, except, seq)
  for _, s in ipairs(slots) do
    if s ~= except and redis.call('ZSCORE', w_key, member(s, seq)) then
      return true
    end
  end
  return false
end

-- Deletes frame `seq` and its dedup entry (both in `f`); 1 if it was
-- there.
local function drop(f_key, seq)
  local rec = redis.call('HGET', f_key, seq)
  if not rec then
    return 0
  end
  redis.call('HDEL', f_key, seq, dedup_of(rec))
  return 1
end

-- Takes every wait of `slot` away, deleting the frames no other slot of
-- `slots` waits for; returns how many were deleted.
local function release(f_key, w_key, slots, slot)
  local members = redis.call('ZRANGEBYSCORE', w_key, lo(slot), hi(slot))
  if #members == 0 then
    return 0
  end
  redis.call('ZREMRANGEBYSCORE', w_key, lo(slot), hi(slot))
  local deleted = 0
  for _, m in ipairs(members) do
    local seq = seq_of(m)
    if not waited(w_key, slots, slot, seq) then
      deleted = deleted + drop(f_key, seq)
    end
  end
  return deleted
end

-- The router id of a claim "<router id> <claim>".
local function router_of(claim)
  return claim and string.match(claim, '^(%S+) ')
end

