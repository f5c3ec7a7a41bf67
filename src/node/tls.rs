//! TLS on the reactor (rustls): the node's certificate, reloadable on `SIGHUP`, and the record
//! layer between one connection's socket and the shard.
//!
//! The per-event path stays encode-once: a stream's frames wait in its bounded outbox as
//! shared `Bytes`, exactly as in plain HTTP, and are encrypted only when the socket can take
//! them ([`Session::flush`]), into the shard's scratch buffer. rustls's unbuffered API keeps no
//! buffers of its own: a connection holds at most one record of ciphertext beyond its outbox
//! (and only under backpressure), so `--client-buffer` still bounds what a slow TLS reader
//! costs, and an idle stream keeps no read or write buffer at all.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError, UnbufferedStatus};
use rustls::ServerConfig;

use crate::delivery::outbox::{Flush, Outbox, Written};

/// The node's certificate and key, as a rustls configuration that new handshakes use.
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
    not_after: AtomicU64,
    reloads: AtomicU64,
    /// ALPN offers `h2` (`--http2 on`).
    h2: bool,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Loads the chain and key; any problem is one line naming the file.
    /// With `h2`, ALPN offers `h2` before `http/1.1` (`--http2 on`).
    pub fn load(cert: &Path, key: &Path, h2: bool) -> Result<Certificate, String> {
        let (config, not_after) = server_config(cert, key, h2)?;
        Ok(Certificate {
            h2,
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: RwLock::new(Arc::new(config)),
            not_after: AtomicU64::new(not_after),
            reloads: AtomicU64::new(0),
        })
    }

    /// Re-reads both files (`SIGHUP`): new handshakes use them, open connections keep theirs.
    /// On any error the certificate in use stays, and the error says why.
    pub fn reload(&self) -> Result<String, String> {
        let (config, not_after) = server_config(&self.cert, &self.key, self.h2)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.not_after.store(not_after, Ordering::Relaxed);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(format!(
            "TLS certificate {} reloaded (valid until {})",
            self.cert.display(),
            crate::wire::params::rfc3339(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(not_after)
            )
        ))
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// When the certificate in use expires (unix seconds; 0 if it could not be read).
    pub fn not_after(&self) -> u64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }
}

/// A rustls server configuration from PEM files: TLS 1.2 and 1.3 with rustls's defaults,
/// ALPN `h2` (with `h2`) then `http/1.1`, session tickets; and the leaf certificate's expiry.
fn server_config(cert: &Path, key: &Path, h2: bool) -> Result<(ServerConfig, u64), String> {
    let shown = cert.display();
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read --tls-cert {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {shown}: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("--tls-cert {shown}: no certificate in it"));
    };
    let not_after = not_after(leaf).unwrap_or(0);
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read a private key from --tls-key {}: {e}",
            key.display()
        )
    })?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "--tls-key {} is not the private key of the certificate in --tls-cert {shown}",
                key.display()
            ),
            e => format!("--tls-cert {shown} and --tls-key {}: {e}", key.display()),
        })?;
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    // Resumption without server state: a reconnecting browser skips the signature.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| format!("cannot set up TLS session tickets: {e}"))?;
    Ok((config, not_after))
}

/// One TLS connection: rustls's unbuffered session, and the few bytes it must keep between
/// calls. Idle, both buffers are empty and hold no allocation: a record is decrypted in
/// place in what was read, and a frame is encrypted into the shard's [`Scratch`] and written
/// from there. Only a partial record received, or ciphertext the socket did not take whole
/// (a handshake flight, a record under backpressure), is kept here until it can go on.
pub struct Session {
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not processed yet (a partial record).
    incoming: Vec<u8>,
    /// Ciphertext to write before anything else, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    handshaking: bool,
    /// Ciphertext has been read: the handshake has had its first turn.
    began: bool,
    /// Waiting in the shard's handshake queue for a turn.
    queued: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .field("handshaking", &self.handshaking)
            .field("began", &self.began)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

/// Most ciphertext a connection may have received and not yet processed: rustls's own cap on
/// a handshake flight (64 KiB) and one record.
const MAX_INCOMING: usize = 64 * 1024 + RECORD_WIRE;

/// The largest plaintext of one TLS record.
const RECORD: usize = 16 * 1024;

/// Room for one record on the wire: its plaintext, header, content type, tag and padding.
const RECORD_WIRE: usize = RECORD + 256;

/// A shard's buffers for encrypting: plaintext gathered from several frames, and the record
/// it becomes. Shared by every TLS connection of the shard.
pub struct Scratch {
    plain: Box<[u8]>,
    cipher: Box<[u8]>,
}

impl Scratch {
    /// Buffers for a shard that serves TLS; an empty pair (no allocation) for one that
    /// does not.
    pub fn new(tls: bool) -> Scratch {
        let (plain, cipher) = if tls { (RECORD, RECORD_WIRE) } else { (0, 0) };
        Scratch {
            plain: vec![0; plain].into_boxed_slice(),
            cipher: vec![0; cipher].into_boxed_slice(),
        }
    }
}

/// Where processing the received records left the session.
enum Progress {
    /// Waiting for more input (the handshake, or a partial record).
    NeedInput,
    /// Application data may be sent.
    Ready,
    /// The peer closed (`close_notify`), or the session ended.
    Closed,
}

/// What one read pass over a TLS connection found.
#[derive(Debug)]
pub enum TlsRead {
    /// Plaintext arrived (handed to the sink); more may follow.
    Data,
    /// Nothing more for now (the handshake may have progressed).
    WouldBlock,
    /// The peer closed, or the connection broke.
    Closed,
    /// The peer sent something that is not TLS, or broke the protocol.
    Refused(rustls::Error),
}

impl Session {
    /// A new server-side session with the node's current certificate.
    pub fn new(certificate: &Certificate) -> Result<Session, rustls::Error> {
        Ok(Session {
            conn: UnbufferedServerConnection::new(certificate.config())?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            handshaking: true,
            began: false,
            queued: false,
        })
    }

