//! Event streams: starting one (topics joined, replay asked for), the fan-out of one
//! delivery over a topic's subscribers, replay steps as they arrive, keep-alives.

use super::*;

impl Shard {
    /// The fan-out: one refcount bump and one queue push per subscriber, no allocation
    /// (a stream that starts losing frames allocates its gap record, once).
    pub(super) fn deliver(&mut self, delivery: &Delivery) {
        #[cfg(debug_assertions)]
        if self.panic_topic.as_deref() == Some(&*delivery.topic) {
            panic!(
                "SSE_EDGE_TEST_PANIC_TOPIC: injected panic in shard {}",
                self.id
            );
        }
        let limit = self.config.client_buffer;
        let slow_after = self.config.slow_client_period();
        let Shard {
            topics,
            clients,
            pending,
            closing,
            counters,
            now,
            ..
        } = self;
        let (mut queued, mut bytes, mut dropped, mut notices, mut too_slow, mut peak) =
            (0, 0, 0, 0, 0, 0);
        for key in topics.subscribers(&delivery.topic) {
            let client = &mut clients[key];
            let Phase::Stream(stream) = &mut client.phase else {
                continue;
            };
            if client.closing {
                continue;
            }
            let frame = &delivery.frame;
            match stream.offer(
                &mut client.outbox,
                delivery.id,
                delivery.epoch.as_deref(),
                frame,
                limit,
                *now,
                slow_after,
            ) {
                Offer::Queued(n) => {
                    queued += 1;
                    bytes += n;
                    notices += usize::from(n > frame.len());
                    peak = peak.max(client.outbox.queued_bytes());
                    if !client.pending {
                        client.pending = true;
                        pending.push(key);
                    }
                }
                Offer::Dropped => dropped += 1,
                Offer::TooSlow => {
                    dropped += 1;
                    too_slow += 1;
                    client.closing = true;
                    closing.push(key);
                }
                Offer::Skipped => {}
            }
        }
        counters.add(Stat::FramesQueued, queued);
        counters.add(Stat::FramesDropped, dropped);
        counters.add(Stat::GapNotices, notices as u64);
        counters.add(Stat::SlowDisconnects, too_slow);
        counters.add(Stat::QueuedBytes, bytes as u64);
        counters.raise(Stat::QueuePeakBytes, peak as u64);
        if too_slow > 0 {
            debug!(
                shard = self.id,
                too_slow, "disconnected streams that kept losing frames"
            );
        }
    }

    /// Events this shard was not sent while its inbox was full: each stream of their topics
    /// records them as lost, and hears of it in a `gap` notice before its next frame (or
    /// is let go by the slow-client rule if it is behind anyway).
    pub(super) fn missed(&mut self, missed: &[crate::hub::Missed]) {
        let now = self.now;
        let mut streams = 0u64;
        for m in missed {
            for key in self.topics.subscribers(&m.topic) {
                if let Some(Phase::Stream(stream)) = self.clients.get_mut(key).map(|c| &mut c.phase)
                {
                    stream.lose(m.from, m.to, m.count, now);
                    streams += 1;
                }
            }
        }
        warn!(
            shard = self.id,
            topics = missed.len(),
            streams,
            "this shard fell behind its inbox; its streams are told what they missed"
        );
    }

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
