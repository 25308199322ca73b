-- Gives a claim up, unless a newer one replaced it.
--
-- KEYS: 1 sess
-- ARGV: 1 device, 2 "<router id> <claim>"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