    /// Whether the handshake is still going on.
    pub fn handshaking(&self) -> bool {
        self.handshaking
    }

    /// Whether ALPN agreed on `h2` (known once the handshake is over).
    pub fn alpn_h2(&self) -> bool {
        self.conn.alpn_protocol() == Some(&b"h2"[..])
    }

    /// Whether any ciphertext has been read: the handshake has had its first turn. Until
    /// then a client's time waiting for that turn is the node's, not the client's.
    pub fn began(&self) -> bool {
        self.began
    }

    /// Whether the session waits in its shard's handshake queue.
    pub fn queued(&self) -> bool {
        self.queued
    }

    /// Marks the session as waiting in (or taken out of) its shard's handshake queue, so it is
    /// listed once however many readable events come meanwhile.
    pub fn set_queued(&mut self, queued: bool) {
        self.queued = queued;
    }

    /// Whether ciphertext waits to be written (a handshake flight, or a record the socket
    /// did not take whole).
    pub fn wants_write(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    /// Reads ciphertext until some plaintext comes out (handed to `sink`), the socket would
    /// block, or the connection ends. Handshake records are answered on the way; the answer
    /// waits in the session for [`Session::flush`].
    pub fn read(
        &mut self,
        socket: &mut impl Read,
        scratch: &mut [u8],
        mut sink: impl FnMut(&[u8]),
    ) -> TlsRead {
        loop {
            let n = match socket.read(scratch) {
                Ok(0) => return TlsRead::Closed,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TlsRead::WouldBlock,
                Err(_) => return TlsRead::Closed,
            };
            let Some(read) = scratch.get(..n) else {
                return TlsRead::Closed;
            };
            self.began = true;
            if self.incoming.len().saturating_add(n) > MAX_INCOMING {
                return TlsRead::Refused(rustls::Error::General(
                    "too much TLS input without a complete record".into(),
                ));
            }
            self.incoming.extend_from_slice(read);
            let mut got = false;
            let progress = self.process(&mut |plain| {
                got = true;
                sink(plain);
            });
            match progress {
                Err(e) => return TlsRead::Refused(e),
                Ok(Progress::Closed) => return TlsRead::Closed,
                Ok(Progress::NeedInput | Progress::Ready) if got => return TlsRead::Data,
                Ok(_) => {}
            }
        }
    }

    /// Processes every complete record received: handshake messages are answered into
    /// `outgoing`, application data goes to `sink`. Frees `incoming` once it is empty.
    fn process(&mut self, sink: &mut dyn FnMut(&[u8])) -> Result<Progress, rustls::Error> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let step: Result<Option<Progress>, rustls::Error> = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Ok(None);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                sink(record.payload);
                            }
                            Err(e) => {
                                step = Err(e);
                                break;
                            }
                        }
                    }
                    step
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.outgoing, |buf| encode.encode(buf)).map(|()| None)
                }
                // What was encoded is in `outgoing`, in order; it is written by the next flush,
                // before anything encrypted after it.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Progress::NeedInput)),
                Ok(ConnectionState::WriteTraffic(_)) => {
                    self.handshaking = false;
                    Ok(Some(Progress::Ready))
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                    Ok(Some(Progress::Closed))
                }
                // Early data is off (max_early_data_size 0); anything newer: stop here.
                Ok(_) => Ok(Some(Progress::Closed)),
            };
            let discard = discard.min(self.incoming.len());
            self.incoming.drain(..discard);
            match step {
                Err(e) => return Err(e),
                Ok(None) => {}
                Ok(Some(progress)) => {
                    if self.incoming.is_empty() && self.incoming.capacity() > 0 {
                        self.incoming = Vec::new(); // an idle stream keeps no read buffer
                    }
                    return Ok(progress);
                }
            }
        }
    }

    /// Writes what the session holds, then encrypts the outbox's frames a record at a time
    /// into the shard's scratch and writes them, until both are empty or the socket would
    /// block. A record the socket takes whole is never copied again; the rest of one it does
    /// not is kept in the session.
    pub fn flush(
        &mut self,
        socket: &mut impl Write,
        outbox: &mut Outbox,
        scratch: &mut Scratch,
    ) -> io::Result<(Flush, Written)> {
        let mut total = Written::default();
        loop {
            if self.write_pending(socket)? == Flush::Blocked {
                return Ok((Flush::Blocked, total));
            }
            // Nothing is queued before the handshake ends: answers follow a request, and a
            // request arrives only once it has.
            if outbox.is_empty() || self.handshaking {
                return Ok((Flush::Empty, total));
            }
            let plain_len = outbox.copy_front(&mut scratch.plain);
            let plain = scratch.plain.get(..plain_len).unwrap_or_default();
            let cipher_len = self.encrypt(plain, &mut scratch.cipher)?;
            total.bytes += plain_len;
            total.frames += outbox.consume(plain_len);
            let mut at = 0;
            while let Some(record) = scratch.cipher.get(at..cipher_len).filter(|r| !r.is_empty()) {
                match socket.write(record) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => at += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Under backpressure only: the rest of this record waits here.
                        self.outgoing.extend_from_slice(record);
                        self.sent = 0;
                        return Ok((Flush::Blocked, total));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Writes the ciphertext the session holds until it is all out (then frees it) or the
    /// socket would block.
    fn write_pending(&mut self, socket: &mut impl Write) -> io::Result<Flush> {
        while let Some(pending) = self.outgoing.get(self.sent..).filter(|p| !p.is_empty()) {
            match socket.write(pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) => return Err(e),
            }
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        Ok(Flush::Empty)
    }

    /// Encrypts `plain` as one record into `out`. Post-handshake messages rustls wants sent
    /// first (session tickets, key updates) are queued in `outgoing`, which the caller writes
    /// before the record: then the record is appended there too, to keep the order.
    fn encrypt(&mut self, plain: &[u8], out: &mut [u8]) -> io::Result<usize> {
        loop {
            // An empty input: records that arrived meanwhile stay unread for the reader.
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state.map_err(io::Error::other)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    let n = traffic.encrypt(plain, out).map_err(io::Error::other)?;
                    if self.wants_write() {
                        self.outgoing
                            .extend_from_slice(out.get(..n).unwrap_or_default());
                        return Ok(0);
                    }
                    return Ok(n);
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut self.outgoing, |buf| encode.encode(buf))
                        .map_err(io::Error::other)?;
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                _ => {
                    return Err(io::Error::other(
                        "the TLS session cannot send application data",
                    ))
                }
            }
        }
    }

    /// Tells the peer the connection ends (`close_notify`), in one try: a peer that does not
    /// read it still sees the TCP close.
    pub fn close_notify(&mut self, socket: &mut impl Write) {
        if self.handshaking {
            return;
        }
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::WriteTraffic(mut traffic)) = state {
            let mut alert = [0u8; 64];
            if let Ok(n) = traffic.queue_close_notify(&mut alert) {
                self.outgoing
                    .extend_from_slice(alert.get(..n).unwrap_or_default());
            }
        }
        let _ = self.write_pending(socket); // one try: a peer that does not read gets the FIN
    }
}

