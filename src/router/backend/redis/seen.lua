-- Notes that live devices of ONE key were seen now.
--
-- KEYS: 1 slots, 2 dev
-- ARGV: 1 now, then devices.
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    local rec = redis.call('HGET', KEYS[2], ARGV[i])
    if rec then
      local d = cjson.decode(rec)
      d.l = ARGV[1]
      redis.call('HSET', KEYS[2], ARGV[i], cjson.encode(d))
    end
  end
end
return 0
