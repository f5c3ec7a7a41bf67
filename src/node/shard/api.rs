//! Requests to answers: reading and judging requests, routing, the responses, and publishing
//! through the broker (whose answer comes back through the inbox).

use super::*;

/// Which protocol a request came in, and so how its answer goes out: HTTP/1.1 (the
/// connection's one response in progress) or HTTP/2 (on this stream id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2, on this stream.
    Http2(u32),
}

/// A head's judgement, whatever protocol it came in: its route, and what it was granted or
/// the refusal to answer (status, reason, extra header lines).
pub(super) struct Judged {
    pub outcome: Result<Option<StreamGrant>, (u16, String, String)>,
}

impl Shard {
    /// Judges a request head from connection `key`, before its body is read: routing, access
    /// (peer rules, tokens, CORS refusals), the same rules whichever protocol brought it.
    /// Runs contained: a panic is the caller's to report.
    pub(super) fn judge(&self, key: usize, head: &http::Head) -> Result<Judged, Contained> {
        let client = &self.clients[key];
        let (socket, access) = (&client.socket, &self.node.access);
        let secure = client.tls.is_some();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cors = &self.node.cors;
        guard::contain(|| {
            let route = http::route(head.method, &head.path);
            let peer = match route {
                // One system call, only for the route that needs it.
                Route::Broadcast => socket.peer_addr().ok().map(|a| a.ip()),
                _ => None,
            };
            let verdict = crate::auth::access::check_head(route, head, access, peer, now, secure);
            // A refused stream tells a listed origin's page why (publish answers never carry
            // CORS).
            let cors = match route {
                Route::Stream => cors.refusal_headers(head.origin.as_deref()),
                _ => "",
            };
            let outcome = match (route_refusal(route), verdict) {
                (Some(refusal), _) => Err(refusal),
                (None, Err(r)) if r.status == 401 => Err((
                    401,
                    r.reason.to_owned(),
                    format!("WWW-Authenticate: Bearer\r\n{cors}"),
                )),
                (None, Err(r)) => Err((r.status, r.reason.to_owned(), cors.to_owned())),
                (None, Ok(grant)) => Ok(grant),
            };
            Judged { outcome }
        })
    }

    /// Parses and answers requests from `key` until its input runs out, it becomes a
    /// stream, it must close, or its unread responses reach [`RESPONSE_BACKLOG`].
    ///
    /// The parser is fed only when it needs more, so a connection holds at most one partial
    /// head or one body. Parsing and judging are pure and run contained: a panic there closes
    /// this connection only ([`Shard::parse_panicked`]).
    pub(super) fn serve_requests(&mut self, key: usize) {
        // Draining still answers what arrives on connections already accepted (an upgrade's
        // new process serves the rest), each with `Connection: close`; see `respond`.
        if self.handing.as_ref().is_some_and(Handing::holds_requests) {
            return; // what arrives is the successor's to read, or ours again on an abort
        }
        let max_body = self.config.max_body;
        loop {
            let client = &mut self.clients[key];
            if client.closing || client.close_after_flush {
                return;
            }
            if client.outbox.queued_bytes() >= RESPONSE_BACKLOG {
                return; // resumed by flush_pending once the peer reads
            }
            if self.speaks_h2(key) {
                return self.become_h2(key);
            }
            let client = &mut self.clients[key];
            let Phase::Request(state) = &mut client.phase else {
                return;
            };
            if state.awaiting.is_some() {
                return; // resumed by on_published
            }
            let step = match guard::contain(|| state.parser.advance(max_body)) {
                Ok(step) => step,
                Err(panic) => return self.parse_panicked(key, panic),
            };
            match step {
                Ok(Step::NeedMore) => {
                    if !client.readable {
                        return;
                    }
                    let handshaking = client.handshaking();
                    if handshaking && self.handshakes_left == 0 {
                        // This turn's handshake budget is spent: a later turn, in order.
                        return self.defer_handshake(key);
                    }
                    let began = client.tls.as_ref().is_some_and(|s| s.began());
                    let status = client.read_request_bytes(&mut self.scratch);
                    let begins = !began && client.tls.as_ref().is_some_and(|s| s.began());
                    let answer = client.tls.is_some() && client.wants_flush();
                    if handshaking {
                        self.handshakes_left = self.handshakes_left.saturating_sub(1);
                        if !client.handshaking() {
                            self.counters.add(Stat::TlsHandshakes, 1);
                        }
                    }
                    if begins {
                        self.began_handshake(key);
                    }
                    if answer {
                        // The handshake's answer waits in the session.
                        self.mark_pending(key);
                    }
                    let client = &mut self.clients[key];
                    match status {
                        ReadStatus::Data => {}
                        ReadStatus::WouldBlock => return,
                        // A client may half-close right after its last request: what is
                        // already answered still goes out, then the connection closes.
                        ReadStatus::Closed if !client.outbox.is_empty() => {
                            client.close_after_flush = true;
                            return;
                        }
                        ReadStatus::Closed => return self.close(key),
                    }
                }
                Ok(Step::Head) => self.judge_head(key),
                Ok(Step::Request(mut request)) => {
                    if self.drain_deadline.is_some() {
                        request.head.keep_alive = false; // the answer says Connection: close
                    }
                    let grant = match &mut self.clients[key].phase {
                        Phase::Request(state) => state.grant.take(),
                        _ => None,
                    };
                    self.dispatch(key, Via::Http1, request, grant)
                }
                Err(rejection) => return self.reject(key, rejection),
            }
        }
    }

