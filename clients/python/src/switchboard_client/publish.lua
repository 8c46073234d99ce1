-- switchboard publish: history + offset + snapshot + publish, atomically.
-- KEYS[1] meta hash (e = epoch, o = top offset)
-- KEYS[2] history stream (entry ids are "<offset>-0"; fields d = data, t = publish time in µs)
-- KEYS[3] snapshot hash (o, e, d, v)
-- ARGV[1] pub/sub channel name
-- ARGV[2] data (JSON text)
-- ARGV[3] history size (0 = no history)
-- ARGV[4] history TTL in milliseconds
-- ARGV[5] epoch to use if the channel has none
-- ARGV[6] "1" to store the message as the snapshot
-- ARGV[7] snapshot version ("" = none): refused unless greater than the stored one
-- ARGV[8] publish command: "publish" or "spublish"
-- ARGV[9] optional: meta TTL in milliseconds, >= the history TTL (the channel's position
--         outlives its entries: --council-tombstone); absent or "", the history TTL
-- KEYS[4] optional: the publish's idempotency record (same hash tag); with it,
--         ARGV[10] how long to keep the record, in milliseconds (> 0)
-- Returns {offset, epoch} or {-1, stored version} when the version is stale.
-- With KEYS[4]: a record already there means this publish was made (a producer's
-- retry, or a client library resending the script after a lost connection) and
-- is answered with the first one's {offset, epoch}; nothing is published again.
if KEYS[4] then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local o, e = string.match(seen, '^(%d+) (.+)$')
    if o then return {tonumber(o), e} end
  end
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('DEL', KEYS[2])
end
if ARGV[6] == '1' and ARGV[7] ~= '' then
  local current = redis.call('HGET', KEYS[3], 'v')
  if current and current ~= '' and tonumber(current) >= tonumber(ARGV[7]) then
    return {-1, current}
  end
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local now = redis.call('TIME')
local ts = string.format('%d%06d', now[1], now[2])
local ttl = tonumber(ARGV[4])
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'd', ARGV[2], 't', ts)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[9]) or ttl) end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[3], 'o', offset, 'e', epoch, 'd', ARGV[2], 'v', ARGV[7])
end
redis.call(ARGV[8], ARGV[1], 'sb1:' .. offset .. ':' .. epoch .. ':' .. ts .. ':' .. ARGV[2])
if KEYS[4] then
  redis.call('SET', KEYS[4], offset .. ' ' .. epoch, 'PX', ARGV[10])
end
return {offset, epoch}
