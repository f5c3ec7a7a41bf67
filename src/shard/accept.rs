//! Taking connections in: accepting until `WouldBlock`, admitting or shedding, the cap on
//! connections still in the request phase, and the jittered `retry:` of a shed stream.

use super::*;

impl Shard {
    /// Accepts until `WouldBlock`, unless paused after running out of descriptors.
    pub(super) fn accept_all(&mut self) {
        // Handing over, the listeners are the successor's to accept on (or ours again if
        // the hand-over is called off).
        if self.accept_paused_until.is_some() || self.handing.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => {
                    self.accept_failing = false;
                    self.admit(socket, peer)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The peer gave up between SYN and accept: nothing to do.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    self.counters.add(Stat::AcceptErrors, 1);
                    if !std::mem::replace(&mut self.accept_failing, true) {
                        warn!(shard = self.id, error = %e, "accept failed; shedding or pausing until it works again (counted in sse_edge_accept_errors_total)");
                    }
                    if out_of_descriptors(&e) && self.shed_with_reserve() {
                        continue;
                    }
                    // Accepting again at once would fail again at once, and spin. Pause; the
                    // timer resumes (no new edge would come for connections already waiting).
                    self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Out of descriptors: gives up the reserve to accept one waiting connection and shed it.
    /// Returns false when there was no reserve or the accept failed anyway.
    pub(super) fn shed_with_reserve(&mut self) -> bool {
        if self.reserve.take().is_none() {
            return false;
        }
        let accepted = self.listener.as_ref().map(TcpListener::accept);
        let shed = match accepted {
            Some(Ok((socket, _))) => {
                self.shed_unadmitted(socket);
                true
            }
            _ => false,
        };
        self.reserve = File::open("/dev/null").ok();
        shed
    }

    /// Answers a connection there is no room to keep, from the one read it gets: a stream
    /// request is shed (so the browser comes back), anything else gets 503, silence gets
    /// closed (an `EventSource` retries after a network error too).
    pub(super) fn shed_unadmitted(&mut self, mut socket: TcpStream) {
        if self.node.tls.is_some() {
            // No room for a handshake: close, and the browser retries after its retry delay.
            let _ = socket.shutdown(std::net::Shutdown::Both);
            return;
        }
        let n = socket.read(&mut self.scratch).unwrap_or(0);
        let response = if self.scratch[..n].starts_with(b"GET /stream") {
            self.counters.add(Stat::Shed, 1);
            let retry = self.jitter(self.config.retry_ms * SHED_RETRY_FACTOR);
            [
                &self.node.cors.stream_head(None)[..],
                &sse::encode_shed(retry),
            ]
            .concat()
        } else if n > 0 {
            self.counters.reject(503);
            http::error_response(503, "server at capacity; retry later", false, "").to_vec()
        } else {
            Vec::new()
        };
        // One non-blocking write into an empty socket buffer; a few hundred bytes fit.
        let _ = socket.write(&response);
        let _ = socket.shutdown(std::net::Shutdown::Write);
    }

    pub(super) fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        // Each frame is a complete message; do not let Nagle hold it back.
        let _ = socket.set_nodelay(true);
        self.room_for_a_client();
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(shard = self.id, %peer, error = %e, "cannot register connection");
            return;
        }
        let tls = match &self.node.tls {
            None => None,
            Some(certificate) => match tls::Session::new(certificate) {
                Ok(session) => Some(Box::new(session)),
                Err(e) => {
                    warn!(shard = self.id, error = %e, "cannot start a TLS session");
                    return;
                }
            },
        };
        // The handshake must finish within the header timeout too: it is part of the request.
        let deadline = Instant::now() + self.config.header_timeout();
        self.serial = self.serial.wrapping_add(1);
        entry.insert(Client::new(socket, deadline, self.serial, tls));
        self.set_deadline(key, deadline);
        self.counters.add(Stat::Connections, 1);
        if self.requesting_now >= self.config.max_request_connections {
            self.evict_a_request_connection();
        }
        self.requesting.push_back((key as u32, self.serial));
        self.requesting_now += 1;
        // Drop entries of connections that moved on, once they outnumber the live ones.
        if self.requesting.len() > 2 * self.requesting_now + 64 {
            let requesting = std::mem::take(&mut self.requesting);
            self.requesting = requesting
                .into_iter()
                .filter(|&(key, serial)| self.is_requesting(key as usize, serial))
                .collect();
        }
        debug!(shard = self.id, %peer, key, "connection accepted");
    }