    /// Judges the head `key`'s parser stopped at, before its body is read: 401, 403, 404,
    /// 405 and bad names are answered now and the body, if any, is read and dropped; an
    /// accepted head gets `100 Continue` when its client waits for one.
    pub(super) fn judge_head(&mut self, key: usize) {
        let Phase::Request(state) = &self.clients[key].phase else {
            return;
        };
        let Some(head) = state.parser.head() else {
            return;
        };
        // A client waiting for `100 Continue` may never send the body of a refused request,
        // so the position of its next request is unknown: close then.
        let keep_alive = head.keep_alive && !(head.expects_continue && head.has_body());
        let judged = match self.judge(key, head) {
            Err(panic) => return self.parse_panicked(key, panic),
            Ok(judged) => judged,
        };
        let Phase::Request(state) = &mut self.clients[key].phase else {
            return;
        };
        let keep_alive = keep_alive && self.drain_deadline.is_none();
        let (status, reason, extra) = match judged.outcome {
            Err(refusal) => refusal,
            Ok(grant) => {
                state.grant = grant;
                if state.parser.accept_head() {
                    self.queue(key, Bytes::from_static(http::CONTINUE));
                }
                return;
            }
        };
        state.parser.skip_body();
        self.counters.reject(status);
        debug!(
            shard = self.id,
            key, status, reason, "request refused from its head"
        );
        let response = http::error_response(status, &reason, keep_alive, &extra);
        self.respond(key, response, keep_alive);
    }

    /// Closes a connection whose request made the parser or judge panic, and says so once,
    /// with the request's shape and never its bytes.
    pub(super) fn parse_panicked(&mut self, key: usize, panic: Contained) {
        self.counters.add(Stat::ParsePanics, 1);
        if let Phase::Request(state) = &self.clients[key].phase {
            let shape = state.parser.shape();
            warn!(
                shard = self.id,
                key,
                method = ?shape.method,
                path_len = shape.path_len,
                headers = shape.headers,
                buffered = shape.buffered,
                at = panic.location.as_deref().unwrap_or("?"),
                "parsing a request panicked; its connection is closed (sse_edge_parse_panics_total)"
            );
        }
        self.close(key);
    }

