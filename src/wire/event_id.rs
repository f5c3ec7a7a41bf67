//! Event ids: one increasing sequence across all topics, of a node (the embedded broker) or of
//! a cluster (Redis Streams entry ids), so one `Last-Event-ID` means the same thing on a
//! stream that carries several topics, and on every node.
//!
//! # On the wire
//!
//! - Embedded broker: a plain decimal integer, `42` (the contract keeps these unchanged).
//! - Cluster: `EPOCH-MS-SEQ`, e.g. `9f3c2a71-1764633600000-0`: the epoch is the random value
//!   kept in Redis beside the stream (a new one whenever Redis lost its data), `MS-SEQ` the
//!   Redis entry id. An id from another epoch is unknown here, and gets `reset`.
//!
//! Ids compare as Redis entry ids do: by milliseconds, then sequence. An embedded id is
//! `0-N`, so both kinds share one ordered type.

use std::fmt;

/// An event's position in its node's (or cluster's) one sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    ms: u64,
    seq: u64,
}

/// The longest epoch accepted (an epoch is short random hex; this bounds what a client's id
/// can make the parser compare).
pub const MAX_EPOCH: usize = 32;

impl EventId {
    /// Before every event.
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    /// The embedded broker's `n`-th event.
    pub const fn local(n: u64) -> EventId {
        EventId { ms: 0, seq: n }
    }

    /// A Redis Streams entry id `ms-seq`.
    pub const fn entry(ms: u64, seq: u64) -> EventId {
        EventId { ms, seq }
    }

    /// The milliseconds part (0 for embedded ids).
    pub const fn ms(self) -> u64 {
        self.ms
    }

    /// The sequence part (the whole id for embedded ids).
    pub const fn seq(self) -> u64 {
        self.seq
    }

    /// The embedded broker's next id, or None when the counter is spent.
    pub fn next_local(self) -> Option<EventId> {
        Some(EventId::local(self.seq.checked_add(1)?))
    }

    /// Parses a Redis entry id, `ms-seq`.
    pub fn parse_entry(s: &str) -> Option<EventId> {
        let (ms, seq) = s.split_once('-')?;
        Some(EventId::entry(digits(ms)?, digits(seq)?))
    }

    /// Parses a `Last-Event-ID` as this node writes them: a plain integer without an epoch,
    /// or `EPOCH-MS-SEQ` whose epoch is `epoch`. Anything else (another epoch included) is
    /// None: unknown here.
    pub fn parse_wire(s: &str, epoch: Option<&str>) -> Option<EventId> {
        let s = s.trim();
        match epoch {
            None => Some(EventId::local(digits(s)?)),
            Some(epoch) => {
                let (theirs, entry) = s.split_once('-')?;
                (theirs.len() <= MAX_EPOCH && theirs == epoch)
                    .then(|| EventId::parse_entry(entry))
                    .flatten()
            }
        }
    }

    /// The wire form: see the module documentation.
    pub fn wire(self, epoch: Option<&str>) -> Wire<'_> {
        Wire { id: self, epoch }
    }
}

/// An id as it is written on the wire ([`EventId::wire`]).
#[derive(Debug, Clone, Copy)]
pub struct Wire<'a> {
    id: EventId,
    epoch: Option<&'a str>,
}

impl fmt::Display for Wire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.epoch {
            None => write!(f, "{}", self.id.seq),
            Some(epoch) => write!(f, "{epoch}-{}-{}", self.id.ms, self.id.seq),
        }
    }
}

impl fmt::Display for EventId {
    /// The Redis form, `ms-seq` (logs and Redis commands; the wire form is [`EventId::wire`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A plain decimal `u64`: ASCII digits only (no sign, no spaces), at most 20 of them, no
/// overflow.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_ids_are_plain_integers_both_ways() {
        let id = EventId::local(42);
        assert_eq!(id.wire(None).to_string(), "42");
        assert_eq!(EventId::parse_wire("42", None), Some(id));
        assert_eq!(EventId::parse_wire(" 42 ", None), Some(id));
        for bad in [
            "",
            "-1",
            "+1",
            "4 2",
            "abc",
            "99999999999999999999999",
            "1-0",
        ] {
            assert_eq!(EventId::parse_wire(bad, None), None, "{bad:?}");
        }
        assert_eq!(EventId::local(u64::MAX).next_local(), None);
        assert_eq!(EventId::local(1).next_local(), Some(EventId::local(2)));
    }

    #[test]
    fn cluster_ids_carry_their_epoch() {
        let id = EventId::entry(1_764_633_600_000, 3);
        let wire = id.wire(Some("9f3c2a71")).to_string();
        assert_eq!(wire, "9f3c2a71-1764633600000-3");
        assert_eq!(EventId::parse_wire(&wire, Some("9f3c2a71")), Some(id));
        // Another epoch, a missing one, or a plain integer are unknown in cluster mode.
        assert_eq!(EventId::parse_wire(&wire, Some("00000000")), None);
        assert_eq!(
            EventId::parse_wire("1764633600000-3", Some("9f3c2a71")),
            None
        );
        assert_eq!(EventId::parse_wire("42", Some("9f3c2a71")), None);
        assert_eq!(EventId::parse_entry("1764633600000-3"), Some(id));
        assert_eq!(id.to_string(), "1764633600000-3");
    }

    #[test]
    fn ids_order_as_redis_entry_ids() {
        assert!(EventId::entry(5, 9) < EventId::entry(6, 0));
        assert!(EventId::entry(6, 0) < EventId::entry(6, 1));
        assert!(EventId::ZERO < EventId::local(1));
        assert!(EventId::local(u64::MAX) < EventId::entry(1, 0));
    }
}
