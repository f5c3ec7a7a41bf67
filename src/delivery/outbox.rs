//! One client's outbound queue: shared frames waiting for the socket, bounded in bytes.
//!
//! A broadcast reaches a client as a clone of one `Bytes` (a refcount bump, no copy). The
//! queue holds those clones in order; a partly written front frame is advanced in place
//! (`Bytes::advance` moves a pointer), so there is no separate offset to keep in sync.
//! Writing gathers up to [`MAX_IOV`] frames into one `writev`. Pure: tested without sockets.
//!
//! # What an idle stream keeps
//!
//! Nothing on the heap. One frame lives inline: a stream that keeps up has at most one frame
//! queued at a time (an event, written in the same turn), so it never needs more. The first
//! time two wait at once (a burst, a replay, a stream head with a notice behind it) the
//! frames move into a queue allocated then, and kept while the stream keeps needing it, so a
//! busy stream allocates once, not per frame or per turn. The shard asks every queue it knows
//! of, a few times a second, whether a frame waited behind the front since it last asked
//! ([`Outbox::release_unused`]); one where none did all that while is freed (its front frame,
//! if any, goes back inline). So the memory a burst or a replay needed is back within two of
//! those periods after it drained, whatever the keep-alive period.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// How many frames one `writev` gathers (Linux allows 1024; 64 frames is already far more
/// than one turn queues for a healthy client, and keeps the iovec array on the stack small).
pub const MAX_IOV: usize = 64;

/// Bytes waiting to be written to one socket.
#[derive(Debug)]
pub struct Outbox(Queue);

/// Where the frames wait: inline while there is at most one, or in a queue of their own. One
/// enum, not a front slot beside a queue pointer, so an outbox is one `Bytes` wide (32):
/// the queue's pointer hides in the niche of the inline frame.
#[derive(Debug)]
enum Queue {
    /// At most one frame, perhaps partly written already; an empty `Bytes` (static, no
    /// allocation) when nothing is queued.
    One(Bytes),
    /// Frames in order, front first, in storage a burst allocated (kept while used).
    Many(Box<Rest>),
}

/// A queue of frames, and their bytes.
#[derive(Debug, Default)]
struct Rest {
    frames: VecDeque<Bytes>,
    /// Bytes of every frame, the front's unwritten part only.
    bytes: usize,
    /// A frame was queued behind the front since the last [`Outbox::release_unused`]: the
    /// stream still needs the queue.
    used: bool,
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox(Queue::One(Bytes::new()))
    }
}

/// What happened to a frame offered to a bounded queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The frame is queued.
    Queued,
    /// The frame did not fit and was not queued.
    Dropped,
}

/// What a write pass wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes written.
    pub bytes: usize,
    /// Frames that left completely.
    pub frames: usize,
}

/// Where a write pass stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Empty,
    /// The socket would block; the rest waits for the next writable readiness.
    Blocked,
}

impl Outbox {
    /// Queues `frame` unless it would take the queue past `limit` bytes.
    ///
    /// The new frame is the one dropped, never a queued one: the front frame may be half
    /// written, and cutting it would corrupt the stream. A frame always fits an empty queue,
    /// so an event larger than `limit` still reaches clients that keep up; the bound is
    /// therefore `limit` or one frame, whichever is larger.
    pub fn push_bounded(&mut self, frame: Bytes, limit: usize) -> Push {
        if !self.fits(frame.len(), limit) {
            return Push::Dropped;
        }
        self.push(frame);
        Push::Queued
    }

    /// Whether `len` more bytes may be queued under `limit` (always, into an empty queue).
    pub fn fits(&self, len: usize, limit: usize) -> bool {
        // Nothing queued is zero bytes queued: no frame in the queue is empty.
        let queued = self.queued_bytes();
        queued == 0 || queued.saturating_add(len) <= limit
    }

