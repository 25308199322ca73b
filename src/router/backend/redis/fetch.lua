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
if #members == 0 then
  return {}
end
local seqs = {}
for i, m in ipairs(members) do
  seqs[i] = seq_of(m)
end
-- One read per thousand (unpack's limit; a page is one delivery window,
-- 256 by default).
local out = {}
for j = 1, #seqs, 1000 do
  local part = { unpack(seqs, j, math.min(j + 999, #seqs)) }
  local recs = redis.call('HMGET', KEYS[1], unpack(part))
  for i, seq in ipairs(part) do
    if recs[i] then
      out[#out + 1] = seq
      out[#out + 1] = recs[i]
    end
  end
end
return out
