//! HTTP/2 connections in the shard: telling h2c's preface (or ALPN's `h2`) from HTTP/1.1,
//! reading frames through the sans-IO layer ([`crate::wire::h2::conn`]), mapping each
//! request onto the same judging and answers as HTTP/1.1 ([`Shard::judge`],
//! [`Shard::dispatch`]), and writing answers as HEADERS and DATA within the peer's windows.
//! Streams it opens live in the shard's slab beside HTTP/1.1's, reached by the same fan-out
//! through their lane ([`crate::node::client::Client::lane`]).

use super::api::Via;
use super::*;
use crate::delivery::stream::STARVED;
use crate::node::h2::{Body, H2};
use crate::wire::h2::bridge;
use crate::wire::h2::conn::{Connection, Event as H2Event, Limits};
use crate::wire::h2::ErrorCode;

impl Shard {
    /// The bounds of every HTTP/2 connection of this node.
    pub(super) fn h2_limits(config: &Config) -> Limits {
        Limits {
            max_streams: config.h2_max_streams,
            ..Limits::default()
        }
    }

    /// A serial for a stream or a publish of an HTTP/2 connection, from the same count as
    /// connections', so that no ticket names two things.
    pub(super) fn next_serial(&mut self) -> u32 {
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    /// Whether request-phase connection `key` turns to HTTP/2 now: `h2` was agreed by ALPN,
    /// or (plain) its first bytes are the client preface.
    pub(super) fn speaks_h2(&self, key: usize) -> bool {
        if !self.config.http2 {
            return false;
        }
        let client = &self.clients[key];
        let Phase::Request(state) = &client.phase else {
            return false;
        };
        if state.answered || state.parser.head().is_some() {
            return false;
        }
        match &client.tls {
            Some(session) => !session.handshaking() && session.alpn_h2(),
            // Two bytes tell "PRI * HTTP/2.0" from every method the edge serves.
            None => {
                let unread = state.parser.unread();
                unread.len() >= 2 && Connection::is_preface_start(unread)
            }
        }
    }

    /// Turns request-phase connection `key` into an HTTP/2 one and reads what it sent.
    pub(super) fn become_h2(&mut self, key: usize) {
        let deadline = self.now + self.config.header_timeout();
        let limits = Self::h2_limits(&self.config);
        let client = &mut self.clients[key];
        let unread = match &client.phase {
            Phase::Request(state) => state.parser.unread().to_vec(),
            _ => return,
        };
        client.phase = Phase::Streaming(Protocol::Http2(Box::new(H2::new(&limits, deadline))));
        self.left_request_phase();
        self.counters.add(Stat::H2Connections, 1);
        if self.config.send_buffer > 0 {
            // As for an HTTP/1.1 stream's socket: a peer that stops reading must not park
            // megabytes of ours in the kernel before the windows and --client-buffer bind.
            let socket = socket2::SockRef::from(&self.clients[key].socket);
            let _ = socket.set_send_buffer_size(self.config.send_buffer);
        }
        // The preface and both SETTINGS must be done within the header timeout.
        self.set_deadline(key, deadline);
        self.h2_input(key, &unread);
        self.serve_h2(key);
    }

    /// Reads HTTP/2 connection `key` until its input runs out, it must close, or its unread
    /// output reaches [`RESPONSE_BACKLOG`] (a peer that does not read what it asks for).
    pub(super) fn serve_h2(&mut self, key: usize) {
        loop {
            let client = &mut self.clients[key];
            if client.closing || client.close_after_flush || client.handed || !client.readable {
                return;
            }
            if client.outbox.queued_bytes() >= RESPONSE_BACKLOG {
                return; // resumed by flush_pending once the peer reads
            }
            let mut input = Vec::new();
            let status = match &mut client.tls {
                Some(session) => {
                    match session.read(&mut client.socket, &mut self.scratch, |plain| {
                        input.extend_from_slice(plain)
                    }) {
                        tls::TlsRead::Data => ReadStatus::Data,
                        tls::TlsRead::WouldBlock => {
                            client.readable = false;
                            ReadStatus::WouldBlock
                        }
                        tls::TlsRead::Closed | tls::TlsRead::Refused(_) => ReadStatus::Closed,
                    }
                }
                None => loop {
                    match client.socket.read(&mut self.scratch) {
                        Ok(0) => break ReadStatus::Closed,
                        Ok(n) => {
                            input.extend_from_slice(self.scratch.get(..n).unwrap_or_default());
                            break ReadStatus::Data;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            client.readable = false;
                            break ReadStatus::WouldBlock;
                        }
                        Err(_) => break ReadStatus::Closed,
                    }
                },
            };
            if client.tls.as_ref().is_some_and(|s| s.wants_write()) {
                self.mark_pending(key);
            }
            if !input.is_empty() {
                self.h2_input(key, &input);
            }
            match status {
                ReadStatus::Data => {}
                ReadStatus::WouldBlock => return,
                ReadStatus::Closed => return self.close(key),
            }
        }
    }

    /// Feeds bytes read from HTTP/2 connection `key` to its frame layer and acts on what
    /// they say.
    fn h2_input(&mut self, key: usize, input: &[u8]) {
        let limits = Self::h2_limits(&self.config);
        let now = self.now.saturating_duration_since(self.started).as_secs() as u32;
        let mut events = Vec::new();
        let Some(h2) = self.clients[key].h2() else {
            return;
        };
        let result = h2.conn.recv(input, now, &limits, &mut events);
        if h2.conn.settled() {
            h2.deadline = None;
        }
        for event in events {
            if self.clients[key].closing {
                break;
            }
            self.on_h2_event(key, event);
        }
        if result.is_err() {
            // A connection error: the GOAWAY is queued; send it and close. Its streams end
            // now (the lingering phase that follows the flush no longer names them).
            self.forget_all_h2_streams(key);
            self.clients[key].close_after_flush = true;
        }
        self.pump_h2(key);
    }

    fn on_h2_event(&mut self, key: usize, event: H2Event) {
        match event {
            H2Event::Request {
                stream,
                head,
                end_stream,
            } => self.h2_request(key, stream, &head, end_stream),
            H2Event::HeadTooLarge { stream } => {
                self.counters.reject(431);
                let response = http::error_response(431, "request head too large", true, "");
                self.respond_h2(key, stream, &response);
            }
            H2Event::Data {
                stream,
                data,
                end_stream,
            } => self.h2_body(key, stream, &data, end_stream),
            H2Event::Reset { stream, .. } => {
                let Some(h2) = self.clients[key].h2() else {
                    return;
                };
                h2.bodies.retain(|b| b.id != stream);
                h2.awaiting.retain(|o| o.id != stream);
                h2.unsent.retain(|(id, _)| *id != stream);
                if let Some(s) = h2.by_id(stream).map(|c| c.key as usize) {
                    self.forget_h2_stream(key, s);
                }
            }
            H2Event::Settings { .. } | H2Event::Writable { .. } => {
                // A stream that dropped a frame for want of window has caught up once its
                // window holds a whole frame again: a reader trickling a few bytes of window
                // stays behind, as an HTTP/1.1 reader trickling a few bytes does.
                if let Some(h2) = self.clients[key].h2() {
                    for c in &h2.streams {
                        let window = h2.conn.send_window(c.id).unwrap_or(0) as usize;
                        if window >= crate::delivery::data::MAX_FRAME {
                            c.flags.set(c.flags.get() & !STARVED);
                        }
                    }
                }
                self.mark_pending(key);
            }
            H2Event::Defended(defence) => {
                self.counters.add(Stat::h2_defence(defence), 1);
                debug!(
                    shard = self.id,
                    key,
                    defence = defence.name(),
                    "HTTP/2 defence"
                );
            }
            H2Event::Ping | H2Event::GoAway { .. } => {}
        }
    }

    /// A request arrived on stream `id`: judged by the same rules as HTTP/1.1's, answered
    /// now when refused or complete, else kept until its body is complete.
    fn h2_request(
        &mut self,
        key: usize,
        id: u32,
        head: &crate::wire::h2::conn::RequestHead,
        end_stream: bool,
    ) {
        let head = match bridge::head(head, self.config.max_body) {
            Ok(head) => head,
            Err(rejection) => {
                self.counters.reject(rejection.status);
                let response = http::error_response(rejection.status, rejection.reason, true, "");
                // A head HTTP/1.1 could not read either (or a content-length over
                // --max-body): its body is not read, as HTTP/1.1 closes then.
                self.respond_h2(key, id, &response);
                if !end_stream {
                    self.cut_body(key, id);
                }
                return;
            }
        };
        let judged = match self.judge(key, &head) {
            Ok(judged) => judged,
            Err(panic) => return self.parse_panicked(key, panic),
        };
        let grant = match judged.outcome {
            Err((status, reason, extra)) => {
                self.counters.reject(status);
                let response = http::error_response(status, &reason, true, &extra);
                return self.refuse_h2(key, id, &response, end_stream);
            }
            Ok(grant) => grant,
        };
        if end_stream {
            return self.dispatch(key, Via::Http2(id), Request::new(head, Vec::new()), grant);
        }
        if let Some(h2) = self.clients[key].h2() {
            h2.bodies.push(Body {
                id,
                head: Some(Box::new(head)),
                grant,
                bytes: Vec::new(),
                dropped: 0,
            });
        }
    }

    /// Answers a request refused from its head (401, 403, 404, 405). A body it may still send
    /// is read and dropped, as over HTTP/1.1, up to `--max-body`; past that it is cut short with
    /// RST_STREAM(NO_ERROR) (RFC 9113 §8.1). Resetting at once is allowed too, but curl 7.88
    /// (Debian 12's) then loses the answer (error 92) even for a body it has finished sending.
    fn refuse_h2(&mut self, key: usize, id: u32, response: &Bytes, end_stream: bool) {
        self.respond_h2(key, id, response);
        if !end_stream {
            if let Some(h2) = self.clients[key].h2() {
                h2.bodies.push(Body {
                    id,
                    head: None,
                    grant: None,
                    bytes: Vec::new(),
                    dropped: 0,
                });
            }
        }
    }

    /// Stops reading the body of stream `id`, answered already: RST_STREAM(NO_ERROR).
    fn cut_body(&mut self, key: usize, id: u32) {
        if let Some(h2) = self.clients[key].h2() {
            h2.conn.reset(id, ErrorCode::NoError);
        }
        self.pump_h2(key);
    }

    /// Body bytes of a request on stream `id`.
    fn h2_body(&mut self, key: usize, id: u32, data: &[u8], end_stream: bool) {
        let max_body = self.config.max_body;
        let Some(h2) = self.clients[key].h2() else {
            return;
        };
        let Some(at) = h2.bodies.iter().position(|b| b.id == id) else {
            return; // answered already (and reset)
        };
        let body = &mut h2.bodies[at];
        if body.head.is_none() {
            // Answered already: read and dropped.
            body.dropped = body.dropped.saturating_add(data.len());
            if end_stream {
                h2.bodies.swap_remove(at);
            } else if body.dropped > max_body {
                h2.bodies.swap_remove(at);
                self.cut_body(key, id);
            }
            return;
        }
        if body.bytes.len().saturating_add(data.len()) > max_body {
            h2.bodies.swap_remove(at);
            self.counters.reject(413);
            let response = http::error_response(413, "request body too large", true, "");
            self.respond_h2(key, id, &response);
            return self.cut_body(key, id);
        }
        body.bytes.extend_from_slice(data);
        if !end_stream {
            return;
        }
        let body = h2.bodies.swap_remove(at);
        let Some(head) = body.head else {
            return;
        };
        let request = Request::new(*head, body.bytes);
        self.dispatch(key, Via::Http2(id), request, body.grant);
    }

    /// Answers stream `id` of connection `key` with an answer built as HTTP/1.1 bytes by the
    /// same code as HTTP/1.1's: its head as HEADERS (connection fields left out), its body as
    /// DATA, ending the stream.
    pub(super) fn respond_h2(&mut self, key: usize, id: u32, response: &Bytes) {
        let Some(translated) = bridge::response(response) else {
            return;
        };
        let Some(h2) = self.clients[key].h2() else {
            return;
        };
        let empty = translated.body.is_empty();
        if h2.conn.send_head(id, &translated.block, empty).is_ok() && !empty {
            h2.unsent.push((id, translated.body));
        }
        self.pump_h2(key);
    }

    /// Sends on stream `id`: a head (HTTP/1.1 bytes of a stream head, translated) if given,
    /// then `body` as DATA, ending the stream if `end`.
    pub(super) fn send_h2(
        &mut self,
        key: usize,
        id: u32,
        head: Option<&Bytes>,
        body: Bytes,
        end: bool,
    ) {
        let Some(h2) = self.clients[key].h2() else {
            return;
        };
        if let Some(head) = head.and_then(bridge::response) {
            let _ = h2.conn.send_head(id, &head.block, false);
        }
        if end {
            h2.unsent.push((id, body));
        } else if let Ok(frames) = h2.conn.send_data(id, body, false) {
            // Its head goes first: what the frame layer queued precedes this DATA.
            if let Some(out) = h2.conn.take_output() {
                self.queue(key, out);
            }
            for (header, chunk) in frames {
                self.queue(key, Bytes::copy_from_slice(&header));
                self.queue(key, chunk);
            }
        }
        self.pump_h2(key);
    }

    /// Sheds a stream request `via` its protocol: HTTP/1.1 as before (the connection ends
    /// after it); on HTTP/2 the stream alone gets the head, `: shed` and its `retry:`.
    pub(super) fn shed_via(&mut self, key: usize, via: Via, head: Bytes, refusal: Refusal) {
        let Via::Http2(id) = via else {
            return self.shed(key, Some(head), refusal);
        };
        let retry = self.shed_retry(refusal);
        self.send_h2(key, id, Some(&head), sse::encode_shed(retry), true);
    }

    /// Moves what the frame layer queued (SETTINGS, heads, ACKs, resets, GOAWAY) into the
    /// outbox, then as much of the answers' bodies as the peer's windows take.
    pub(super) fn pump_h2(&mut self, key: usize) {
        let client = &mut self.clients[key];
        let Phase::Streaming(Protocol::Http2(h2)) = &mut client.phase else {
            return;
        };
        let mut queued = 0;
        if let Some(out) = h2.conn.take_output() {
            queued += out.len();
            client.outbox.push(out);
        }
        let mut i = 0;
        while let Some((id, body)) = h2.unsent.get_mut(i) {
            let id = *id;
            let Some(window) = h2.conn.send_window(id) else {
                h2.unsent.remove(i); // reset meanwhile
                continue;
            };
            let take = body.len().min(window as usize);
            if take == 0 && !body.is_empty() {
                i += 1;
                continue;
            }
            let part = body.split_to(take);
            let last = body.is_empty();
            if let Ok(frames) = h2.conn.send_data(id, part, last) {
                for (header, chunk) in frames {
                    queued += header.len() + chunk.len();
                    client.outbox.push(Bytes::copy_from_slice(&header));
                    client.outbox.push(chunk);
                }
            }
            if last {
                h2.unsent.remove(i);
            } else {
                i += 1;
            }
        }
        if h2.unsent.is_empty() && h2.unsent.capacity() > 0 {
            h2.unsent = Vec::new();
        }
        if queued > 0 {
            self.counters.add(Stat::QueuedBytes, queued as u64);
            self.mark_pending(key);
        }
    }

    /// Stream `stream` of HTTP/2 connection `conn` is over (reset by the peer, expired): out
    /// of the slab and of its topics; the connection goes on.
    pub(super) fn forget_h2_stream(&mut self, conn: usize, stream: usize) {
        let Some(h2) = self.clients[conn].h2() else {
            return;
        };
        let Some((_, serial)) = h2.drop_key(stream) else {
            return;
        };
        if let Some(s) = self.streams.try_remove(stream) {
            self.stream_ended(stream, serial, s);
        }
    }

    /// Every stream of HTTP/2 connection `conn` is over: it is about to close.
    pub(super) fn forget_all_h2_streams(&mut self, conn: usize) {
        let keys: Vec<usize> = match self.clients[conn].h2() {
            Some(h2) => h2.streams.iter().map(|c| c.key as usize).collect(),
            None => return,
        };
        for key in keys {
            self.forget_h2_stream(conn, key);
        }
    }

    /// Ends stream `stream` of HTTP/2 connection `conn` with RST_STREAM(`code`) (a slow
    /// reader: the others go on).
    pub(super) fn end_h2_stream(&mut self, conn: usize, stream: usize, code: ErrorCode) {
        let Some(h2) = self.clients.get_mut(conn).and_then(Client::h2) else {
            return;
        };
        if let Some(id) = h2.by_key(stream).map(|c| c.id) {
            h2.conn.reset(id, code);
        }
        self.forget_h2_stream(conn, stream);
        self.pump_h2(conn);
    }

    /// The handshake of HTTP/2 connection `key` did not finish in time: a preface or SETTINGS
    /// that never came is a header timeout; our SETTINGS never acknowledged, GOAWAY
    /// SETTINGS_TIMEOUT (RFC 9113 §6.5.3).
    pub(super) fn h2_timed_out(&mut self, key: usize) {
        let Some(h2) = self.clients[key].h2() else {
            return;
        };
        h2.deadline = None;
        if h2.conn.opened() {
            h2.conn.abort(ErrorCode::SettingsTimeout);
            self.forget_all_h2_streams(key);
            self.counters.add(Stat::H2SettingsTimeout, 1);
            self.clients[key].close_after_flush = true;
            self.pump_h2(key);
        } else {
            self.counters.add(Stat::HeaderTimeouts, 1);
            self.close(key);
        }
    }

    /// On a drain: every HTTP/2 connection gets GOAWAY(NO_ERROR), then each of its event
    /// streams ends cleanly after what it has queued (an empty DATA frame with END_STREAM:
    /// a connection closed under an open stream is an error to the client, curl's "stream
    /// was not closed cleanly"), each browser coming back after its `retry:`. Requests in
    /// progress are still answered; the connection closes once it is flushed.
    pub(super) fn go_away_all(&mut self) {
        let keys: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.phase_is_h2() && !c.closing && !c.handed)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let Some(h2) = self.clients[key].h2() else {
                continue;
            };
            h2.conn.go_away();
            let ended: Vec<(usize, u32)> =
                h2.streams.iter().map(|c| (c.key as usize, c.id)).collect();
            for (stream, id) in ended {
                self.forget_h2_stream(key, stream);
                self.send_h2(key, id, None, Bytes::new(), true);
            }
            self.pump_h2(key);
        }
    }
}
