//! Event streams: starting one (topics joined, replay asked for), replay steps as they
//! arrive, keep-alives.

use std::num::NonZeroU32;

use super::*;

impl Shard {
    /// Opens the stream a request asked for, as its head was judged ([`Shard::judge_head`]):
    /// topics joined, replay asked for, its token's expiry scheduled; or answers an expired
    /// token, or sheds it at capacity.
    pub(super) fn start_stream(&mut self, key: usize, request: Request) {
        let grant = match &mut self.clients[key].phase {
            Phase::Request(state) => state.grant.take(),
            _ => None,
        };
        let Some(grant) = grant else {
            // Every stream head is judged before its request completes; never open one that
            // was not.
            warn!(
                shard = self.id,
                key, "stream request without a verdict; closing"
            );
            return self.close(key);
        };
        let head = self.node.cors.stream_head(request.head.origin.as_deref());
        if let StreamGrant::Expired(exp) = grant {
            return self.refuse_expired(key, head, exp);
        }
        let subscribe = match params::parse_subscribe(&request) {
            Ok(s) => s,
            Err(rejection) => return self.reject(key, rejection),
        };
        let peer = match self.clients[key].socket.peer_addr() {
            Ok(peer) => peer.ip(),
            Err(_) => return self.close(key),
        };
        if self.drain_deadline.is_some() {
            // Come back soon: to this node's successor, or to another node.
            return self.shed(
                key,
                Some(head),
                crate::delivery::admission::Refusal::Draining,
            );
        }
        let admitted = match self.node.quota.admit(peer) {
            Ok(admitted) => admitted,
            Err(refusal) => return self.shed(key, Some(head), refusal),
        };
        if self.config.send_buffer > 0 {
            // A stream's traffic is small frames; a client that stops reading would otherwise
            // let autotuning park megabytes of ours in its socket before --client-buffer binds.
            let socket = socket2::SockRef::from(&self.clients[key].socket);
            if let Err(e) = socket.set_send_buffer_size(self.config.send_buffer) {
                debug!(shard = self.id, key, error = %e, "cannot size the send buffer");
            }
        }
        let subscription = match self
            .hub
            .subscribe(&subscribe.topics, subscribe.last_event_id.as_deref())
        {
            Ok(subscription) => subscription,
            Err(crate::delivery::history::TopicsFull) => {
                // At capacity for new topics: come back later, as at --max-clients.
                self.node.quota.release(admitted);
                return self.shed(
                    key,
                    Some(head),
                    crate::delivery::admission::Refusal::TopicsFull,
                );
            }
        };
        // The stream's key, taken by `stream_begins` below (nothing else is inserted before).
        self.room_for_a_stream();
        let stream_key = self.streams.vacant_key();
        let serial = self.clients[key].serial;
        let mut subs = Vec::with_capacity(subscription.names.len());
        for name in subscription.names {
            subs.push(self.topics.join(name, stream_key));
        }
        let retry = self.jitter(self.config.retry_ms);
        let mut stream = Stream::new(Subs::new(subs), subscription.replay);
        let expires = match grant {
            StreamGrant::Until(exp) => Some(exp),
            _ => None,
        };
        if let Some(exp) = expires {
            // Unix seconds fit u32 until 2106; a later exp is kept as the last one that fits.
            stream.expires = NonZeroU32::new(u32::try_from(exp).unwrap_or(u32::MAX));
        }
        self.left_request_phase();
        // One frame, not two: a stream that keeps up then never needs more than the
        // outbox's inline slot (the copy is a few hundred bytes, once per stream).
        self.queue(
            key,
            Bytes::from([&head[..], &sse::encode_preamble(retry)[..]].concat()),
        );
        let began = self.stream_begins(key, stream, admitted.address, subscription.reset);
        debug_assert_eq!(began, stream_key);
        if let Some(exp) = expires {
            self.schedule_expiry(stream_key, serial, exp);
        }
        self.counters.add(Stat::StreamsOpened, 1);
        debug!(shard = self.id, key, topics = ?subscribe.topics, "stream opened");
    }

    /// Makes connection `key` carry the stream `stream` (its head already queued) over
    /// HTTP/1.1, counted under `address` for the per-address quota when that is on: its
    /// `reset` notice first when it has one, then its replay, if it resumes. Returns the
    /// stream's key, which is the slab's vacant key as this is called.
    pub(super) fn stream_begins(
        &mut self,
        key: usize,
        mut stream: Stream,
        address: Option<u64>,
        reset: Option<Bytes>,
    ) -> usize {
        self.room_for_a_stream();
        stream.carried_by(key);
        let replaying = stream.replay().is_some();
        let stream_key = self.streams.insert(stream);
        if let Some(address) = address {
            // Kept beside the stream, not in it: a stream pays for the per-address quota
            // only when the quota is on.
            self.addresses.insert(stream_key, address);
        }
        let client = &mut self.clients[key];
        // Slab keys stay far below u32::MAX: the stream quota bounds them.
        client.phase = Phase::Streaming(Protocol::Http1 {
            stream: stream_key as u32,
        });
        // Its head was just queued: no keep-alive is due before the next check.
        client.active = true;
        if let Some(reset) = reset {
            self.counters.add(Stat::ResetNotices, 1);
            self.queue_for(stream_key, key, reset);
        }
        if replaying {
            self.continue_replay(stream_key);
        }
        self.counters.add(Stat::Streams, 1);
        stream_key
    }

