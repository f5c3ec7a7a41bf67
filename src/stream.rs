//! One event stream's delivery state: which topics it carries, where its replay ended, and
//! what it has lost. Pure: the shard hands it frames and its outbox; no sockets here.
//!
//! The per-event path is [`Stream::offer`]: skip what the replay already sent, else try the
//! bounded queue. A stream that cannot take a frame starts a [`Gap`] (the only allocation,
//! and only on the slow path); the first frame that fits afterwards goes out behind an
//! `event: gap` notice naming what was lost, so the client can reconnect with its
//! `Last-Event-ID` and have it replayed. A stream that keeps losing for the slow-client
//! timeout is told to go.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::outbox::Outbox;
use crate::sse;

/// A streaming connection's subscription and loss record.
#[derive(Debug)]
pub struct Stream {
    /// For each topic carried: the shard's topic index and this stream's slot in its
    /// subscriber list, so that leaving is O(1) per topic.
    pub subs: Box<[(u32, u32)]>,
    /// Frames with ids up to this one were in the replay (or predate the stream); a copy
    /// still on its way through the shard's mailbox is skipped, not sent twice.
    pub skip_through: u64,
    /// Something was queued since the last keep-alive check.
    pub active: bool,
    /// Frames lost since the last one that fitted.
    pub gap: Option<Box<Gap>>,
}

/// A run of frames dropped for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The first id dropped.
    pub from: u64,
    /// The last id dropped.
    pub to: u64,
    /// How many frames were dropped.
    pub dropped: u64,
    /// When the first was dropped.
    pub since: Instant,
}

/// What became of a frame offered to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Already sent by the replay.
    Skipped,
    /// Queued (with this many bytes, a gap notice included).
    Queued(usize),
    /// Dropped: it did not fit.
    Dropped,
    /// Dropped, and the stream has been losing frames for longer than allowed.
    TooSlow,
}

impl Stream {
    /// A new stream whose replay (or start) covered ids up to `skip_through`.
    pub fn new(subs: Box<[(u32, u32)]>, skip_through: u64) -> Stream {
        Stream {
            subs,
            skip_through,
            active: true,
            gap: None,
        }
    }

