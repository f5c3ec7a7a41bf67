//! Timers: the ticker, keep-alives, request and linger deadlines, accept back-off and idle
//! topics, all riding on the poll timeout (no timer wheel, no timer per stream).

use super::*;

impl Shard {
    pub(super) fn fire_timers(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.accept_all();
        }
        while let Some(&Reverse((due, key))) = self.deadlines.peek() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            self.expire(key, now);
        }
        if let (Some(at), Some(period)) = (self.next_tick, self.config.tick_period()) {
            if at <= now {
                self.ticks += 1;
                let text = format!("Auto heartbeat #{}", self.ticks);
                self.publish_tick(&text);
                self.next_tick = Some(next_after(at, period, now));
            }
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
        match client.deadline() {
            Some(deadline) if deadline <= now => {
                if matches!(client.phase, Phase::Request(_)) {
                    self.counters.add(Stat::HeaderTimeouts, 1);
                    debug!(
                        shard = self.id,
                        key, "request not complete in time; closing"
                    );
                }
                self.close(key);
            }
            Some(deadline) => self.deadlines.push(Reverse((deadline, key))),
            None => {}
        }
    }
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