    /// Whether `key` with `serial` is still a connection in the request phase.
    pub(super) fn is_requesting(&self, key: usize, serial: u32) -> bool {
        self.clients.get(key).is_some_and(|c| {
            c.serial == serial && !c.closing && matches!(c.phase, Phase::Request(_))
        })
    }

    /// At the cap of request-phase connections: closes the oldest idle one (nothing
    /// buffered, nothing to send), else the oldest, so silent connections cannot lock new
    /// clients out. Each has had the longest to finish its request.
    pub(super) fn evict_a_request_connection(&mut self) {
        let mut oldest = None;
        let mut victim = None;
        for &(key, serial) in &self.requesting {
            let key = key as usize;
            if !self.is_requesting(key, serial) {
                continue;
            }
            oldest.get_or_insert(key);
            let client = &self.clients[key];
            if client.outbox.is_empty() && client.is_idle_request() {
                victim = Some(key);
                break;
            }
        }
        if let Some(key) = victim.or(oldest) {
            self.counters.add(Stat::RequestEvictions, 1);
            debug!(
                shard = self.id,
                key, "request connections at the cap; closing the oldest idle one"
            );
            self.close(key);
        }
    }

    /// Bookkeeping for a connection leaving the request phase (it became a stream, it is
    /// lingering after its last answer, or it is closing).
    pub(super) fn left_request_phase(&mut self) {
        self.requesting_now = self.requesting_now.saturating_sub(1);
    }

    /// At the end of a turn: drops the entries of connections that left the request phase
    /// once they outnumber the live ones, and with them the storage a storm grew: after a
    /// burst has become streams, the list is empty and holds no memory.
    pub(super) fn compact_requesting(&mut self) {
        if self.requesting.len() <= 2 * self.requesting_now + 64 {
            return;
        }
        let requesting = std::mem::take(&mut self.requesting);
        self.requesting = requesting
            .into_iter()
            .filter(|&(key, serial)| self.is_requesting(key as usize, serial))
            .collect();
    }

    /// Answers a stream request beyond capacity: its stream `head` (unless it was sent
    /// already), `: shed`, a long jittered `retry:`, then close.
    pub(super) fn shed(&mut self, key: usize, head: Option<Bytes>, refusal: Refusal) {
        self.counters.add(Stat::Shed, 1);
        if refusal == Refusal::TopicsFull {
            self.counters.add(Stat::TopicBudgetShed, 1);
        }
        let factor = match refusal {
            Refusal::Draining => 1,
            Refusal::NodeFull | Refusal::AddressFull | Refusal::TopicsFull => SHED_RETRY_FACTOR,
        };
        let retry = self.jitter(self.config.retry_ms * factor);
        if let Some(head) = head {
            self.queue(key, head);
        }
        self.queue(key, sse::encode_shed(retry));
        self.clients[key].close_after_flush = true;
        debug!(shard = self.id, key, ?refusal, "stream shed");
    }

    /// A `retry:` around `base` for one stream: uniform in [base/2, base*3/2), so that the
    /// clients of a restarted node come back spread over a whole period.
    pub(super) fn jitter(&mut self, base: u64) -> u64 {
        // xorshift64: cheap, and quality is irrelevant here.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        base / 2 + self.rng % base.max(1)
    }
}

/// Whether an accept error means the process or system is out of file descriptors.
pub(super) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