    /// Offers event `id`'s frame to this stream's `outbox`, bounded by `limit` bytes.
    ///
    /// `slow_after` is how long a stream may keep dropping before it is [`Offer::TooSlow`].
    pub fn offer(
        &mut self,
        outbox: &mut Outbox,
        id: u64,
        frame: &Bytes,
        limit: usize,
        now: Instant,
        slow_after: Duration,
    ) -> Offer {
        if id <= self.skip_through {
            return Offer::Skipped;
        }
        let Some(gap) = &mut self.gap else {
            if outbox.fits(frame.len(), limit) {
                outbox.push(frame.clone());
                self.active = true;
                return Offer::Queued(frame.len());
            }
            self.gap = Some(Box::new(Gap {
                from: id,
                to: id,
                dropped: 1,
                since: now,
            }));
            return Offer::Dropped;
        };
        let notice = sse::encode_gap(gap.from, gap.to, gap.dropped);
        if outbox.fits(notice.len() + frame.len(), limit) {
            let bytes = notice.len() + frame.len();
            outbox.push(notice);
            outbox.push(frame.clone());
            self.gap = None;
            self.active = true;
            return Offer::Queued(bytes);
        }
        gap.to = id;
        gap.dropped += 1;
        if now.saturating_duration_since(gap.since) >= slow_after {
            Offer::TooSlow
        } else {
            Offer::Dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 100;
    const SLOW: Duration = Duration::from_secs(30);

    fn frame(id: u64, size: usize) -> Bytes {
        let mut f = format!("id: {id}\ndata: ").into_bytes();
        f.resize(size - 2, b'x');
        f.extend_from_slice(b"\n\n");
        Bytes::from(f)
    }

    fn drain(outbox: &mut Outbox) -> String {
        let mut out = Vec::new();
        outbox.write_to(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn frames_up_to_the_replay_seam_are_skipped() {
        let (mut s, mut q, now) = (
            Stream::new(Box::new([]), 10),
            Outbox::default(),
            Instant::now(),
        );
        assert_eq!(
            s.offer(&mut q, 10, &frame(10, 20), LIMIT, now, SLOW),
            Offer::Skipped
        );
        assert_eq!(
            s.offer(&mut q, 11, &frame(11, 20), LIMIT, now, SLOW),
            Offer::Queued(20)
        );
    }

    #[test]
    fn drops_become_one_gap_notice_before_the_next_frame_that_fits() {
        let (mut s, mut q, now) = (
            Stream::new(Box::new([]), 0),
            Outbox::default(),
            Instant::now(),
        );
        assert_eq!(
            s.offer(&mut q, 1, &frame(1, 60), LIMIT, now, SLOW),
            Offer::Queued(60)
        );
        for id in 2..=4 {
            assert_eq!(
                s.offer(&mut q, id, &frame(id, 60), LIMIT, now, SLOW),
                Offer::Dropped
            );
        }
        assert_eq!(
            s.gap.as_ref().map(|g| (g.from, g.to, g.dropped)),
            Some((2, 4, 3))
        );
        drain(&mut q);
        assert!(
            matches!(s.offer(&mut q, 5, &frame(5, 20), LIMIT, now, SLOW), Offer::Queued(n) if n > 20)
        );
        let text = drain(&mut q);
        assert!(
            text.starts_with(
                "event: gap\ndata: {\"from\":\"2\",\"to\":\"4\",\"dropped\":3}\n\nid: 5\n"
            ),
            "{text}"
        );
        assert!(s.gap.is_none());
    }

    #[test]
    fn a_gap_notice_that_does_not_fit_with_its_frame_extends_the_gap() {
        let (mut s, mut q, now) = (
            Stream::new(Box::new([]), 0),
            Outbox::default(),
            Instant::now(),
        );
        s.offer(&mut q, 1, &frame(1, 90), LIMIT, now, SLOW);
        s.offer(&mut q, 2, &frame(2, 90), LIMIT, now, SLOW);
        // 90 queued: a 9-byte frame would fit alone, but not behind a ~50-byte notice.
        assert_eq!(
            s.offer(&mut q, 3, &frame(3, 9), LIMIT, now, SLOW),
            Offer::Dropped
        );
        assert_eq!(s.gap.as_ref().map(|g| (g.from, g.to)), Some((2, 3)));
    }

    #[test]
    fn losing_for_the_whole_timeout_is_too_slow() {
        let (mut s, mut q, t0) = (
            Stream::new(Box::new([]), 0),
            Outbox::default(),
            Instant::now(),
        );
        s.offer(&mut q, 1, &frame(1, 90), LIMIT, t0, SLOW);
        assert_eq!(
            s.offer(&mut q, 2, &frame(2, 90), LIMIT, t0, SLOW),
            Offer::Dropped
        );
        let later = t0 + SLOW - Duration::from_millis(1);
        assert_eq!(
            s.offer(&mut q, 3, &frame(3, 90), LIMIT, later, SLOW),
            Offer::Dropped
        );
        assert_eq!(
            s.offer(&mut q, 4, &frame(4, 90), LIMIT, t0 + SLOW, SLOW),
            Offer::TooSlow
        );
    }

    #[test]
    fn recovering_resets_the_slow_clock() {
        let (mut s, mut q, t0) = (
            Stream::new(Box::new([]), 0),
            Outbox::default(),
            Instant::now(),
        );
        s.offer(&mut q, 1, &frame(1, 90), LIMIT, t0, SLOW);
        s.offer(&mut q, 2, &frame(2, 90), LIMIT, t0, SLOW);
        drain(&mut q);
        s.offer(&mut q, 3, &frame(3, 20), LIMIT, t0 + SLOW / 2, SLOW);
        s.offer(&mut q, 4, &frame(4, 90), LIMIT, t0 + SLOW, SLOW);
        // A new gap began at t0 + SLOW; it is not "too slow" until SLOW after that.
        assert_eq!(
            s.offer(&mut q, 5, &frame(5, 90), LIMIT, t0 + SLOW + SLOW / 2, SLOW),
            Offer::Dropped
        );
    }
}