    /// Answers one complete request that came `via` a protocol, its head judged and granted
    /// `grant`.
    pub(super) fn dispatch(
        &mut self,
        key: usize,
        via: Via,
        request: Request,
        grant: Option<StreamGrant>,
    ) {
        let keep_alive = request.head.keep_alive;
        let route = http::route(request.head.method, &request.head.path);
        match route {
            Route::Stream => self.start_stream(key, via, request, grant),
            Route::Broadcast => self.publish_request(key, via, request),
            Route::Page => {
                let page = self.node.pages[usize::from(keep_alive)].clone();
                self.answer(key, via, page, keep_alive)
            }
            // A load balancer routes around a node whose broker is down: its streams stay
            // open, but it could not publish or hear what others publish.
            Route::Health if self.broker.healthy() => self.answer(
                key,
                via,
                http::response(200, "text/plain; charset=utf-8", b"ok\n", keep_alive, ""),
                keep_alive,
            ),
            Route::Health => {
                self.counters.reject(503);
                let reason = "the cluster broker (Redis) is unreachable";
                let response = http::error_response(503, reason, keep_alive, "");
                self.answer(key, via, response, keep_alive);
            }
            Route::Metrics => {
                // Include this turn's counts of the shard that answers.
                self.stats[self.id].store(&self.counters);
                let (history_bytes, history_topics, topic_bytes) = self.hub.history_size();
                let (waiting, refused) = self.hub.waiting();
                let figures = metrics::NodeFigures {
                    events_encoded: self.hub.frames_encoded(),
                    history_bytes: history_bytes as u64,
                    history_topics: history_topics as u64,
                    topic_bytes: topic_bytes as u64,
                    inbox_overruns: self.hub.overruns(),
                    replay_waiting: (waiting as u64, refused),
                    broker: self.broker.figures(),
                    tls: self.node.tls.as_ref().map(|c| (c.not_after(), c.reloads())),
                };
                let body = metrics::render(&self.stats, figures);
                self.answer(
                    key,
                    via,
                    http::response(
                        200,
                        "text/plain; version=0.0.4; charset=utf-8",
                        body.as_bytes(),
                        keep_alive,
                        "",
                    ),
                    keep_alive,
                );
            }
            Route::Preflight => {
                let cors = self
                    .node
                    .cors
                    .preflight_headers(request.head.origin.as_deref());
                let headers = format!("{cors}Allow: GET, POST, OPTIONS\r\n");
                let response = http::response(204, "text/plain", b"", keep_alive, &headers);
                self.answer(key, via, response, keep_alive)
            }
            // Judged from the head already (its body skipped); kept for completeness.
            Route::WrongMethod(_) | Route::NotFound => {
                if let Some((status, reason, extra)) = route_refusal(route) {
                    self.counters.reject(status);
                    let response = http::error_response(status, &reason, keep_alive, &extra);
                    self.answer(key, via, response, keep_alive);
                }
            }
        }
    }

    /// Queues an answer `via` the protocol its request came in: HTTP/1.1's as it is, an
    /// HTTP/2 stream's as HEADERS and DATA ending the stream.
    pub(super) fn answer(&mut self, key: usize, via: Via, response: Bytes, keep_alive: bool) {
        match via {
            Via::Http1 => self.respond(key, response, keep_alive),
            Via::Http2(id) => self.respond_h2(key, id, &response),
        }
    }

    /// Queues a response; without keep-alive, or while draining, the connection closes once
    /// it is written.
    pub(super) fn respond(&mut self, key: usize, response: Bytes, keep_alive: bool) {
        let client = &mut self.clients[key];
        if !keep_alive || self.drain_deadline.is_some() {
            client.close_after_flush = true;
        }
        if let Phase::Request(state) = &mut client.phase {
            state.answered = true;
        }
        self.queue(key, response);
    }

    /// Answers a request that cannot be served, then ends the connection.
    ///
    /// For framing errors: after one, where the next request starts is unknown.
    pub(super) fn reject(&mut self, key: usize, rejection: Rejection) {
        self.counters.reject(rejection.status);
        debug!(
            shard = self.id,
            key,
            status = rejection.status,
            reason = rejection.reason,
            "request rejected"
        );
        let response = http::error_response(rejection.status, rejection.reason, false, "");
        self.respond(key, response, false);
    }

    /// Publishes a complete request whose head was judged allowed ([`Shard::judge_head`]).
    pub(super) fn publish_request(&mut self, key: usize, via: Via, request: Request) {
        let keep_alive = request.head.keep_alive;
        let publish = guard::contain(|| params::parse_publish(request, SystemTime::now()));
        let publish = match publish {
            Err(panic) => return self.parse_panicked(key, panic),
            Ok(Ok(p)) => p,
            Ok(Err(rejection)) => {
                // The body was read whole: the connection can serve the next request.
                self.counters.reject(rejection.status);
                let response =
                    http::error_response(rejection.status, rejection.reason, keep_alive, "");
                return self.answer(key, via, response, keep_alive);
            }
        };
        let ticket = match via {
            Via::Http1 => {
                let client = &mut self.clients[key];
                let Phase::Request(state) = &mut client.phase else {
                    return;
                };
                // No further request on this connection is read until the broker answers,
                // so the answers leave in the order the requests came.
                state.awaiting = Some(Awaiting {
                    topic: publish.topic.clone(),
                    keep_alive,
                });
                Ticket {
                    key,
                    serial: client.serial,
                }
            }
            // HTTP/2 answers each stream on its own: other requests go on meanwhile.
            Via::Http2(id) => {
                let serial = self.next_serial();
                let Some(h2) = self.clients[key].h2() else {
                    return;
                };
                h2.awaiting.push(crate::node::h2::Owed {
                    serial,
                    id,
                    topic: publish.topic.clone(),
                });
                Ticket { key, serial }
            }
        };
        self.counters.add(Stat::EventsPublished, 1);
        self.broker.publish(
            &self.hub,
            self.id,
            Some(ticket),
            &publish.topic,
            publish.event.as_deref(),
            &publish.data,
        );
    }