    /// Queues `frame` whatever its size (HTTP responses and stream heads, which must not be lost).
    pub fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        match &mut self.0 {
            Queue::One(front) if front.is_empty() => *front = frame,
            Queue::One(front) => {
                // A second frame waits behind the front: the queue is allocated, once.
                let front = std::mem::take(front);
                let mut rest = Box::new(Rest {
                    frames: VecDeque::with_capacity(4),
                    bytes: front.len() + frame.len(),
                    used: true,
                });
                rest.frames.push_back(front);
                rest.frames.push_back(frame);
                self.0 = Queue::Many(rest);
            }
            Queue::Many(rest) => {
                rest.used |= !rest.frames.is_empty();
                rest.bytes += frame.len();
                rest.frames.push_back(frame);
            }
        }
    }

    /// Whether it holds storage for frames behind the front (allocated by a burst and not
    /// released yet).
    pub fn holds_queue(&self) -> bool {
        matches!(self.0, Queue::Many(_))
    }

    /// Frees the storage behind the front frame if no frame was queued there since the last
    /// call (so it is empty, and was for that whole while); else only starts a new while.
    /// Returns whether it still holds the storage.
    ///
    /// Called periodically, this is the hysteresis: a stream that needs its queue at least
    /// once a period keeps it and never allocates per event, one that needed it once (a
    /// replay, a burst) gives it back at most two periods after it drained. Its next burst
    /// allocates it again.
    pub fn release_unused(&mut self) -> bool {
        let Queue::Many(rest) = &mut self.0 else {
            return false;
        };
        if std::mem::take(&mut rest.used) || rest.frames.len() > 1 {
            return true;
        }
        self.0 = Queue::One(rest.frames.pop_front().unwrap_or_default());
        false
    }

    /// How many frames are queued.
    pub fn len(&self) -> usize {
        match &self.0 {
            Queue::One(front) => usize::from(!front.is_empty()),
            Queue::Many(rest) => rest.frames.len(),
        }
    }

    /// Every queued frame, front first.
    fn frames(&self) -> impl Iterator<Item = &Bytes> {
        let (one, many) = match &self.0 {
            Queue::One(front) => (Some(front).filter(|f| !f.is_empty()), None),
            Queue::Many(rest) => (None, Some(rest.frames.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// The next frame to write, if any.
    fn front(&self) -> Option<&Bytes> {
        match &self.0 {
            Queue::One(front) => Some(front).filter(|f| !f.is_empty()),
            Queue::Many(rest) => rest.frames.front(),
        }
    }

    /// Removes `written` bytes from the front frame; returns whether it left whole (and the
    /// next one moved up). False when nothing is queued.
    fn advance_front(&mut self, written: usize) -> bool {
        match &mut self.0 {
            Queue::One(front) if written >= front.len() => {
                *front = Bytes::new();
                true
            }
            Queue::One(front) => {
                front.advance(written);
                false
            }
            Queue::Many(rest) => {
                let Some(front) = rest.frames.front_mut() else {
                    return false;
                };
                if written >= front.len() {
                    rest.bytes -= front.len();
                    rest.frames.pop_front();
                    true
                } else {
                    front.advance(written);
                    rest.bytes -= written;
                    false
                }
            }
        }
    }

    /// Bytes still to write.
    pub fn queued_bytes(&self) -> usize {
        match &self.0 {
            Queue::One(front) => front.len(),
            Queue::Many(rest) => rest.bytes,
        }
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.front().is_none()
    }

    /// Writes queued frames with vectored writes until the queue is empty or `out` would block.
    ///
    /// Returns the state reached and what was written. `Interrupted` is retried; any other
    /// error is returned and the caller closes the client.
    pub fn write_to<W: Write>(&mut self, out: &mut W) -> io::Result<(Flush, Written)> {
        if let Queue::One(front) = &mut self.0 {
            return write_one(front, out);
        }
        let mut total = Written::default();
        while let Some(front) = self.front() {
            // One frame queued is the common case (a healthy stream, one event per turn):
            // a plain write(2) skips the kernel's iovec import that writev(2) pays.
            let result = if self.len() == 1 {
                out.write(front)
            } else {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                for (slot, frame) in iov.iter_mut().zip(self.frames()) {
                    *slot = IoSlice::new(frame);
                    n += 1;
                }
                out.write_vectored(&iov[..n])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    total.bytes += written;
                    total.frames += self.consume(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flush::Blocked, total))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((Flush::Empty, total))
    }

    /// Copies as many queued bytes as fit into `buf`, from the front, without removing them
    /// (for TLS, which encrypts a record's worth of several frames at once); returns how many.
    pub fn copy_front(&self, buf: &mut [u8]) -> usize {
        let mut filled = 0;
        for frame in self.frames() {
            let Some(room) = buf.get_mut(filled..).filter(|r| !r.is_empty()) else {
                break;
            };
            let n = room.len().min(frame.len());
            if let (Some(to), Some(from)) = (room.get_mut(..n), frame.get(..n)) {
                to.copy_from_slice(from);
            }
            filled += n;
        }
        filled
    }

    /// Everything queued, in order, as one buffer (without removing it): what a hand-over
    /// carries to the next process. One frame is shared, not copied.
    pub fn to_bytes(&self) -> Bytes {
        if self.len() <= 1 {
            return self.front().cloned().unwrap_or_default();
        }
        let mut all = Vec::with_capacity(self.queued_bytes());
        for frame in self.frames() {
            all.extend_from_slice(frame);
        }
        Bytes::from(all)
    }

    /// Removes `written` bytes from the front of the queue; returns the frames completed.
    pub fn consume(&mut self, mut written: usize) -> usize {
        let mut completed = 0;
        while written > 0 {
            let front = self.front().map_or(0, Bytes::len);
            assert!(front > 0, "wrote more than was queued");
            let step = written.min(front);
            if self.advance_front(step) {
                completed += 1;
            }
            written -= step;
        }
        completed
    }
}

/// [`Outbox::write_to`] for the common case, one frame inline (a healthy stream, one event
/// per turn): a plain write(2), and no queue to look at between the writes.
fn write_one<W: Write>(front: &mut Bytes, out: &mut W) -> io::Result<(Flush, Written)> {
    let mut total = Written::default();
    while !front.is_empty() {
        match out.write(front) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) if written >= front.len() => {
                total.bytes += front.len();
                total.frames += 1;
                *front = Bytes::new();
            }
            Ok(written) => {
                total.bytes += written;
                front.advance(written);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((Flush::Blocked, total)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((Flush::Empty, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `budget` bytes in total, then would block.
    struct Throttled {
        got: Vec<u8>,
        budget: usize,
        per_call: usize,
        calls: usize,
    }

    impl Throttled {
        fn new(budget: usize, per_call: usize) -> Self {
            Throttled {
                got: Vec::new(),
                budget,
                per_call,
                calls: 0,
            }
        }
    }

    impl Write for Throttled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut room = self.budget.min(self.per_call);
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room);
                self.got.extend_from_slice(&b[..take]);
                room -= take;
                n += take;
                if room == 0 {
                    break;
                }
            }
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn copy_front_gathers_across_frames_and_consume_removes_them() {
        let mut q = Outbox::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"defg"));
        q.push(Bytes::from_static(b"hi"));
        let mut buf = [0u8; 5];
        assert_eq!(q.copy_front(&mut buf), 5);
        assert_eq!(&buf, b"abcde");
        assert_eq!(q.queued_bytes(), 9, "copying removes nothing");
        assert_eq!(q.consume(5), 1);
        let mut rest = [0u8; 16];
        assert_eq!(q.copy_front(&mut rest), 4);
        assert_eq!(&rest[..4], b"fghi");
        assert_eq!(q.consume(4), 2);
        assert!(q.is_empty());
        assert_eq!(q.copy_front(&mut rest), 0);
    }

    #[test]
    fn push_counts_bytes_and_keeps_order() {
        let mut q = Outbox::default();
        assert_eq!(q.push_bounded(frame("abc"), 10), Push::Queued);
        assert_eq!(q.push_bounded(frame("defg"), 10), Push::Queued);
        assert_eq!(q.queued_bytes(), 7);
        let mut w = Throttled::new(100, 100);
        let done = Written {
            bytes: 7,
            frames: 2,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), (Flush::Empty, done));
        assert_eq!(w.got, b"abcdefg");
        assert!(q.is_empty());
        assert_eq!(w.calls, 1, "both frames left in one writev");
    }

    #[test]
    fn frame_that_does_not_fit_is_dropped_and_queue_unchanged() {
        let mut q = Outbox::default();
        q.push_bounded(frame("12345"), 8);
        assert_eq!(q.push_bounded(frame("6789"), 8), Push::Dropped);
        assert_eq!(q.queued_bytes(), 5);
        assert_eq!(q.push_bounded(frame("678"), 8), Push::Queued);
        assert_eq!(q.queued_bytes(), 8);
        assert_eq!(q.push_bounded(frame("x"), 8), Push::Dropped);
    }

    #[test]
    fn an_oversized_frame_still_fits_an_empty_queue() {
        let mut q = Outbox::default();
        assert_eq!(q.push_bounded(frame("0123456789"), 4), Push::Queued);
        assert_eq!(q.push_bounded(frame("a"), 4), Push::Dropped);
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut q = Outbox::default();
        for s in ["hello ", "brave ", "new ", "world"] {
            q.push(frame(s));
        }
        let mut w = Throttled::new(8, 3);
        let part = Written {
            bytes: 8,
            frames: 1,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), (Flush::Blocked, part));
        assert_eq!(w.got, b"hello br");
        assert_eq!(q.queued_bytes(), 21 - 8);
        w.budget = 1000;
        let rest = Written {
            bytes: 13,
            frames: 3,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), (Flush::Empty, rest));
        assert_eq!(w.got, b"hello brave new world");
    }

    #[test]
    fn one_inline_frame_written_in_parts_resumes_mid_frame() {
        let mut q = Outbox::default();
        q.push(frame("hello world"));
        assert!(!q.holds_queue());
        let mut w = Throttled::new(5, 2);
        let part = Written {
            bytes: 5,
            frames: 0,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), (Flush::Blocked, part));
        assert_eq!(
            w.calls, 4,
            "three writes of 2, 2 and 1 bytes, then would block"
        );
        assert_eq!(q.queued_bytes(), 6);
        w.budget = 1000;
        let rest = Written {
            bytes: 6,
            frames: 1,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), (Flush::Empty, rest));
        assert_eq!(w.got, b"hello world");
        assert!(q.is_empty());
    }

    #[test]
    fn more_frames_than_one_iovec_batch() {
        let mut q = Outbox::default();
        for i in 0..(MAX_IOV * 2 + 5) {
            q.push(frame(&format!("{i},")));
        }
        let expected: String = (0..(MAX_IOV * 2 + 5)).map(|i| format!("{i},")).collect();
        let mut w = Throttled::new(usize::MAX, usize::MAX);
        q.write_to(&mut w).unwrap();
        assert_eq!(String::from_utf8(w.got).unwrap(), expected);
        assert_eq!(w.calls, 3);
    }

    #[test]
    fn shared_frames_are_not_copied() {
        let shared = frame("the same bytes");
        let mut a = Outbox::default();
        let mut b = Outbox::default();
        a.push(shared.clone());
        b.push(shared.clone());
        let (fa, fb) = (a.front().unwrap(), b.front().unwrap());
        assert_eq!(fa.as_ptr(), fb.as_ptr());
        assert_eq!(fa.as_ptr(), shared.as_ptr());
    }

    #[test]
    fn a_stream_that_keeps_up_never_allocates_a_queue_and_a_drained_one_gives_it_back() {
        let mut q = Outbox::default();
        let mut sink = Vec::new();
        for i in 0..5 {
            q.push(frame(&format!("event {i}")));
            assert!(!q.holds_queue(), "one frame at a time stays inline");
            q.write_to(&mut sink).unwrap();
        }
        // A burst: the queue is allocated once and kept while busy.
        q.push(frame("a"));
        q.push(frame("b"));
        q.push(frame("c"));
        assert_eq!(q.len(), 3);
        q.write_to(&mut sink).unwrap();
        assert!(q.is_empty() && q.holds_queue());
        assert!(q.release_unused(), "used in this period: kept");
        assert!(!q.release_unused(), "empty for a whole period: freed");
        assert!(!q.holds_queue());
        assert!(sink.ends_with(b"abc"));
    }

    #[test]
    fn a_queue_needed_every_period_is_kept_and_not_allocated_again() {
        let mut q = Outbox::default();
        let mut sink = Vec::new();
        for period in 0..10 {
            // Two frames per period: the second waits behind the front.
            q.push(frame("a"));
            q.push(frame("b"));
            q.write_to(&mut sink).unwrap();
            assert!(q.release_unused(), "period {period}: kept, never freed");
        }
        assert!(!q.release_unused(), "a period without a burst: freed");
    }

    #[test]
    fn releasing_keeps_what_waits() {
        let mut q = Outbox::default();
        q.push(frame("a"));
        q.push(frame("b"));
        assert!(q.release_unused());
        assert!(q.release_unused(), "frames wait: kept however long");
        assert_eq!(q.len(), 2);
        assert_eq!(q.to_bytes(), frame("ab"));
        let mut sink = Vec::new();
        q.write_to(&mut sink).unwrap();
        assert!(
            !q.release_unused(),
            "drained and unused since the last call: freed"
        );
        assert!(!q.release_unused(), "nothing held");
    }

    #[test]
    fn empty_frames_are_ignored() {
        let mut q = Outbox::default();
        q.push(Bytes::new());
        assert!(q.is_empty());
    }

    #[test]
    fn errors_other_than_would_block_surface() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut q = Outbox::default();
        q.push(frame("x"));
        assert_eq!(
            q.write_to(&mut Broken).unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
    }
}
