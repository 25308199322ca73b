-- Claims the live session of a device of ONE key for a router: a number
-- above every earlier claim of the key; the router holding the previous
-- claim, if another one, is told it was replaced.
--
-- KEYS: 1 n (the claim counter), 2 sess
-- ARGV: 1 device, 2 router id, 3 channel prefix, 4 key hex
-- Returns the claim.
local claim = redis.call('HINCRBY', KEYS[1], 'claim', 1)
local router = router_of(redis.call('HGET', KEYS[2], ARGV[1]))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. num(claim))
if router and router ~= ARGV[2] then
  redis.call('PUBLISH', ARGV[3] .. router, cjson.encode({ t = 'replaced', k = ARGV[4], d = ARGV[1], c = claim }))
end
return claim