    /// Asks the broker for the next part of stream `key`'s replay: as much as fits the room
    /// left in its queue (at least one frame). It arrives in the inbox ([`Shard::on_replay`]).
    pub(super) fn continue_replay(&mut self, key: usize) {
        let Some(stream) = self.streams.get_mut(key) else {
            return;
        };
        let Some(client) = self.clients.get_mut(stream.conn()) else {
            return;
        };
        if client.closing || client.handed {
            return;
        }
        let serial = client.serial;
        let Some(lane) = client.lane(key) else {
            return;
        };
        let Some(replay) = stream.replay_mut() else {
            return;
        };
        if std::mem::replace(&mut replay.asked, true) {
            return; // one step at a time
        }
        let cursor = replay.cursor.clone();
        let names: Vec<Arc<str>> = stream
            .topics()
            .filter_map(|membership| self.topics.name(membership).cloned())
            .collect();
        let room = lane.room(Bounds::both(self.config.client_buffer)).max(1);
        let ticket = Ticket { key, serial };
        self.broker
            .replay(&self.hub, self.id, ticket, &names, cursor, room);
    }

    /// A replay step arrived: queue it, and go live after the last one. Replayed frames are
    /// shared with the history: the queue holds references, not copies.
    pub(super) fn on_replay(
        &mut self,
        ticket: Ticket,
        cursor: crate::delivery::history::Cursor,
        step: ReplayStep,
    ) {
        let Some(stream) = self.streams.get_mut(ticket.key) else {
            return;
        };
        let conn = stream.conn();
        let Some(client) = self.clients.get(conn) else {
            return;
        };
        // A detached stream asks again if the hand-over is called off.
        if client.serial != ticket.serial || client.closing || client.handed {
            return;
        }
        let batch = match step {
            ReplayStep::More(batch) => {
                if let Some(replay) = stream.replay_mut() {
                    replay.cursor = cursor;
                    replay.asked = false;
                }
                batch
            }
            // Every event after this message in the inbox is the stream's, live.
            ReplayStep::Live(batch) => {
                stream.end_replay();
                batch
            }
        };
        let more = stream.replay().is_some();
        if let Some(reset) = batch.reset {
            self.counters.add(Stat::ResetNotices, 1);
            self.queue_for(ticket.key, conn, reset);
        }
        self.counters.add(Stat::Replayed, batch.frames.len() as u64);
        for frame in batch.frames {
            self.queue_for(ticket.key, conn, frame);
        }
        let waiting = self.clients[conn]
            .lane(ticket.key)
            .map_or(usize::MAX, |lane| lane.queued());
        if more && waiting < self.config.client_buffer / 2 {
            self.continue_replay(ticket.key);
        }
    }

    /// Answers a stream whose token is correctly signed but expired: `200`, the `expired`
    /// notice with a `retry:`, close. Not a 401, which would stop the browser for good: an
    /// idle tab retries until its page has refreshed the cookie.
    pub(super) fn refuse_expired(&mut self, key: usize, head: Bytes, exp: u64) {
        self.counters.add(Stat::ExpiredTokens, 1);
        let retry = self.expired_retry();
        self.queue(key, head);
        self.queue(key, sse::encode_expired(exp, retry));
        self.clients[key].close_after_flush = true;
        debug!(shard = self.id, key, "stream token already expired");
    }

    /// Ends stream `key` because its token expires (`serial` is its connection's): the
    /// `expired` notice with a `retry:` after whatever it has queued, then close. It leaves
    /// its topics now, so nothing is delivered after the notice; a peer that does not read it
    /// is closed after [`LINGER`].
    pub(super) fn end_expired(&mut self, key: usize, serial: u32) {
        let Some(stream) = self.streams.get(key) else {
            return;
        };
        let Some(exp) = stream.expires else {
            return;
        };
        let conn = stream.conn();
        let Some(client) = self.clients.get_mut(conn) else {
            return;
        };
        // A detached stream's expiry is scheduled again if the hand-over is called off.
        if client.serial != serial || client.closing || client.handed {
            return;
        }
        // An HTTP/1.1 stream is its connection's response: the connection ends with it.
        let deadline = self.now + LINGER;
        client.phase = Phase::Linger { deadline };
        client.close_after_flush = true;
        self.set_deadline(conn, deadline);
        if let Some(stream) = self.streams.try_remove(key) {
            self.stream_ended(key, serial, stream);
        }
        let retry = self.expired_retry();
        self.queue(conn, sse::encode_expired(u64::from(exp.get()), retry));
        self.counters.add(Stat::StreamsExpired, 1);
    }

    /// An expired stream's `retry:`: 5 to 10 s, jittered, so the tabs of one deploy's tokens
    /// do not come back in the same second.
    fn expired_retry(&mut self) -> u64 {
        EXPIRED_RETRY_MS / 2 + self.jitter(EXPIRED_RETRY_MS)
    }

    /// Queues a keep-alive comment to every stream that had nothing queued since the last check.
    pub(super) fn send_keepalives(&mut self) {
        let frame = Bytes::from_static(sse::KEEPALIVE);
        let bounds = Bounds::both(self.config.client_buffer);
        let mut sent = 0;
        for (key, client) in self.clients.iter_mut() {
            let Phase::Streaming(protocol) = client.phase else {
                continue;
            };
            if std::mem::replace(&mut client.active, false) || client.closing || client.handed {
                continue;
            }
            let mut queued = false;
            for s in protocol.streams() {
                if let Some(mut lane) = client.lane(s) {
                    if lane.push_bounded(frame.clone(), bounds) {
                        queued = true;
                        sent += 1;
                        self.counters.add(Stat::QueuedBytes, frame.len() as u64);
                    }
                }
            }
            if queued && !client.pending {
                client.pending = true;
                self.pending.push(key as u32);
            }
        }
        self.counters.add(Stat::KeepalivesSent, sent);
    }
}
