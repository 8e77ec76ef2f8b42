//! A schedule kept in Redis: one key holding the next free slot, in microseconds of Redis's
//! own clock (`TIME`), changed only by the scripts below, which Redis runs one at a time. So
//! every process that uses the key draws from one schedule, and a machine whose clock is off
//! cannot take more than its place. The key expires a second after its last slot: an idle
//! schedule leaves nothing behind.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;

use crate::{Reservation, increment_micros, micros};

/// The arithmetic of [`Reservation::decide`], in Lua.
static RESERVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local next_free = tonumber(redis.call('GET', KEYS[1])) or 0
local increment = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local slot = math.max(next_free, now)
local ahead = slot - now
if ahead > horizon then
  return {0, ahead - horizon}
end
local after = slot + increment
redis.call('SET', KEYS[1], string.format('%d', after), 'PX', math.floor((after - now) / 1000) + 1000)
return {1, ahead}
",
    )
});

/// No slot before `now + ARGV[1]`.
static HOLD_OFF: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local pause = tonumber(ARGV[1])
local next_free = tonumber(redis.call('GET', KEYS[1])) or 0
if next_free < now + pause then
  redis.call('SET', KEYS[1], string.format('%d', now + pause), 'PX', math.floor(pause / 1000) + 1000)
end
return 0
",
    )
});

/// [`crate::LocalSchedule::reserve`] on the schedule at `key`.
pub async fn reserve<C: ConnectionLike>(
    connection: &mut C,
    key: &str,
    increment: Duration,
    horizon: Duration,
) -> redis::RedisResult<Reservation> {
    let (granted, wait): (i64, i64) = RESERVE
        .key(key)
        .arg(increment_micros(increment))
        .arg(micros(horizon))
        .invoke_async(connection)
        .await?;
    let wait = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
    Ok(if granted == 1 {
        Reservation::Slot(wait)
    } else {
        Reservation::Full(wait)
    })
}

/// [`crate::LocalSchedule::hold_off`] on the schedule at `key`.
pub async fn hold_off<C: ConnectionLike>(
    connection: &mut C,
    key: &str,
    pause: Duration,
) -> redis::RedisResult<()> {
    HOLD_OFF
        .key(key)
        .arg(micros(pause))
        .invoke_async(connection)
        .await
}
