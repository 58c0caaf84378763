"""The Lua scripts that write the hot cache (run by the materializer, ``pipeline/materialize.py``).
The key layout they write is in ``keys.py``; the argument layout is described in each."""

APPLY_CHANGES = """
-- One tenant's changes from one partition batch.
-- KEYS[1] the tenant's applied offset of the partition; then 4 keys per change.
-- ARGV[1] window, ARGV[2] feed retention (changes), ARGV[3] first offset to push to
-- the feed (a rebuild re-applies history that subscribers have already been sent),
-- ARGV[4] the batch's last offset (records that were not changes still count as read),
-- ARGV[5] feed retention in ms (older changes are trimmed); then 11 per change: kind ('s' state,
-- 'w' window), subject, seq, at (ms), v (event JSON), type, context type, offset, event id,
-- sensitivity digit, quality ('' when not scored).
local applied = tonumber(redis.call('GET', KEYS[1]) or '-1')
local window = tonumber(ARGV[1])
local retention = ARGV[2]
local push_from = tonumber(ARGV[3])
local n = (#KEYS - 1) / 4
local per = 11
local last = math.max(applied, tonumber(ARGV[4]))
local changed = 0
local fk = nil
for i = 0, n - 1 do
  local a = 6 + i * per
  local off = tonumber(ARGV[a + 7])
  if off > applied then
    if off > last then last = off end
    local ck, wk, rk = KEYS[2 + i*4], KEYS[3 + i*4], KEYS[4 + i*4]
    local kind, subject, seq, at, v = ARGV[a], ARGV[a+1], ARGV[a+2], ARGV[a+3], ARGV[a+4]
    local sens, q = ARGV[a+9], ARGV[a+10]
    local apply = true
    if kind == 's' then
      local cur_seq = redis.call('HGET', ck, 'seq')
      if cur_seq and tonumber(cur_seq) >= tonumber(seq) then apply = false end
    elseif ARGV[a+8] ~= '' then
      -- stream types: an event already in the window (routed twice after a crash) is skipped
      local idk = wk .. ':ids'
      if redis.call('ZADD', idk, 'NX', off, ARGV[a+8]) == 0 then
        apply = false
      else
        redis.call('ZREMRANGEBYRANK', idk, 0, -(window + 1))
      end
    end
    if apply then
      if kind == 'w' then
        redis.call('LPUSH', wk, sens .. v)
        redis.call('LTRIM', wk, 0, window - 1)
      end
      redis.call('HSET', ck, 'seq', seq, 'at', at, 'v', v, 'sens', sens, 'q', q)
      redis.call('HINCRBY', ck, 'count', 1)
      redis.call('ZADD', rk, at, subject)
      if off >= push_from then
        fk = KEYS[5 + i*4]
        redis.call('XADD', fk, 'MAXLEN', '~', retention, '*',
                   'ct', ARGV[a+6], 'type', ARGV[a+5], 'subject', subject, 'seq', seq, 'at', at, 'v', v,
                   'sens', sens, 'q', q)
      end
      changed = changed + 1
    end
  end
end
if fk then
  local t = redis.call('TIME')
  redis.call('XTRIM', fk, 'MINID', '~', tonumber(t[1]) * 1000 - tonumber(ARGV[5]))
end
if last > applied then redis.call('SET', KEYS[1], last) end
return changed
"""

# The partition's offset, after its tenants' scripts: only ever moves forward.
ADVANCE_OFFSET = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
"""
