//! From parsed items to deliveries: latency, loss by sequence gaps, slow readers apart.
//!
//! # Out of order
//!
//! With one publishing connection messages reach the server, and so every stream, in order.
//! With `--publishers N` they may not: message k+1 can overtake k. The publisher starts
//! message k only once every message up to k − N has been answered, and a server answers a
//! publish after giving it its place, so message k never arrives on a stream before one
//! numbered k − N or lower: a message is at most `N − 1 ≤` [`REORDER_WINDOW`]` − 1` places
//! late. A gap is counted as lost when it is seen, as always; a message arriving late, inside
//! the window, takes its loss back. Older than the window, or already seen: a duplicate.
//!
//! Pure: the meter records what it is given and does no I/O. In closed-loop mode an event
//! may need a send time the parent has written to the command pipe but the loop has not read
//! yet; [`Meter::needs_commands`] says so, and the caller, who owns the pipe
//! ([`Inbox`](crate::inbox::Inbox)), reads it and [`Meter::apply`]s each command before
//! handing the event over.

use crate::sse::Item;
use crate::stamp;
use crate::stats::{new_latency, Counters, Latency};
use crate::wire::{Command, Mode};

/// Messages whose broadcast completion is tracked (per-message worst latency).
const MAX_TRACKED: usize = 1 << 24;

/// How many places late a message may arrive and still count as received: the bits of
/// [`Acct::seen`], and so the most publishing connections a run may use.
pub const REORDER_WINDOW: u64 = u64::BITS as u64;

/// Loss accounting of one stream.
#[derive(Debug, Default, Clone, Copy)]
pub struct Acct {
    /// Reads nothing once established, until `Drain`.
    pub slow: bool,
    /// Next sequence number expected: one past the highest received (all below it were
    /// received or counted lost).
    pub next: u64,
    /// Which of the [`REORDER_WINDOW`] numbers below `next` were received: bit i for
    /// `next − 1 − i`.
    pub seen: u64,
    /// Events seen since `Start` (closed-loop mode pairs the n-th with the n-th POST).
    pub events: u64,
    /// The server said `: shed` (it closes the stream at capacity).
    pub shed: bool,
    /// The last `retry:` the server sent (ms): how long `--reconnect` waits after an end.
    pub retry_ms: Option<u64>,
    /// A `gap` or `reset` notice arrived and no message since: the numbers the next message
    /// skips were dropped or expired by the server's word (`--reconnect` runs only).
    pub covering: bool,
    /// Which numbers of the window below `next` were counted as lost *covered*, bit for bit
    /// like `seen`, so a late arrival takes back the right count.
    pub covered: u64,
    /// Events that were not this run's messages nor notices: the server's replay of events
    /// published before (`--storm`), or its own heartbeats.
    pub replayed: u64,
    /// When the last of those arrived (µs; 0: none).
    pub replayed_at_us: u64,
}

/// Where a sequence number falls on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// Past everything so far; `gap` numbers in between are missing.
    Ahead { gap: u64 },
    /// Below the highest so far, inside the window, not seen before: counted lost, now here.
    Late,
    /// Seen before, or older than the window.
    Duplicate,
}

impl Acct {
    /// Records that `seq` arrived and says where it fell.
    fn arrive(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            let shift = seq - self.next + 1;
            self.seen = if shift >= REORDER_WINDOW {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.covered = if shift >= REORDER_WINDOW {
                0
            } else {
                self.covered << shift
            };
            let gap = seq - self.next;
            self.next = seq + 1;
            return Arrival::Ahead { gap };
        }
        let back = self.next - 1 - seq;
        if back >= REORDER_WINDOW || self.seen & (1 << back) != 0 {
            return Arrival::Duplicate;
        }
        self.seen |= 1 << back;
        Arrival::Late
    }

