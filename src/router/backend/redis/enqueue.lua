-- Stores frames for ONE recipient: per frame, in order, Unneeded (a frame
-- to one's own key nobody else needs), QuotaExceeded (a device it would
-- wait for has `quota` waiting), Duplicate (its (sender, id) is queued),
-- or Stored (new seq, a wait per device); then publishes the stored
-- frames to the other routers holding a claim of a device they wait for.
--
-- The hot path of the router (one call per recipient per pipeline, most
-- with one frame), so it is written for Redis' CPU: one read of the
-- frames hash for the seq counter and every dedup entry, one ZCOUNT per
-- slot per call (then counted here), one HSET and one ZADD for all the
-- frames, records built by the router, no JSON, no string.format, and
-- no helpers from lib.lua (each would be a closure made per call).
--
-- KEYS: 1 f, 2 w, 3 slots, 4 sess
-- At most a few hundred frames a call (the caller splits larger groups).
--
-- ARGV: 1 router id, 2 channel prefix, 3 quota, then 3 per frame: dedup
--       key (sender and id bytes), sending device ('' unless the frame is
--       to the sender's own key), record ("<at>\n<dedup key><text>").
-- Returns {new, {live devices}, then per frame: seq (> 0, stored) | 0
-- (unneeded) | -1 (over quota) | -2 (duplicate of a frame of this call)
-- | at (text: duplicate of a queued frame)}; `new` is 1 if the key had
-- neither frames nor devices before (the caller adds it to the retention
-- set), else 0.
local f, w = KEYS[1], KEYS[2]
local me, quota = ARGV[1], tonumber(ARGV[3])
local SPAN = 1099511627776

local flat = redis.call('HGETALL', KEYS[3])
local devs, slots = {}, {}
for i = 1, #flat, 2 do
  devs[#devs + 1] = flat[i]
  slots[#slots + 1] = flat[i + 1]
end
local ndev = #devs

-- The seq counter and every frame's dedup entry, in one read.
local ask = { 'HMGET', f, 'seq' }
for i = 4, #ARGV, 3 do
  ask[#ask + 1] = ARGV[i]
end
local got = redis.call(unpack(ask))
local last = tonumber(got[1]) or 0
local new = 0
if ndev == 0 and (not got[1] or redis.call('HLEN', f) <= 1) then
  new = 1
end

local out = { new, devs }
local count = {}
local hset, zadd = { 'HSET', f }, { 'ZADD', w }
local here = {}
local stored = false
local holder
local pubs, order
local all_devs
for i = 4, #ARGV, 3 do
  local dd, own = ARGV[i], ARGV[i + 1]
  -- The slots (and devices) it waits for.
  local ts, td = slots, devs
  if ndev == 0 then
    ts, td = { '0' }, devs
  elseif own ~= '' then
    ts, td = {}, {}
    for j = 1, ndev do
      if devs[j] ~= own then
        ts[#ts + 1] = slots[j]
        td[#td + 1] = devs[j]
      end
    end
  end
  if #ts == 0 then
    out[#out + 1] = 0
  else
    local full = false
    for _, s in ipairs(ts) do
      local c = count[s]
      if not c then
        local base = tonumber(s) * SPAN
        c = redis.call('ZCOUNT', w, base, base + SPAN - 1)
        count[s] = c
      end
      if c >= quota then
        full = true
        break
      end
    end
    local old = (not full) and (here[dd] or got[(i - 1) / 3 + 1])
    local rec = old and old ~= true and redis.call('HGET', f, old)
    if full then
      out[#out + 1] = -1
    elseif old == true then
      out[#out + 1] = -2
    elseif rec then
      out[#out + 1] = string.sub(rec, 1, string.find(rec, '\n', 1, true) - 1)
    else
      last = last + 1
      local s = tostring(last)
      local n = #hset
      hset[n + 1], hset[n + 2], hset[n + 3], hset[n + 4] = s, ARGV[i + 2], dd, s
      for _, sl in ipairs(ts) do
        n = #zadd
        if sl == '0' then
          zadd[n + 1] = s
        else
          zadd[n + 1] = tonumber(sl) * SPAN + last
        end
        zadd[n + 2] = sl .. ':' .. s
        count[sl] = count[sl] + 1
      end
      -- Lua's unpack takes some thousands of values at most.
      if #zadd > 4000 then
        redis.call(unpack(zadd))
        zadd = { 'ZADD', w }
      end
      if #hset > 4000 then
        redis.call(unpack(hset))
        hset = { 'HSET', f }
      end
      stored = true
      here[dd] = true
      out[#out + 1] = last
      -- Who else must hear of it.
      if ndev > 0 then
        if not holder then
          holder = {}
          local held = redis.call('HMGET', KEYS[4], unpack(devs))
          for j = 1, ndev do
            local router = held[j] and string.match(held[j], '^(%S+) ')
            if router and router ~= me then
              holder[devs[j]] = router
            end
          end
          pubs, order = {}, {}
        end
        local told
        for _, d in ipairs(td) do
          local r = holder[d]
          if r and not (told and told[r]) then
            told = told or {}
            told[r] = true
            local parts = pubs[r]
            if not parts then
              parts = { 'F', string.sub(f, -67, -4), '\n' }
              pubs[r] = parts
              order[#order + 1] = r
            end
            local list
            if td == devs then
              all_devs = all_devs or table.concat(devs, ',')
              list = all_devs
            else
              list = table.concat(td, ',')
            end
            local rec_new = ARGV[i + 2]
            n = #parts
            parts[n + 1], parts[n + 2], parts[n + 3], parts[n + 4] = s, ' ', list, ' '
            parts[n + 5], parts[n + 6], parts[n + 7] = #rec_new, '\n', rec_new
          end
        end
      end
    end
  end
end
if stored then
  hset[#hset + 1] = 'seq'
  hset[#hset + 1] = tostring(last)
  redis.call(unpack(hset))
  if #zadd > 2 then
    redis.call(unpack(zadd))
  end
end
if order then
  for _, r in ipairs(order) do
    redis.call('PUBLISH', ARGV[2] .. r, table.concat(pubs[r]))
  end
end
return out
