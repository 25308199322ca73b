-- Settles acknowledgements of ONE recipient's devices: each device's wait
-- for each seq goes; a frame no other device waits for is deleted, with
-- its dedup entry (so its id may be queued again, as in SQLite).
--
-- KEYS: 1 f, 2 w, 3 slots
-- ARGV: per acknowledging device: device, count n, then n seqs.
-- Returns {frames deleted, then per device: waits it had}.
local devs, slots = live(KEYS[3])
local slot_of = {}
for i = 1, #devs do
  slot_of[devs[i]] = slots[i]
end
local out = { 0 }
local deleted = 0
local i = 1
while i <= #ARGV do
  local slot, n = slot_of[ARGV[i]], tonumber(ARGV[i + 1])
  local done = 0
  if slot then
    for k = i + 2, i + 1 + n do
      local seq = ARGV[k]
      if redis.call('ZREM', KEYS[2], member(slot, seq)) == 1 then
        done = done + 1
        if not waited(KEYS[2], slots, slot, seq) then
          deleted = deleted + drop(KEYS[1], seq)
        end
      end
    end
  end
  out[#out + 1] = done
  i = i + 2 + n
end
out[1] = deleted
return out
