-- switchboard history: the channel's position and the entries after an offset, atomically.
-- KEYS[1] meta hash, KEYS[2] history stream
-- ARGV[1] return entries with offset > this
-- ARGV[2] at most this many entries (0 = position only)
-- ARGV[3] epoch to create if the channel has none (so the next publish continues it)
-- ARGV[4] meta TTL in milliseconds (for a newly created epoch; 0 = none)
-- Returns {epoch, top offset, entries} where entries is XRANGE's reply.
local meta = redis.call('HMGET', KEYS[1], 'e', 'o')
local epoch, top = meta[1], meta[2]
if not epoch then
  epoch, top = ARGV[3], 0
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('DEL', KEYS[2])
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
local entries = {}
if tonumber(ARGV[2]) > 0 and tonumber(top) > 0 then
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
return {epoch, tonumber(top), entries}
