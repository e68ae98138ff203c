//! The Lua scripts behind the room leases: each runs atomically in Redis,
//! so check-and-set needs no lock and no transaction retries.
//!
//! A lease's value is `shard:epoch`. The epoch counter (`epoch:{room}`)
//! only rises: acquire sets it to `max(counter, floor) + 1`, where the
//! floor is the owner epoch the store last saw for the room, so even a
//! Redis that lost its data never hands out an epoch at or below one the
//! store has already been fenced with.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: lease, epoch counter, the shard's room set.
/// ARGV: shard, floor, lease ms, room id, the epoch this process holds the
/// room at (0: none).
/// Returns `{1, epoch}` when taken (or already this process's: renewed),
/// `{0, "shard:epoch"}` when another shard holds it, or another process
/// with this shard's id took it after this one (this one is stale).
///
/// A lease naming this shard at an epoch this process did not take is a
/// former incarnation's (the shard restarted within its lease, same id):
/// it is taken over at a new epoch, never re-used, so the store's fence
/// and the edges tell the two processes apart and the old one, should it
/// still run (frozen, say), loses the lease at its next renewal.
pub(super) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':[^:]*$')
  if sep and string.sub(cur, 1, sep - 1) == ARGV[1] then
    local held = tonumber(ARGV[5])
    if tonumber(string.sub(cur, sep + 1)) == held then
      redis.call('PEXPIRE', KEYS[1], ARGV[3])
      redis.call('SADD', KEYS[3], ARGV[4])
      return {1, string.sub(cur, sep + 1)}
    end
    if held ~= 0 then
      return {0, cur}
    end
  else
    return {0, cur}
  end
end
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(ARGV[2])
if epoch < floor then epoch = floor end
epoch = epoch + 1
redis.call('SET', KEYS[2], string.format('%d', epoch))
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%d', epoch), 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return {1, string.format('%d', epoch)}
"#,
    )
});

/// One batch for every lease a shard holds.
/// KEYS: per room, its lease then its epoch counter, then last the
/// shard's room set. ARGV: lease ms, shard, then per room its id and
/// epoch. Returns per room: 1 renewed, 2 re-asserted (the lease was gone
/// and nobody took the room since: the counter is not past our epoch),
/// 0 lost.
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = (#KEYS - 1) / 2
local set = KEYS[#KEYS]
local out = {}
for i = 1, n do
  local lease = KEYS[2 * i - 1]
  local counter = KEYS[2 * i]
  local room = ARGV[1 + 2 * i]
  local epoch = tonumber(ARGV[2 + 2 * i])
  local mine = ARGV[2] .. ':' .. string.format('%d', epoch)
  local cur = redis.call('GET', lease)
  if cur == mine then
    redis.call('PEXPIRE', lease, ARGV[1])
    out[i] = 1
  elseif not cur and tonumber(redis.call('GET', counter) or '0') <= epoch then
    redis.call('SET', counter, string.format('%d', epoch))
    redis.call('SET', lease, mine, 'PX', ARGV[1])
    redis.call('SADD', set, room)
    out[i] = 2
  else
    -- Another process with this shard's id may hold it now (a restart):
    -- the room stays in the set it shares with that one.
    if not cur or string.sub(cur, 1, #ARGV[2] + 1) ~= ARGV[2] .. ':' then
      redis.call('SREM', set, room)
    end
    out[i] = 0
  end
end
return out
"#,
    )
});

/// KEYS: lease, the shard's room set. ARGV: `shard:epoch`, room id.
/// Deletes the lease only if it is still ours; returns 1 if it was. The
/// room leaves the set unless another process with this shard's id (a
/// restart) holds it now.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
-- Held by a later process with this shard's id: its room set keeps it.
local shard = string.sub(ARGV[1], 1, string.find(ARGV[1], ':[^:]*$') - 1)
if not cur or string.sub(cur, 1, #shard + 1) ~= shard .. ':' then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 0
"#,
    )
});

/// KEYS: the player's entry. ARGV: shard, session, room, resume, now ms,
/// ttl ms. Replaces the entry and returns the previous holder as
/// `{shard, session, room}` (empty strings when there was none).
pub(super) static CLAIM_PLAYER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local prev = redis.call('HMGET', KEYS[1], 'shard', 'session', 'room')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'shard', ARGV[1], 'session', ARGV[2], 'room', ARGV[3],
  'resume', ARGV[4], 'updated_at', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {prev[1] or '', prev[2] or '', prev[3] or ''}