/// Appends what `encode` writes to `out`, growing it to the size rustls asks for.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut room = 4096;
    loop {
        out.resize(start + room, 0);
        match encode(out.get_mut(start..).unwrap_or_default()) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(rustls::Error::General(format!(
                    "cannot encode a TLS message: {e}"
                )));
            }
        }
    }
}

/// The `notAfter` of a DER certificate, in unix seconds, read by walking its DER:
/// Certificate → tbsCertificate → (skip `[0]` version, serial, signature, issuer) → validity.
pub fn not_after(cert: &[u8]) -> Option<u64> {
    let (_, certificate, _) = der(cert)?;
    let (_, mut tbs, _) = der(certificate)?;
    let (tag, _, rest) = der(tbs)?;
    if tag == 0xA0 {
        tbs = rest; // explicit version
    }
    for _ in 0..3 {
        let (_, _, rest) = der(tbs)?; // serialNumber, signature, issuer
        tbs = rest;
    }
    let (_, validity, _) = der(tbs)?;
    let (_, _, after_not_before) = der(validity)?;
    let (tag, time, _) = der(after_not_before)?;
    parse_time(tag, time)
}

/// One DER element: (tag, contents, what follows). Long-form lengths up to 4 bytes.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes.iter().fold(0usize, |n, &b| n << 8 | usize::from(b))
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18).
fn parse_time(tag: u8, text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize| -> Option<i64> { rest.get(at..at + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    // Days from civil (Howard Hinnant), the inverse of params::civil_from_days.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_expiry_is_read_from_der() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2031-07-09T00:00:00Z
        assert_eq!(not_after(cert.der()), Some(1_941_321_600));
        params.not_after = rcgen::date_time_ymd(2051, 1, 1); // GeneralizedTime from 2050 on
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()), Some(2_556_144_000));
    }

    #[test]
    fn broken_der_is_none_not_a_panic() {
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01]), None);
        assert_eq!(parse_time(0x17, b"3107090000Z"), None);
        assert_eq!(parse_time(0x17, b"310709000000Z"), Some(1_941_321_600));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = not_after(&bytes);
        }
    }
}