    /// At the end of the run, with numbers `0..end` given out and `skipped` among them never
    /// published: the messages this stream never got past its highest (its loss grows by
    /// these), and the skipped numbers its gaps had counted as lost or lost covered (those
    /// shrink by these). Skipped numbers are the last few given out, inside the window.
    pub fn settle(&self, end: u64, skipped: &[u64]) -> Settled {
        let mut settled = Settled {
            tail: end.saturating_sub(self.next),
            ..Settled::default()
        };
        for &s in skipped {
            if s >= self.next {
                settled.tail = settled.tail.saturating_sub(1);
            } else {
                let back = self.next - 1 - s;
                if back < REORDER_WINDOW && self.seen & (1 << back) == 0 {
                    if self.covered & (1 << back) != 0 {
                        settled.not_covered += 1;
                    } else {
                        settled.not_lost += 1;
                    }
                }
            }
        }
        settled
    }
}

/// What [`Acct::settle`] found at the end of the run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Messages past the stream's highest that it never got: lost.
    pub tail: u64,
    /// Skipped numbers counted as lost: not lost after all.
    pub not_lost: u64,
    /// Skipped numbers counted as lost covered: not lost after all.
    pub not_covered: u64,
}

/// Counters and histograms, and what is needed to turn an event into a delivery.
pub struct Meter {
    /// What was counted so far.
    pub counters: Counters,
    /// Every latency of the run.
    pub total: Latency,
    /// Latencies since the last progress report.
    pub interval: Latency,
    /// Per message (by sequence number): the slowest fast stream's latency so far, µs.
    pub completion: Vec<u64>,
    mode: Mode,
    /// Closed-loop mode: `Start` arrived, events from now on are deliveries.
    measuring: bool,
    /// Closed-loop mode: scheduled send time of each message, by sequence number.
    sent: Vec<u64>,
    /// `--reconnect`: numbers skipped right after a `gap` or `reset` notice count as lost
    /// covered, not lost (without it every skipped number is lost, as it always was).
    cover: bool,
}

impl Meter {
    /// A meter for `mode`, starting from `counters`.
    pub fn new(mode: Mode, counters: Counters) -> Meter {
        Meter {
            counters,
            total: new_latency(),
            interval: new_latency(),
            completion: Vec::new(),
            mode,
            measuring: false,
            sent: Vec::new(),
            cover: false,
        }
    }

    /// Counts numbers a `gap` or `reset` notice announced as lost covered (`--reconnect`).
    pub fn covering_notices(mut self) -> Meter {
        self.cover = true;
        self
    }

    /// Messages whose send time is known (closed-loop mode), i.e. published so far.
    pub fn sent_count(&self) -> u64 {
        self.sent.len() as u64
    }

    /// Takes in one of the parent's commands: those about measuring (`Start`, `Sent`) apply
    /// here; any other is handed back for the loop.
    pub fn apply(&mut self, command: Command) -> Option<Command> {
        match command {
            Command::Start => self.measuring = true,
            Command::Sent { seq, at_us } => {
                let seq = seq as usize;
                // A POST that failed is retried under the same number with a new time.
                if seq < self.sent.len() {
                    self.sent[seq] = at_us;
                } else {
                    self.sent.resize(seq, at_us);
                    self.sent.push(at_us);
                }
            }
            other => return Some(other),
        }
        None
    }

    /// Whether `item` on the stream of `acct` needs a command this meter has not seen yet:
    /// closed-loop mode, an event, and no `Start` or no send time for it so far.
    ///
    /// The caller then reads the command pipe and [`apply`](Meter::apply)s what it got before
    /// [`on_item`](Meter::on_item): the parent writes `Start` and each `Sent` *before* the
    /// POST they describe, so when the event is here, so is the command, even if this turn's
    /// poll reported the stream before the pipe.
    pub fn needs_commands(&self, acct: &Acct, item: &Item<'_>) -> bool {
        self.mode == Mode::ClosedLoop
            && matches!(item, Item::Event { .. })
            && (!self.measuring || acct.events >= self.sent.len() as u64)
    }

