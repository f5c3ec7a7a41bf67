//! Event streams: starting one (topics joined, replay asked for), replay steps as they
//! arrive, keep-alives.

use super::*;

impl Shard {
    pub(super) fn start_stream(&mut self, key: usize, request: Request) {
        let subscribe = match params::parse_subscribe(&request) {
            Ok(s) => s,
            Err(rejection) => return self.reject(key, rejection),
        };
        let peer = match self.clients[key].socket.peer_addr() {
            Ok(peer) => peer.ip(),
            Err(_) => return self.close(key),
        };
        let admitted = match self.node.quota.admit(peer) {
            Ok(admitted) => admitted,
            Err(refusal) => return self.shed(key, refusal),
        };
        if self.config.send_buffer > 0 {
            // A stream's traffic is small frames; a client that stops reading would otherwise
            // let autotuning park megabytes of ours in its socket before --client-buffer binds.
            let socket = socket2::SockRef::from(&self.clients[key].socket);
            if let Err(e) = socket.set_send_buffer_size(self.config.send_buffer) {
                debug!(shard = self.id, key, error = %e, "cannot size the send buffer");
            }
        }
        let subscription = self
            .hub
            .subscribe(&subscribe.topics, subscribe.last_event_id.as_deref());
        let mut subs = Vec::with_capacity(subscription.names.len());
        for name in subscription.names {
            subs.push(self.topics.join(name, key));
        }
        let retry = self.jitter(self.config.retry_ms);
        let replaying = subscription.replay.is_some();
        let stream = Stream::new(subs.into_boxed_slice(), subscription.replay);
        if let Some(address) = admitted.address {
            // Kept beside the stream, not in it: a stream pays for the per-address quota
            // only when the quota is on.
            self.addresses.insert(key, address);
        }
        self.clients[key].phase = Phase::Stream(stream);
        self.left_request_phase();
        self.queue(key, self.stream_head.clone());
        self.queue(key, sse::encode_preamble(retry));
        if let Some(reset) = subscription.reset {
            self.counters.add(Stat::ResetNotices, 1);
            self.queue(key, reset);
        }
        if replaying {
            self.continue_replay(key);
        }
        self.counters.add(Stat::Streams, 1);
        self.counters.add(Stat::StreamsOpened, 1);
        debug!(shard = self.id, key, topics = ?subscribe.topics, "stream opened");
    }

    /// Asks the broker for the next part of `key`'s replay: as much as fits the room left in
    /// its queue (at least one frame). It arrives in the inbox ([`Shard::on_replay`]).
    pub(super) fn continue_replay(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.closing {
            return;
        }
        let Phase::Stream(stream) = &mut client.phase else {
            return;
        };
        let Some(replay) = stream.replay.as_deref_mut() else {
            return;
        };
        if std::mem::replace(&mut replay.asked, true) {
            return; // one step at a time
        }
        let names: Vec<Arc<str>> = stream
            .subs
            .iter()
            .filter_map(|&membership| self.topics.name(membership).cloned())
            .collect();
        let room = self
            .config
            .client_buffer
            .saturating_sub(client.outbox.queued_bytes())
            .max(1);
        let ticket = Ticket {
            key,
            serial: client.serial,
        };
        let cursor = replay.cursor.clone();
        self.broker
            .replay(&self.hub, self.id, ticket, &names, cursor, room);
    }

    /// A replay step arrived: queue it, and go live after the last one. Replayed frames are
    /// shared with the history: the queue holds references, not copies.
    pub(super) fn on_replay(
        &mut self,
        ticket: Ticket,
        cursor: crate::history::Cursor,
        step: ReplayStep,
    ) {
        let Some(client) = self.clients.get_mut(ticket.key) else {
            return;
        };
        if client.serial != ticket.serial || client.closing {
            return;
        }
        let Phase::Stream(stream) = &mut client.phase else {
            return;
        };
        let batch = match step {
            ReplayStep::More(batch) => {
                if let Some(replay) = stream.replay.as_deref_mut() {
                    replay.cursor = cursor;
                    replay.asked = false;
                }
                batch
            }
            // Every event after this message in the inbox is the stream's, live.
            ReplayStep::Live(batch) => {
                stream.replay = None;
                batch
            }
        };
        let more = stream.replay.is_some();
        if let Some(reset) = batch.reset {
            self.counters.add(Stat::ResetNotices, 1);
            self.queue(ticket.key, reset);
        }
        self.counters.add(Stat::Replayed, batch.frames.len() as u64);
        for frame in batch.frames {
            self.queue(ticket.key, frame);
        }
        if more && self.clients[ticket.key].outbox.queued_bytes() < self.config.client_buffer / 2 {
            self.continue_replay(ticket.key);
        }
    }

    /// Queues a keep-alive comment to every stream that had nothing queued since the last check.
    pub(super) fn send_keepalives(&mut self) {
        let frame = Bytes::from_static(sse::KEEPALIVE);
        let limit = self.config.client_buffer;
        let mut sent = 0;
        for (key, client) in self.clients.iter_mut() {
            let Phase::Stream(stream) = &mut client.phase else {
                continue;
            };
            if std::mem::replace(&mut stream.active, false) || client.closing {
                continue;
            }
            if client.outbox.push_bounded(frame.clone(), limit) == Push::Queued {
                sent += 1;
                self.counters.add(Stat::QueuedBytes, frame.len() as u64);
                if !client.pending {
                    client.pending = true;
                    self.pending.push(key);
                }
            }
        }
        self.counters.add(Stat::KeepalivesSent, sent);
    }
}
