//! Timers: the ticker, keep-alives, request and linger deadlines, accept back-off and idle
//! topics, all riding on the poll timeout (no timer wheel, no timer per stream).

use super::*;

impl Shard {
    pub(super) fn fire_timers(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            // Connections may have waited meanwhile; no new edge would say so.
            self.listener_ready = true;
            self.accept_some();
        }
        if self.next_cap_check.is_some_and(|t| t <= now) {
            self.enforce_request_cap();
        }
        let now_ticks = self.ticks_at(now);
        while let Some(&Reverse((due, key))) = self.deadlines.peek() {
            if due > now_ticks {
                break;
            }
            self.deadlines.pop();
            self.expire(key as usize, now);
        }
        // After a crowd of connections has become streams (or gone), the heap of their old
        // deadlines gives its memory back.
        // Never below the starting size: that one is mapped, and costs only what is touched.
        let floor = BIG / std::mem::size_of::<Reverse<(u32, u32)>>();
        self.deadlines_other = self.deadlines_other.min(self.deadlines.len());
        if moot_deadlines_due(
            (self.deadlines.len(), self.deadlines.capacity()),
            floor,
            self.requesting_now + self.deadlines_other,
        ) {
            // Only the entries of connections that still have a deadline stay (requests and
            // lingering ones): a stream's was moot once it started.
            let clients = &self.clients;
            self.deadlines.retain(|&Reverse((_, key))| {
                clients
                    .get(key as usize)
                    .is_some_and(|c| c.deadline().is_some())
            });
            self.deadlines_other = self.deadlines.len().saturating_sub(self.requesting_now);
        }
        if self.deadlines.capacity() > floor && self.deadlines.len() < self.deadlines.capacity() / 8
        {
            self.deadlines
                .shrink_to((self.deadlines.len() * 2).max(floor));
        }
        let mut budget = EXPIRIES_PER_TURN;
        while let Some(&Reverse((due, key, serial))) = self.expiries.peek() {
            if due > now_ticks || budget == 0 {
                break; // what is left is due next turn: the poll timeout is then zero
            }
            budget -= 1;
            self.expiries.pop();
            self.end_expired(key as usize, serial);
        }
        if let (Some(at), Some(period)) = (self.next_tick, self.config.tick_period()) {
            if at <= now {
                // Handing over, the successor ticks on (one ticker per node).
                if self.handing.is_none() {
                    let text = format!("Auto heartbeat #{}", self.hub.next_heartbeat());
                    self.publish_tick(&text);
                }
                self.next_tick = Some(next_after(at, period, now));
            }
        }
        if self.next_release.is_some_and(|at| at <= now) {
            self.release_unused_queues();
        }
        if self.next_forget.is_some_and(|at| at <= now) {
            let forgotten = self.hub.forget_idle(self.config.topic_idle_period());
            if forgotten > 0 {
                debug!(forgotten, "forgot idle topics");
            }
            self.next_forget = Some(now + forget_period(&self.config));
        }
        if let (Some(at), Some(period)) = (self.next_keepalive, self.config.keepalive_period()) {
            if at <= now {
                self.send_keepalives();
                // Checking every half period bounds the silence on a stream by one period.
                self.next_keepalive = Some(next_after(at, period / 2, now));
            }
        }
    }

    /// Closes `key` if its current deadline has passed; re-arms it if it moved later.
    pub(super) fn expire(&mut self, key: usize, now: Instant) {
        let Some(client) = self.clients.get(key) else {
            return;
        };
        if client.handed {
            return; // its deadline is set again if the hand-over is called off
        }
        if let Phase::Request(state) = &client.phase {
            if state.awaiting.is_some() {
                // Its request is complete and waits for the broker's answer (Redis may be
                // slow): the deadline is for sending a request, not for our answer. Closing
                // now would drop an answer to a publish that was made, and the client would
                // publish it again. Look again later; the deadline moves once it is answered.
                let later = now + self.config.header_timeout();
                self.set_deadline(key, later);
                return;
            }
        }
        match client.deadline() {
            Some(deadline) if deadline <= now => {
                if self.waiting_for_first_turn(key) {
                    return; // its ClientHello came; the wait is the node's (shard/handshakes.rs)
                }
                let client = &self.clients[key];
                if client.phase_is_h2() {
                    return self.h2_timed_out(key);
                }
                if matches!(client.phase, Phase::Request(_)) {
                    self.counters.add(Stat::HeaderTimeouts, 1);
                    debug!(
                        shard = self.id,
                        key, "request not complete in time; closing"
                    );
                }
                self.close(key);
            }
            Some(deadline) => self.set_deadline(key, deadline),
            None => {}
        }
    }
}

