-- Stores frames for ONE recipient: per frame, in order, Unneeded (a frame
-- to one's own key nobody else needs), QuotaExceeded (a device it would
-- wait for has `quota` waiting), Duplicate (its (sender, id) is queued),
-- or Stored (new seq, a wait per device); then publishes the stored
-- frames to the other routers holding a claim of a device they wait for.
--
-- KEYS: 1 f, 2 w, 3 slots, 4 sess
-- ARGV: 1 router id, 2 channel prefix, 3 at, 4 quota, 5 recipient hex,
--       then 4 per frame: dedup key (sender and id bytes), id text,
--       sending device ('' unless the frame is to the sender's own key),
--       text.
-- Returns per frame {'s', seq, {devices}} | {'d', at} | {'u'} | {'q'},
-- then 1 if the key had neither frames nor devices before (the caller
-- adds it to the retention set), else 0.
local me, chan, at, quota, hex = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local devs, slots = live(KEYS[3])
-- The last seq is the field 'seq' of `f` (so `f` never empties, and one
-- HSET stores a frame, its dedup entry and the counter).
local last = redis.call('HGET', KEYS[1], 'seq')
local new = 0
if #devs == 0 and redis.call('HLEN', KEYS[1]) <= 1 then
  new = 1
end
last = tonumber(last) or 0
local holder = {}
if #devs > 0 then
  local held = redis.call('HMGET', KEYS[4], unpack(devs))
  for i = 1, #devs do
    local router = router_of(held[i])
    if router and router ~= me then
      holder[devs[i]] = router
    end
  end
end

local out, pubs, order = {}, {}, {}
for i = 6, #ARGV, 4 do
  local dd, id, sender_device, text = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local tslots, tdevs = {}, {}
  if #devs == 0 then
    tslots[1] = '0'
  else
    for j = 1, #devs do
      if devs[j] ~= sender_device then
        tslots[#tslots + 1] = slots[j]
        tdevs[#tdevs + 1] = devs[j]
      end
    end
  end
  if #tslots == 0 then
    out[#out + 1] = { 'u' }
  else
    local full = false
    for _, s in ipairs(tslots) do
      if redis.call('ZCOUNT', KEYS[2], lo(s), hi(s)) >= quota then
        full = true
        break
      end
    end
    local old = (not full) and redis.call('HGET', KEYS[1], dd)
    local rec = old and redis.call('HGET', KEYS[1], old)
    if full then
      out[#out + 1] = { 'q' }
    elseif rec then
      out[#out + 1] = { 'd', at_of(rec) }
    else
      last = last + 1
      local seq = last
      local s = num(seq)
      redis.call('HSET', KEYS[1], 'seq', s, s, at .. '\n' .. dd .. text, dd, s)
      local args = {}
      for _, sl in ipairs(tslots) do
        args[#args + 1] = num(tonumber(sl) * SPAN + seq)
        args[#args + 1] = member(sl, s)
      end
      redis.call('ZADD', KEYS[2], unpack(args))
      out[#out + 1] = { 's', seq, tdevs }
      local told = {}
      for _, d in ipairs(tdevs) do
        local r = holder[d]
        if r and not told[r] then
          told[r] = true
          if not pubs[r] then
            pubs[r] = {}
            order[#order + 1] = r
          end
          local list = pubs[r]
          list[#list + 1] = { s = seq, i = id, a = at, x = text, d = tdevs }
        end
      end
    end
  end
end
for _, r in ipairs(order) do
  redis.call('PUBLISH', chan .. r, cjson.encode({ t = 'frames', k = hex, f = pubs[r] }))
end
out[#out + 1] = new
return out