    /// The broker's answer to a publish: the `200` with its id, or `503` and why.
    pub(super) fn on_published(&mut self, ticket: Ticket, outcome: Result<Accepted, Unavailable>) {
        let Some(client) = self.clients.get_mut(ticket.key) else {
            return;
        };
        if client.closing {
            return; // the publisher left; its event (if any) still went out
        }
        if let Some(h2) = client.h2() {
            let Some(at) = h2.awaiting.iter().position(|o| o.serial == ticket.serial) else {
                return;
            };
            let owed = h2.awaiting.swap_remove(at);
            let response = published_response(&owed.topic, outcome, true, &mut self.counters);
            return self.respond_h2(ticket.key, owed.id, &response);
        }
        if client.serial != ticket.serial {
            return; // the publisher left; its event (if any) still went out
        }
        let Phase::Request(state) = &mut client.phase else {
            return;
        };
        let Some(Awaiting { topic, keep_alive }) = state.awaiting.take() else {
            return;
        };
        let response = published_response(&topic, outcome, keep_alive, &mut self.counters);
        self.respond(ticket.key, response, keep_alive);
        // Requests pipelined behind the publish waited for this answer.
        self.serve_requests(ticket.key);
    }

    /// Publishes an event of the demo ticker (nobody waits for its answer).
    pub(super) fn publish_tick(&mut self, text: &str) {
        self.counters.add(Stat::EventsPublished, 1);
        self.broker
            .publish(&self.hub, self.id, None, DEFAULT_TOPIC, None, text);
    }
}

/// The answer to a publish: the `200` with its id, or `503` and why.
fn published_response(
    topic: &str,
    outcome: Result<Accepted, Unavailable>,
    keep_alive: bool,
    counters: &mut Counters,
) -> Bytes {
    match outcome {
        Ok(accepted) => {
            let body = format!(
                "{{\"id\":\"{}\",\"topic\":\"{topic}\",\"clients\":{}}}\n",
                accepted.id.wire(accepted.epoch.as_deref()),
                accepted.subscribers
            );
            http::response(200, "application/json", body.as_bytes(), keep_alive, "")
        }
        Err(unavailable) => {
            counters.reject(503);
            http::error_response(503, &unavailable.reason, keep_alive, "")
        }
    }
}

/// The answer to a route that exists for no request of this shape: `405` with `Allow`, or
/// `404`; None for routes that are served.
fn route_refusal(route: Route) -> Option<(u16, String, String)> {
    match route {
        Route::WrongMethod(allow) => Some((
            405,
            format!("method not allowed here; allowed: {allow}"),
            format!("Allow: {allow}\r\n"),
        )),
        Route::NotFound => Some((404, "no such path".to_owned(), String::new())),
        _ => None,
    }
}

/// The page's response without and with keep-alive, built once per node and shared by every
/// answer (a clone is a reference-count bump, not a copy of the page). The page learns from
/// a meta tag whether it may send a typed token in the URL.
pub(crate) fn pages(token_in_query: bool) -> [Bytes; 2] {
    const OFF: &str = r#"<meta name="sse-edge-token-in-query" content="off">"#;
    const ON: &str = r#"<meta name="sse-edge-token-in-query" content="on">"#;
    let page = String::from_utf8_lossy(PAGE);
    let page = if token_in_query {
        page.replacen(OFF, ON, 1)
    } else {
        page.into_owned()
    };
    [false, true].map(|keep_alive| {
        http::response(
            200,
            "text/html; charset=utf-8",
            page.as_bytes(),
            keep_alive,
            // The page's own CSP (a meta tag) pins its script; framing can only be
            // forbidden by a header.
            "Cache-Control: no-cache\r\n\
             Content-Security-Policy: frame-ancestors 'none'\r\n\
             X-Content-Type-Options: nosniff\r\n\
             Referrer-Policy: no-referrer\r\n",
        )
    })
}
