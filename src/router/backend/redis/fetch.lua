-- Up to `limit` frames waiting for one device, after a seq, in order.
--
-- KEYS: 1 f, 2 w, 3 slots
-- ARGV: 1 device, 2 after, 3 limit
-- Returns {seq, record, seq, record...}.
local slot = redis.call('HGET', KEYS[3], ARGV[1])
if not slot then
  return {}
end
local from = '(' .. num(tonumber(slot) * SPAN + tonumber(ARGV[2]))
local members = redis.call('ZRANGEBYSCORE', KEYS[2], from, hi(slot), 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, m in ipairs(members) do
  local seq = seq_of(m)
  local rec = redis.call('HGET', KEYS[1], seq)
  if rec then
    out[#out + 1] = seq
    out[#out + 1] = rec
  end
end
return out
