-- Removes a live device of ONE key: its waits go (frames no other device
-- waits for are deleted), its record stays marked removed (so it is
-- refused later), its claim goes, and the router holding that claim, if
-- another one, is told.
--
-- KEYS: 1 f, 2 w, 3 slots, 4 dev, 5 sess
-- ARGV: 1 device, 2 now, 3 router id, 4 channel prefix, 5 key hex
-- Returns {1 if it was removed, frames deleted}.
local device = ARGV[1]
local slot = redis.call('HGET', KEYS[3], device)
if not slot then
  return { 0, 0 }
end
local devs, slots = live(KEYS[3])
local deleted = release(KEYS[1], KEYS[2], slots, slot)
redis.call('HDEL', KEYS[3], device)
local rec = redis.call('HGET', KEYS[4], device)
local d = rec and cjson.decode(rec) or { f = ARGV[2], n = '' }
d.r = 1
d.l = ARGV[2]
redis.call('HSET', KEYS[4], device, cjson.encode(d))
local router = router_of(redis.call('HGET', KEYS[5], device))
redis.call('HDEL', KEYS[5], device)
if router and router ~= ARGV[3] then
  redis.call('PUBLISH', ARGV[4] .. router, cjson.encode({ t = 'removed', k = ARGV[5], d = device }))
end
return { 1, deleted }
