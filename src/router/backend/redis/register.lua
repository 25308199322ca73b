-- Registers a device of ONE key, or notes a known one is back. The first
-- device takes slot 0, where a key without devices queues, and with it
-- the backlog; a later one the lowest free slot, which nothing waits on.
--
-- KEYS: 1 slots, 2 dev
-- ARGV: 1 device, 2 name, 3 now, 4 most devices
-- Returns 'known' | 'first' | 'added' | 'removed' | 'toomany'.
local rec = redis.call('HGET', KEYS[2], ARGV[1])
if rec then
  local d = cjson.decode(rec)
  if d.r == 1 then
    return 'removed'
  end
  d.n = ARGV[2]
  d.l = ARGV[3]
  redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(d))
  return 'known'
end
local devs, slots = live(KEYS[1])
if #devs >= tonumber(ARGV[4]) then
  return 'toomany'
end
local used = {}
for _, s in ipairs(slots) do
  used[tonumber(s)] = true
end
local slot = 0
while used[slot] do
  slot = slot + 1
end
redis.call('HSET', KEYS[1], ARGV[1], slot)
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({ r = 0, f = ARGV[3], l = ARGV[3], n = ARGV[2] }))
if #devs == 0 then
  return 'first'
end
return 'added'
