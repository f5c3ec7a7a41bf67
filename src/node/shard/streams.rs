//! Event streams: starting one (topics joined, replay asked for), replay steps as they
//! arrive, keep-alives.

use std::num::NonZeroU32;

use super::api::Via;
use super::*;
use crate::delivery::stream::ACTIVE;

impl Shard {
    /// Opens the stream a request asked for, as its head was judged ([`Shard::judge_head`]):
    /// topics joined, replay asked for, its token's expiry scheduled; or answers an expired
    /// token, or sheds it at capacity.
    pub(super) fn start_stream(
        &mut self,
        key: usize,
        via: Via,
        request: Request,
        grant: Option<StreamGrant>,
    ) {
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
            return self.refuse_expired(key, via, head, exp);
        }
        let subscribe = match params::parse_subscribe(&request) {
            Ok(s) => s,
            Err(rejection) if via == Via::Http1 => return self.reject(key, rejection),
            Err(rejection) => {
                self.counters.reject(rejection.status);
                let response = http::error_response(rejection.status, rejection.reason, true, "");
                return self.answer(key, via, response, true);
            }
        };
        let peer = match self.clients[key].socket.peer_addr() {
            Ok(peer) => peer.ip(),
            Err(_) => return self.close(key),
        };
        if self.drain_deadline.is_some() {
            // Come back soon: to this node's successor, or to another node.
            return self.shed_via(
                key,
                via,
                head,
                crate::delivery::admission::Refusal::Draining,
            );
        }
        let admitted = match self.node.quota.admit(peer) {
            Ok(admitted) => admitted,
            Err(refusal) => return self.shed_via(key, via, head, refusal),
        };
        if self.config.send_buffer > 0 && via == Via::Http1 {
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
                return self.shed_via(
                    key,
                    via,
                    head,
                    crate::delivery::admission::Refusal::TopicsFull,
                );
            }
        };
        // The stream's key, taken by `stream_begins` below (nothing else is inserted before).
        self.room_for_a_stream();
        let stream_key = self.streams.vacant_key();
        let serial = match via {
            Via::Http1 => self.clients[key].serial,
            Via::Http2(_) => self.next_serial(),
        };
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
        match via {
            Via::Http1 => {
                self.left_request_phase();
                // One frame, not two: a stream that keeps up then never needs more than the
                // outbox's inline slot (the copy is a few hundred bytes, once per stream).
                self.queue(
                    key,
                    Bytes::from([&head[..], &sse::encode_preamble(retry)[..]].concat()),
                );
            }
            Via::Http2(id) => {
                self.send_h2(key, id, Some(&head), sse::encode_preamble(retry), false)
            }
        }
        let began = self.stream_begins(
            key,
            via,
            serial,
            stream,
            admitted.address,
            subscription.reset,
        );
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
        via: Via,
        serial: u32,
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
        match (via, client.h2()) {
            (Via::Http2(id), Some(h2)) => {
                // Its head was just queued: no keep-alive is due before the next check.
                h2.carry(crate::node::h2::Carried {
                    id,
                    key: stream_key as u32,
                    serial,
                    flags: std::cell::Cell::new(ACTIVE),
                });
            }
            _ => {
                // Slab keys stay far below u32::MAX: the stream quota bounds them.
                client.phase = Phase::Streaming(Protocol::Http1 {
                    stream: stream_key as u32,
                });
                // Its head was just queued: no keep-alive is due before the next check.
                client.active = true;
            }
        }
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
        let Some(serial) = client.serial_of(key) else {
            return;
        };
        let Some(lane) = client.lane(key, &mut self.data_headers) else {
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
        if client.serial_of(ticket.key) != Some(ticket.serial) || client.closing || client.handed {
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
            .lane(ticket.key, &mut self.data_headers)
            .map_or(usize::MAX, |lane| lane.queued());
        if more && waiting < self.config.client_buffer / 2 {
            self.continue_replay(ticket.key);
        }
    }

    /// Answers a stream whose token is correctly signed but expired: `200`, the `expired`
    /// notice with a `retry:`, close. Not a 401, which would stop the browser for good: an
    /// idle tab retries until its page has refreshed the cookie.
    pub(super) fn refuse_expired(&mut self, key: usize, via: Via, head: Bytes, exp: u64) {
        self.counters.add(Stat::ExpiredTokens, 1);
        let retry = self.expired_retry();
        if let Via::Http2(id) = via {
            return self.send_h2(key, id, Some(&head), sse::encode_expired(exp, retry), true);
        }
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
        if client.serial_of(key) != Some(serial) || client.closing || client.handed {
            return;
        }
        if let Some(h2) = client.h2() {
            // One stream of several ends: the notice, END_STREAM, and the connection goes on.
            let id = h2.by_key(key).map_or(0, |c| c.id);
            let retry = self.expired_retry();
            let notice = sse::encode_expired(u64::from(exp.get()), retry);
            self.counters.add(Stat::StreamsExpired, 1);
            self.forget_h2_stream(conn, key);
            return self.send_h2(conn, id, None, notice, true);
        }
        // An HTTP/1.1 stream is its connection's response: the connection ends with it.
        let deadline = self.now + LINGER;
        client.phase = Phase::Linger {
            deadline: Coarse::at(deadline),
        };
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
            let Phase::Streaming(protocol) = &client.phase else {
                continue;
            };
            let h2 = matches!(protocol, Protocol::Http2(_));
            if client.closing || client.handed {
                continue;
            }
            // HTTP/1.1's one stream keeps its flag in the connection; HTTP/2's each their own.
            if !h2 && std::mem::replace(&mut client.active, false) {
                continue;
            }
            let mut queued = false;
            let mut i = 0;
            while let Some(s) = match &client.phase {
                Phase::Streaming(protocol) => protocol.stream_at(i),
                _ => None,
            } {
                i += 1;
                if let Some(Protocol::Http2(h2)) = match &client.phase {
                    Phase::Streaming(p) => Some(p),
                    _ => None,
                } {
                    if let Some(c) = h2.by_key(s) {
                        let flags = c.flags.get();
                        c.flags.set(flags & !ACTIVE);
                        if flags & ACTIVE != 0 {
                            continue;
                        }
                    }
                }
                if let Some(mut lane) = client.lane(s, &mut self.data_headers) {
                    if lane.push_bounded(frame.clone(), bounds) {
                        queued = true;
                        sent += 1;
                        self.counters.add(Stat::QueuedBytes, lane.pushed() as u64);
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
