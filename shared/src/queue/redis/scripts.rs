//! The Lua scripts: each moves an entry between keys atomically, and none
//! touches more than a bounded number of entries per call.

use std::sync::LazyLock;

use redis::Script;

/// Moves up to `ARGV[2]` due members of the delayed set into the stream.
/// KEYS: delayed, stream. ARGV: now (ms), limit.
/// Returns `{moved, next due score or "-1"}`.
pub static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local m = cjson.decode(member)
  redis.call('XADD', KEYS[2], '*', unpack(m.f))
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then return {#due, nxt[2]} end
return {#due, '-1'}
",
    )
});

/// Finishes a failed attempt by scheduling the next one.
/// KEYS: stream, delayed, stats. ARGV: group, entry id, due (ms), member, wake channel.
pub static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('HINCRBY', KEYS[3], 'retried', 1)
redis.call('PUBLISH', ARGV[5], ARGV[3])
return 1
",
    )
});

/// Moves an entry whose attempts are exhausted to the dead letters.
/// KEYS: stream, dead, stats. ARGV: group, entry id, cap, fields….
pub static BURY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('HINCRBY', KEYS[3], 'dead', 1)
return 1
",
    )
});

/// Hands unstarted entries back: re-adds each at the stream's end, then
/// acknowledges and deletes the old one. KEYS: stream. ARGV: group, ids….
pub static HANDBACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = 0
for i = 2, #ARGV do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if e[1] then
    redis.call('XADD', KEYS[1], '*', unpack(e[1][2]))
    n = n + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
return n
",
    )
});

/// Resets the idle time of the listed entries this consumer still owns
/// (never taking back one another consumer reclaimed).
/// KEYS: stream. ARGV: group, consumer, ids…. Returns how many were renewed.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local owned = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100000, ARGV[2])) do
  owned[p[1]] = true
end
local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do
  if owned[ARGV[i]] then args[#args + 1] = ARGV[i] end
end
if #args == 5 then return 0 end
args[#args + 1] = 'JUSTID'
return #redis.call(unpack(args))
",
    )
});

/// Re-enqueues one dead entry with its attempts reset.
/// KEYS: dead, stream, stats. ARGV: dead entry id. Returns 1 when revived.
pub static REVIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if not e[1] then return 0 end
local f = e[1][2]
local out = {}
for i = 1, #f, 2 do
  local k = f[i]
  if k ~= 'error' and k ~= 'died_at' and k ~= 'attempt' then
    out[#out + 1] = k
    out[#out + 1] = f[i + 1]
  end
end
out[#out + 1] = 'attempt'
out[#out + 1] = '0'
redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'revived', 1)
return 1
",
    )
});