"#,
    )
});

/// KEYS: the player's entry. ARGV: shard, session, then field/value pairs
/// to set, then (last) ttl ms. Only the current holder's session may
/// update (or refresh) it; returns 1 if it did.
pub(super) static UPDATE_PLAYER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('HMGET', KEYS[1], 'shard', 'session')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
for i = 3, #ARGV - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[#ARGV])
return 1
"#,
    )
});

/// KEYS: the player's entry. ARGV: shard, session. Deletes it only if
/// that session still holds it.
pub(super) static RELEASE_PLAYER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('HMGET', KEYS[1], 'shard', 'session')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#,
    )
});

/// Look at one shard that may be dead.
/// KEYS: its alive key, its record, the set of shards.
/// ARGV: its id, now (unix ms), how long a dead record is kept (ms).
/// Returns 0 (alive, or its death was reported already), 1 (newly found
/// dead: the caller reports it; the record is marked `down` so no other
/// shard reports it again) or 2 (dead for longer than the keep: its record
/// was removed).
pub(super) static REAP_SHARD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local updated = tonumber(redis.call('HGET', KEYS[2], 'updated_at') or '0') or 0
if updated + tonumber(ARGV[3]) < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[1])
  return 2
end
if redis.call('HEXISTS', KEYS[2], 'down') == 1 then return 0 end
redis.call('HSET', KEYS[2], 'down', ARGV[2])
return 1
"#,
    )
});

/// KEYS: the player's entry. ARGV: shard, session, expected session ('':
/// a fresh login, no check), updated_at, ttl ms. A resume (expected set)
/// is refused when neither the session holding the entry nor the entry's
/// current token (`resume`) is the expected one (the token was used
/// already, or a newer login came since); an absent entry is taken (it
/// expired, or Redis lost it). The room field is kept: the new session
/// takes the seat over, and until its join reaches the room the seat is
/// still where it was. A resume keeps the token it used current
/// (`resume`) until the new session records its own once its welcome is
/// sent ([`UPDATE_PLAYER`]): a shard that dies in between does not burn
/// it. Returns {status, prev shard, prev session, prev room}, status
/// 'taken' or 'reused'.
pub(super) static CLAIM_CHECKED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local prev = redis.call('HMGET', KEYS[1], 'shard', 'session', 'room', 'resume')
local shard, session, room, resume = prev[1] or '', prev[2] or '', prev[3] or '', prev[4] or ''
if ARGV[3] ~= '' and session ~= '' and session ~= ARGV[3] and resume ~= ARGV[3] then
  return {'reused', shard, session, room}
end
local token = ARGV[2]
if ARGV[3] ~= '' then token = ARGV[3] end
redis.call('HSET', KEYS[1], 'shard', ARGV[1], 'session', ARGV[2], 'room', room,
  'resume', token, 'updated_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'taken', shard, session, room}
"#,
    )
});

/// KEYS: the player's entry. ARGV: shard, session, room, updated_at, ttl
/// ms. Writes the entry if it is absent or this session's (Redis came
/// back empty, or missed updates while it was down); leaves another
/// session's alone. Returns 1 if it wrote.
pub(super) static REASSERT_PLAYER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('HMGET', KEYS[1], 'shard', 'session')
if cur[2] and (cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'shard', ARGV[1], 'session', ARGV[2], 'room', ARGV[3],
  'resume', ARGV[2], 'updated_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#,
    )
});

/// A live migration moves a lease by compare-and-set.
/// KEYS: lease, epoch counter, the old holder's room set, the new
/// holder's room set. ARGV: the expected `shard:epoch`, the new shard,
/// lease ms, room id. When the lease is still the expected one, it becomes
/// `new shard:max(counter, epoch) + 1` (the counter follows) and the room
/// changes sets: returns `{1, new epoch}`. Otherwise nothing changes:
/// returns `{0, current value or ''}`.
pub(super) static MOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then
  return {0, cur or ''}
end
local sep = string.find(ARGV[1], ':[^:]*$')
local epoch = tonumber(string.sub(ARGV[1], sep + 1))
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter > epoch then epoch = counter end
epoch = epoch + 1
redis.call('SET', KEYS[2], string.format('%d', epoch))
redis.call('SET', KEYS[1], ARGV[2] .. ':' .. string.format('%d', epoch), 'PX', ARGV[3])
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[4])
return {1, string.format('%d', epoch)}
"#,
    )
});
