-- The live devices of ONE key and their records.
--
-- KEYS: 1 slots, 2 dev
-- Returns {device, record, device, record...}.
local devs = redis.call('HKEYS', KEYS[1])
local out = {}
for _, d in ipairs(devs) do
  local rec = redis.call('HGET', KEYS[2], d)
  if rec then
    out[#out + 1] = d
    out[#out + 1] = rec
  end
end
return out