    /// Accounts for one parsed item of a stream.
    pub fn on_item(&mut self, acct: &mut Acct, item: Item<'_>, now: u64) {
        let (event, data) = match item {
            Item::Event { event, data, .. } => (event, data),
            Item::Comment(b"shed") => {
                acct.shed = true;
                return;
            }
            Item::Retry(ms) => {
                acct.retry_ms = Some(ms);
                return;
            }
            Item::Comment(_) => return,
        };
        if matches!(event, "gap" | "reset") {
            // The server's word that what the next message skips was dropped or expired.
            acct.covering = self.cover && !acct.slow;
            self.counters.other_events += 1;
            return;
        }
        let stamped = match self.mode {
            Mode::Stamped => stamp::parse(data),
            Mode::ClosedLoop => {
                if !self.measuring {
                    // Not ours: the server's own events before publishing began.
                    self.counters.other_events += 1;
                    return;
                }
                let seq = acct.events;
                acct.events += 1;
                self.sent.get(seq as usize).map(|&at| (seq, at))
            }
        };
        let Some((seq, sent_us)) = stamped else {
            self.counters.other_events += 1;
            acct.replayed += 1;
            acct.replayed_at_us = now;
            return;
        };
        let covering = std::mem::take(&mut acct.covering);
        let gap = match acct.arrive(seq) {
            Arrival::Duplicate => {
                self.counters.duplicates += 1;
                return;
            }
            Arrival::Ahead { gap } => gap,
            Arrival::Late => {
                // Counted lost (or lost covered) with the gap it left; it came after all.
                let back = acct.next - 1 - seq;
                let lost = if acct.slow {
                    &mut self.counters.slow_lost
                } else if acct.covered & (1 << back) != 0 {
                    acct.covered &= !(1 << back);
                    &mut self.counters.lost_covered
                } else {
                    &mut self.counters.lost
                };
                *lost = lost.saturating_sub(1);
                0
            }
        };
        if acct.slow {
            self.counters.slow_received += 1;
            self.counters.slow_lost += gap;
        } else {
            self.counters.received += 1;
            if covering && gap > 0 {
                self.counters.lost_covered += gap;
                // Bits 1..=gap stand for the numbers just skipped (bit 0 is `seq` itself).
                let bits = if gap + 1 >= REORDER_WINDOW {
                    u64::MAX
                } else {
                    (1u64 << (gap + 1)) - 1
                };
                acct.covered |= bits & !1;
            } else {
                self.counters.lost += gap;
            }
            // Latency from the *scheduled* send time: a stalled server cannot hide its stall.
            let latency = now.saturating_sub(sent_us).max(1);
            self.total.saturating_record(latency);
            self.interval.saturating_record(latency);
            // A sequence number is the server's echo of ours; bound it all the same.
            if let Some(i) = usize::try_from(seq).ok().filter(|&i| i < MAX_TRACKED) {
                if self.completion.len() <= i {
                    self.completion.resize(i + 1, 0);
                }
                self.completion[i] = self.completion[i].max(latency);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A meter that has seen `Start` and three send times.
    fn meter(mode: Mode) -> Meter {
        let mut m = Meter::new(mode, Counters::default());
        m.measuring = true;
        m.sent = vec![100, 200, 300];
        m
    }

    #[test]
    fn stamped_events_count_gaps_and_duplicates() {
        let mut m = meter(Mode::Stamped);
        let mut acct = Acct::default();
        let mut deliver = |m: &mut Meter, seq: u64| {
            let body = stamp::body(seq, 1_000, 0);
            m.on_item(
                &mut acct,
                Item::Event {
                    event: "",
                    data: &body,
                    id: "",
                },
                1_500,
            );
        };
        // 2 never comes; 1 comes twice.
        for seq in [0, 1, 3, 4, 1] {
            deliver(&mut m, seq);
        }
        m.on_item(
            &mut acct,
            Item::Event {
                event: "",
                data: "Auto heartbeat",
                id: "",
            },
            0,
        );
        let c = &m.counters;
        assert_eq!(
            (c.received, c.lost, c.duplicates, c.other_events),
            (4, 1, 1, 1)
        );
        assert_eq!(m.total.len(), 4);
        assert!(m.total.equivalent(m.total.max(), 500));
    }

    #[test]
    fn completion_keeps_each_messages_slowest_fast_stream() {
        let mut m = meter(Mode::Stamped);
        let (mut a, mut b, mut slow) = (Acct::default(), Acct::default(), Acct::default());
        slow.slow = true;
        let body0 = stamp::body(0, 1_000, 0);
        let body1 = stamp::body(1, 2_000, 0);
        let event = |data: &str| Item::Event {
            event: "",
            data: leaked(data),
            id: "",
        };
        m.on_item(&mut a, event(&body0), 1_100);
        m.on_item(&mut b, event(&body0), 1_700);
        m.on_item(&mut a, event(&body1), 2_050);
        m.on_item(&mut b, event(&body1), 2_020);
        // A slow reader's late arrival is not the broadcast's completion.
        m.on_item(&mut slow, event(&body0), 9_000);
        assert_eq!(m.completion, vec![700, 50]);
    }

    /// Test helper: a `'static` copy of a body, for `Item`'s borrowed data.
    fn leaked(s: &str) -> &'static str {
        Box::leak(s.to_owned().into_boxed_str())
    }

    #[test]
    fn closed_loop_pairs_the_nth_event_with_the_nth_post() {
        let mut m = meter(Mode::ClosedLoop);
        let mut acct = Acct::default();
        for _ in 0..4 {
            m.on_item(
                &mut acct,
                Item::Event {
                    event: "",
                    data: "x",
                    id: "",
                },
                1_000,
            );
        }
        assert_eq!((m.counters.received, m.counters.other_events), (3, 1));
        assert!(m.total.equivalent(m.total.min(), 700));
        assert!(m.total.equivalent(m.total.max(), 900));
    }

    #[test]
    fn events_before_start_are_not_deliveries() {
        let mut m = meter(Mode::ClosedLoop);
        m.measuring = false;
        let mut acct = Acct {
            slow: true,
            ..Acct::default()
        };
        let event = |data| Item::Event {
            event: "",
            data,
            id: "",
        };
        m.on_item(&mut acct, event("Auto heartbeat #1"), 200);
        m.on_item(&mut acct, Item::Comment(b"shed"), 200);
        assert_eq!((m.counters.received, m.counters.other_events), (0, 1));
        assert!(acct.shed);
        m.measuring = true;
        m.on_item(&mut acct, event("x"), 200);
        assert_eq!((m.counters.slow_received, m.total.len()), (1, 0));
    }

    #[test]
    fn closed_loop_asks_for_commands_only_when_an_event_needs_one() {
        let mut m = Meter::new(Mode::ClosedLoop, Counters::default());
        let mut acct = Acct::default();
        let event = || Item::Event {
            event: "",
            data: "x",
            id: "",
        };
        // Before `Start`, an event may be the first delivery: the pipe must be read first.
        assert!(m.needs_commands(&acct, &event()));
        assert!(!m.needs_commands(&acct, &Item::Comment(b"keepalive")));
        assert_eq!(m.apply(Command::Start), None);
        assert!(m.needs_commands(&acct, &event()));
        assert_eq!(m.apply(Command::Sent { seq: 0, at_us: 100 }), None);
        assert!(!m.needs_commands(&acct, &event()));
        m.on_item(&mut acct, event(), 400);
        assert!(m.needs_commands(&acct, &event()));
        // A retried POST moves its send time; loop commands come back untouched.
        assert_eq!(m.apply(Command::Sent { seq: 1, at_us: 500 }), None);
        assert_eq!(m.apply(Command::Sent { seq: 1, at_us: 600 }), None);
        assert_eq!(m.sent_count(), 2);
        assert_eq!(m.apply(Command::Drain), Some(Command::Drain));
        // Stamped mode never needs the pipe.
        let stamped = Meter::new(Mode::Stamped, Counters::default());
        assert!(!stamped.needs_commands(&Acct::default(), &event()));
    }

    #[test]
    fn a_late_message_inside_the_window_takes_its_loss_back() {
        let mut m = meter(Mode::Stamped);
        let mut acct = Acct::default();
        let deliver = |m: &mut Meter, acct: &mut Acct, seq: u64| {
            let body = stamp::body(seq, 1_000, 0);
            m.on_item(
                acct,
                Item::Event {
                    event: "",
                    data: leaked(&body),
                    id: "",
                },
                1_500,
            );
        };
        // Four publishing connections: 2 overtakes 1 and 0, 5 overtakes 4, 3 comes twice.
        for seq in [2, 0, 1, 3, 5, 4, 3] {
            deliver(&mut m, &mut acct, seq);
        }
        let c = &m.counters;
        assert_eq!((c.received, c.lost, c.duplicates), (6, 0, 1));
        assert_eq!(m.total.len(), 6);
        assert_eq!(m.completion.len(), 6);
        // Beyond the window a late number cannot be told from a duplicate.
        deliver(&mut m, &mut acct, 5 + REORDER_WINDOW + 1);
        assert_eq!(m.counters.lost, REORDER_WINDOW);
        deliver(&mut m, &mut acct, 6);
        assert_eq!(
            (m.counters.lost, m.counters.duplicates),
            (REORDER_WINDOW, 2)
        );
        deliver(&mut m, &mut acct, 7);
        assert_eq!(m.counters.lost, REORDER_WINDOW - 1);
    }

    #[test]
    fn settling_counts_the_tail_and_forgives_skipped_numbers() {
        let mut acct = Acct::default();
        for seq in [0, 1, 3, 4] {
            acct.arrive(seq);
        }
        let s = |tail, not_lost| Settled {
            tail,
            not_lost,
            not_covered: 0,
        };
        // Five numbers given out, all published: nothing past 4 is missing.
        assert_eq!(acct.settle(5, &[]), s(0, 0));
        // Eight given out, 2 and 6 never published: 5 and 7 are the tail, 2 is no loss.
        assert_eq!(acct.settle(8, &[2, 6]), s(2, 1));
        // A stream that got nothing misses everything but the skipped.
        assert_eq!(Acct::default().settle(8, &[2, 6]), s(6, 0));
        // One connection, nothing skipped: the tail is what it was.
        assert_eq!(acct.settle(9, &[]), s(4, 0));
    }

    #[test]
    fn numbers_skipped_after_a_notice_are_lost_covered_and_replays_are_duplicates() {
        let mut m = meter(Mode::Stamped).covering_notices();
        let mut acct = Acct::default();
        let deliver = |m: &mut Meter, acct: &mut Acct, seq: u64| {
            let body = stamp::body(seq, 1_000, 0);
            m.on_item(
                acct,
                Item::Event {
                    event: "",
                    data: leaked(&body),
                    id: "",
                },
                1_500,
            );
        };
        let notice = |m: &mut Meter, acct: &mut Acct, name: &'static str| {
            m.on_item(
                acct,
                Item::Event {
                    event: name,
                    data: "{}",
                    id: "",
                },
                1_500,
            )
        };
        deliver(&mut m, &mut acct, 0);
        // A gap notice, then 1..=3 skipped: covered, not lost.
        notice(&mut m, &mut acct, "gap");
        deliver(&mut m, &mut acct, 4);
        // No notice before this skip: lost.
        deliver(&mut m, &mut acct, 6);
        // A reconnect replays 4 and 6 again (duplicates), then 5 arrives late: the loss of 5
        // is taken back; then 2 arrives late too: the covered count is taken back.
        deliver(&mut m, &mut acct, 4);
        deliver(&mut m, &mut acct, 6);
        deliver(&mut m, &mut acct, 5);
        deliver(&mut m, &mut acct, 2);
        notice(&mut m, &mut acct, "reset");
        deliver(&mut m, &mut acct, 9);
        let c = &m.counters;
        assert_eq!(
            (c.received, c.lost, c.lost_covered, c.duplicates),
            (6, 0, 2 + 2, 2)
        );
        assert_eq!(c.other_events, 2);
        // The server's own events between messages are replays, not notices.
        m.on_item(
            &mut acct,
            Item::Event {
                event: "",
                data: "from before",
                id: "1",
            },
            7_000,
        );
        assert_eq!((acct.replayed, acct.replayed_at_us), (1, 7_000));
        m.on_item(&mut acct, Item::Retry(250), 0);
        assert_eq!(acct.retry_ms, Some(250));
        // Without --reconnect a notice covers nothing: the skip is lost, as it always was.
        let mut plain = meter(Mode::Stamped);
        let mut acct = Acct::default();
        deliver(&mut plain, &mut acct, 0);
        notice(&mut plain, &mut acct, "gap");
        deliver(&mut plain, &mut acct, 3);
        assert_eq!((plain.counters.lost, plain.counters.lost_covered), (2, 0));
    }
}