impl Shard {
    /// Schedules the end of stream `key` (on the connection of serial `serial`), whose token
    /// expires at `exp` (unix seconds).
    pub(super) fn schedule_expiry(&mut self, key: usize, serial: u32, exp: u64) {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let salt = (key as u64) << 32 | u64::from(serial);
        let due = self.ticks_at(self.now + close_delay(exp, now_ms, salt));
        match u32::try_from(key) {
            Ok(key32) => self.expiries.push(Reverse((due, key32, serial))),
            // Slab keys never get this far (the quota stops them long before).
            Err(_) => {
                if let Some(conn) = self.streams.get(key).map(Stream::conn) {
                    self.close(conn);
                }
            }
        }
    }
}

impl Shard {
    /// `at` in [`TICK`]s since the shard started, rounded down (so a stream is closed
    /// early rather than late, and a due entry is one whose tick has begun).
    pub(super) fn ticks_at(&self, at: Instant) -> u32 {
        tick_floor(at.saturating_duration_since(self.started))
    }

    /// Schedules a look at `key` at `at` (its request or linger deadline), rounded up to the
    /// next tick, so it is never looked at before it is due (and a deadline after `now` is
    /// never due in `now`'s tick).
    pub(super) fn set_deadline(&mut self, key: usize, at: Instant) {
        let ticks = tick_ceil(at.saturating_duration_since(self.started));
        // Slab keys stay far below u32::MAX: the quotas bound them.
        self.deadlines.push(Reverse((ticks, key as u32)));
    }
}

/// Whether the deadline heap, holding `len` entries in room for `capacity`, should drop the
/// entries of connections that no longer have a deadline, now rather than when each falls
/// due (--header-timeout after it was set): once a storm grew the heap past the size it
/// started at (`floor`, whose memory costs only what is touched), when more than half its
/// entries must be moot, there being about `live` connections with a deadline. Each walk
/// then removes at least as many entries as it keeps, so its cost is paid by their pushes.
fn moot_deadlines_due((len, capacity): (usize, usize), floor: usize, live: usize) -> bool {
    capacity > floor && len > live.saturating_mul(2)
}

/// `elapsed` in whole [`TICK`]s, rounded down.
fn tick_floor(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_nanos() / TICK.as_nanos()).unwrap_or(u32::MAX)
}

/// `elapsed` in [`TICK`]s, rounded up to the whole nanosecond: a deadline 0.5 ms into a tick
/// lands on the next one, so one later than `now` is never due in `now`'s tick (else it
/// would be due at once, again and again, in the same turn).
pub(super) fn tick_ceil(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_nanos().div_ceil(TICK.as_nanos())).unwrap_or(u32::MAX)
}

/// A stream is closed this long before its token's `exp`, at least, so that no event is
/// delivered on an expired token even with a poll turn of delay.
const EXPIRY_MARGIN_MS: u64 = 1_000;
/// ...and at most this much earlier again, spread per stream: a million tokens minted in the
/// same second expire over this window, not in one turn.
const EXPIRY_SPREAD_MS: u64 = 4_000;

/// How long from `now_ms` (unix milliseconds) until a stream whose token expires at `exp`
/// (unix seconds) is closed: at a point in `[exp - margin - spread, exp - margin]` chosen by
/// `salt`, the spread shrunk to half the time left so a short-lived token is not cut at once.
pub(super) fn close_delay(exp: u64, now_ms: u64, salt: u64) -> Duration {
    let latest = exp.saturating_mul(1000).saturating_sub(EXPIRY_MARGIN_MS);
    let left = latest.saturating_sub(now_ms);
    let spread = EXPIRY_SPREAD_MS.min(left / 2);
    // splitmix64's finaliser: neighbouring keys land far apart in the window.
    let mut z = salt.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_millis(left - z % (spread + 1))
}

