//! TLS handshakes in a storm: at most `--tls-handshakes-per-turn` steps a turn, the rest
//! queued, and the header-timeout rule that keeps a queued client from being cut.
//!
//! # Why a budget, and what it does not bound
//!
//! A full handshake costs the server a signature (BENCHMARKS.md, "TLS storms"). The budget
//! bounds how long one turn spends on handshakes, so events to open streams wait at most
//! `budget × one handshake` behind a storm. It does not slow the storm down: while a
//! handshake waits, the poll timeout is zero and the next turn starts at once.
//!
//! # The clock of a queued handshake
//!
//! `--header-timeout` counts from accept until the handshake's first turn (the first
//! ciphertext read), and from that turn on. A client whose ClientHello waits in the queue, or
//! in its socket while the node is busy (a long turn, a stall), has sent what it had to: the
//! wait is the node's, and it is not cut for it. A client that sends nothing still meets the
//! timeout from accept; one that dribbles its ClientHello meets it from its first turn.
//!
//! # Order
//!
//! Handshakes that began go before new ones: a client whose ServerHello went out answers
//! within a round trip, and making it wait behind the whole storm would run its clock (which
//! is its own once it began) for nothing. New ones are served in arrival order.

use super::*;

/// The handshakes waiting for a turn, as (slab key, serial); an entry whose connection has
/// gone or moved on is skipped when met.
#[derive(Debug, Default)]
pub(super) struct HandshakeQueue {
    /// Handshakes that have had a turn already (their next flight, or the rest of a
    /// ClientHello): served first.
    begun: VecDeque<(u32, u32)>,
    /// Handshakes waiting for their first turn, oldest first.
    fresh: VecDeque<(u32, u32)>,
}

/// A drained queue keeps at most this many entries' room; a storm's is given back.
const KEEP: usize = 1024;

impl HandshakeQueue {
    /// Adds a connection at the back of its class.
    pub(super) fn push(&mut self, key: usize, serial: u32, began: bool) {
        // Slab keys stay far below u32::MAX: the quotas bound them.
        let entry = (key as u32, serial);
        if began {
            self.begun.push_back(entry);
        } else {
            self.fresh.push_back(entry);
        }
    }

    /// The next connection to serve: the oldest that began, else the oldest new one.
    pub(super) fn pop(&mut self) -> Option<(usize, u32)> {
        let next = self.begun.pop_front().or_else(|| self.fresh.pop_front());
        if next.is_none() {
            for queue in [&mut self.begun, &mut self.fresh] {
                if queue.capacity() > KEEP {
                    *queue = VecDeque::new();
                }
            }
        }
        next.map(|(key, serial)| (key as usize, serial))
    }

    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.begun.is_empty() && self.fresh.is_empty()
    }
}

impl Shard {
    /// Queues `key`'s handshake for a later turn (this turn's budget is spent), once.
    pub(super) fn defer_handshake(&mut self, key: usize) {
        let client = &mut self.clients[key];
        if let Some(session) = &mut client.tls {
            if !session.queued() {
                session.set_queued(true);
                self.handshakes.push(key, client.serial, session.began());
            }
        }
    }

    /// At the start of a turn: goes on with queued handshakes while the turn's budget lasts.
    pub(super) fn resume_handshakes(&mut self) {
        while self.handshakes_left > 0 {
            let Some((key, serial)) = self.handshakes.pop() else {
                return;
            };
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            if client.serial != serial || client.closing {
                continue;
            }
            if let Some(session) = &mut client.tls {
                session.set_queued(false);
            }
            self.serve_requests(key);
        }
    }

    /// Its handshake's first ciphertext was just read: `key`'s header timeout counts from now.
    pub(super) fn began_handshake(&mut self, key: usize) {
        let deadline = self.now + self.config.header_timeout();
        if let Phase::Request(state) = &mut self.clients[key].phase {
            // The heap's entry for the old deadline finds this one later and re-arms it.
            state.deadline = deadline;
        }
    }

    /// At `key`'s header deadline: whether a TLS connection must be kept because it is
    /// waiting for its handshake's first turn — queued, or with its ClientHello in its socket
    /// and no readable event seen yet (a stall, or events beyond one poll's batch). Such a
    /// one is queued and looked at again later; a silent one is not kept.
    pub(super) fn waiting_for_first_turn(&mut self, key: usize) -> bool {
        let client = &mut self.clients[key];
        let Some(session) = &client.tls else {
            return false;
        };
        if !session.handshaking() || session.began() {
            return false; // its clock is its own
        }
        if !session.queued() {
            let mut byte = [0u8; 1];
            match client.socket.peek(&mut byte) {
                Ok(n) if n > 0 => {
                    client.readable = true;
                    self.defer_handshake(key);
                }
                // Nothing sent (or gone): the timeout stands.
                _ => return false,
            }
        }
        let later = self.now + self.config.header_timeout();
        self.set_deadline(key, later);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begun_handshakes_go_first_then_new_ones_in_arrival_order() {
        let mut q = HandshakeQueue::default();
        q.push(1, 10, false);
        q.push(2, 20, false);
        q.push(3, 30, true);
        q.push(4, 40, false);
        q.push(5, 50, true);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [(3, 30), (5, 50), (1, 10), (2, 20), (4, 40)]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_drained_storm_gives_its_room_back() {
        let mut q = HandshakeQueue::default();
        for key in 0..10_000 {
            q.push(key, 0, key % 2 == 0);
        }
        while q.pop().is_some() {}
        assert_eq!((q.begun.capacity(), q.fresh.capacity()), (0, 0));
    }
}
