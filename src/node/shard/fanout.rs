//! The fan-out of one delivery over a topic's subscribers on this shard: one refcount bump
//! and one queue push per stream, tallied into the counters once; and the events a shard
//! missed while its inbox was full, recorded as losses of the streams they were for.

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
        let bounds = Bounds::both(self.config.client_buffer);
        let slow_after = self.config.slow_client_period();
        let Shard {
            topics,
            streams,
            clients,
            pending,
            closing,
            counters,
            now,
            data_headers,
            ..
        } = self;
        data_headers.prepare(&delivery.frame);
        // Streams of HTTP/2 connections too slow to keep: each ends alone (RST_STREAM).
        let mut slow_h2: Vec<(usize, usize)> = Vec::new();
        let (mut queued, mut bytes, mut dropped, mut notices, mut too_slow, mut peak) =
            (0, 0, 0, 0, 0, 0);
        let mut reached = 0usize;
        for key in topics.subscribers(&delivery.topic) {
            let Some(stream) = streams.get_mut(key) else {
                continue;
            };
            let conn = stream.conn();
            let Some(client) = clients.get_mut(conn) else {
                continue;
            };
            if client.closing {
                continue;
            }
            let h2 = client.phase_is_h2();
            let Some(mut lane) = client.lane(key, data_headers) else {
                continue;
            };
            reached += 1;
            let frame = &delivery.frame;
            match stream.offer(
                &mut lane,
                delivery.id,
                delivery.epoch.as_deref(),
                frame,
                bounds,
                *now,
                slow_after,
            ) {
                Offer::Queued(n) => {
                    let pushed = lane.pushed();
                    queued += 1;
                    client.active = true;
                    bytes += pushed;
                    notices += usize::from(n > frame.len());
                    peak = peak.max(client.outbox.queued_bytes());
                    if !client.pending {
                        client.pending = true;
                        pending.push(conn as u32);
                    }
                }
                Offer::Dropped => dropped += 1,
                Offer::TooSlow if h2 => {
                    dropped += 1;
                    too_slow += 1;
                    slow_h2.push((conn, key));
                }
                Offer::TooSlow => {
                    dropped += 1;
                    too_slow += 1;
                    client.closing = true;
                    closing.push(conn);
                }
                Offer::Skipped => {}
            }
        }
        data_headers.finish();
        counters.add(Stat::FramesQueued, queued);
        counters.add(Stat::FramesDropped, dropped);
        counters.add(Stat::GapNotices, notices as u64);
        counters.add(Stat::SlowDisconnects, too_slow);
        counters.add(Stat::QueuedBytes, bytes as u64);
        counters.raise(Stat::QueuePeakBytes, peak as u64);
        if reached > 0 {
            // Timed when this turn's flush is over (`record_fanout`); the list keeps its
            // capacity from turn to turn, so only a turn with more events than any before
            // it allocates.
            self.fanned.push(delivery.accepted);
        }
        for (conn, key) in slow_h2 {
            self.end_h2_stream(conn, key, crate::wire::h2::ErrorCode::Cancel);
        }
        if too_slow > 0 {
            debug!(
                shard = self.id,
                too_slow, "disconnected streams that kept losing frames"
            );
        }
    }

    /// Times the events fanned out this turn, now that the flush is over: to the first stream
    /// write after the fan-out (`first_write`, the end of the flush if nothing could be
    /// written), and to the end of the flush, when every stream that could take its frame
    /// has it. Two observations per event, no allocation, no lock (`Histogram::observe`).
    pub(super) fn record_fanout(&mut self, first_write: Option<Instant>) {
        if self.fanned.is_empty() {
            return;
        }
        let done = Instant::now();
        let first = first_write.unwrap_or(done);
        let stats = &self.stats[self.id];
        for accepted in self.fanned.drain(..) {
            stats
                .fanout_first
                .observe(first.saturating_duration_since(accepted));
            stats
                .fanout
                .observe(done.saturating_duration_since(accepted));
        }
    }

    /// Events this shard was not sent while its inbox was full: each stream of their topics
    /// records them as lost, and hears of it in a `gap` notice before its next frame (or
    /// is let go by the slow-client rule if it is behind anyway).
    pub(super) fn missed(&mut self, missed: &[crate::delivery::hub::Missed]) {
        let now = self.now;
        let mut streams = 0u64;
        for m in missed {
            for key in self.topics.subscribers(&m.topic) {
                if let Some(stream) = self.streams.get_mut(key) {
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
}