/// How often idle topics are looked for: a quarter of `--topic-idle`, within
/// [`FORGET_PERIOD`], so a topic outlives its idle period by at most a quarter of it (or a
/// minute).
pub(super) fn forget_period(config: &Config) -> Duration {
    (config.topic_idle_period() / 4).clamp(FORGET_PERIOD.0, FORGET_PERIOD.1)
}

/// The next firing of a periodic timer that was due at `at`; skips missed periods.
pub(super) fn next_after(at: Instant, period: Duration, now: Instant) -> Instant {
    let next = at + period;
    if next > now {
        next
    } else {
        now + period
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A deadline after `now` is never due in `now`'s tick; one at or before it is due
        /// by the tick after. (A deadline 0.5 ms into the tick of `now` once fell in it,
        /// and the timer loop popped and pushed it back forever.)
        #[test]
        fn a_later_deadline_is_never_due_now(now_ns in 0u64..10_000_000_000, ahead_ns in 1u64..1_000_000_000) {
            let now = Duration::from_nanos(now_ns);
            let deadline = now + Duration::from_nanos(ahead_ns);
            prop_assert!(tick_ceil(deadline) > tick_floor(now));
            prop_assert!(tick_ceil(now) <= tick_floor(now) + 1);
        }
    }

    #[test]
    fn a_storm_that_became_streams_drops_its_deadlines_and_nothing_else_does() {
        let floor = 16_384;
        // A storm still in the request phase: every entry is live.
        assert!(!moot_deadlines_due((19_000, 32_768), floor, 19_000));
        // Half of it became streams: not yet (a walk would keep as much as it drops).
        assert!(!moot_deadlines_due((19_000, 32_768), floor, 9_500));
        // Most of it did: their entries are moot.
        assert!(moot_deadlines_due((19_000, 32_768), floor, 20));
        // Within the starting size, nothing is walked: that memory is the heap's anyway.
        assert!(!moot_deadlines_due((9_000, floor), floor, 0));
    }

    #[test]
    fn half_a_millisecond_into_a_tick_is_the_next_tick() {
        let deadline = Duration::from_micros(1_300_500);
        let now = Duration::from_micros(1_300_200);
        assert_eq!((tick_ceil(deadline), tick_floor(now)), (14, 13));
    }

    const EXP: u64 = 1_800_000_000;

    #[test]
    fn streams_close_before_exp_within_the_spread() {
        let now = (EXP - 3600) * 1000;
        let mut seen = std::collections::HashSet::new();
        for salt in 0..10_000u64 {
            let delay = close_delay(EXP, now, salt).as_millis() as u64;
            let at = now + delay;
            assert!(at <= EXP * 1000 - EXPIRY_MARGIN_MS, "salt {salt}: {at}");
            assert!(at >= EXP * 1000 - EXPIRY_MARGIN_MS - EXPIRY_SPREAD_MS);
            seen.insert(at / 100);
        }
        // Spread over the whole window, not bunched: every 100 ms slot of the 4 s is used.
        assert_eq!(seen.len(), 41);
    }

    #[test]
    fn a_short_token_keeps_half_its_time_and_a_past_one_closes_now() {
        let now = EXP * 1000 - 3000; // expires in 3 s: closes within [2 s - 1 s, 2 s] from now
        for salt in 0..1000 {
            let delay = close_delay(EXP, now, salt).as_millis() as u64;
            assert!((1000..=2000).contains(&delay), "{delay}");
        }
        assert_eq!(close_delay(EXP, EXP * 1000 - 500, 7), Duration::ZERO);
        assert_eq!(close_delay(EXP, EXP * 1000 + 60_000, 7), Duration::ZERO);
        assert!(close_delay(u64::MAX, 0, 7) > Duration::ZERO);
    }
}
