//! TLS on the reactor (rustls): the node's certificate, reloadable on `SIGHUP`, and the record
//! layer between one connection's socket and the shard.
//!
//! The per-event path stays encode-once: a stream's frames wait in its bounded outbox as
//! shared `Bytes`, exactly as in plain HTTP, and are encrypted only when the socket can take
//! them ([`flush`]). rustls holds at most [`TLS_BUFFER`] of ciphertext per connection beyond
//! that, so `--client-buffer` still bounds what a slow TLS reader costs, and an idle stream
//! keeps no ciphertext at all.

use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::outbox::{Flush, Outbox, Written};

/// Ciphertext rustls may hold for one connection at a time, unsent: one full record and a
/// little more. The outbox holds the rest, as plaintext shared with every other stream.
pub const TLS_BUFFER: usize = 17 * 1024;

/// The node's certificate and key, as a rustls configuration that new handshakes use.
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
    not_after: AtomicU64,
    reloads: AtomicU64,
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
    pub fn load(cert: &Path, key: &Path) -> Result<Certificate, String> {
        let (config, not_after) = server_config(cert, key)?;
        Ok(Certificate {
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
        let (config, not_after) = server_config(&self.cert, &self.key)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.not_after.store(not_after, Ordering::Relaxed);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(format!(
            "TLS certificate {} reloaded (valid until {})",
            self.cert.display(),
            crate::params::rfc3339(
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
/// ALPN `http/1.1`, session tickets; and the leaf certificate's expiry.
fn server_config(cert: &Path, key: &Path) -> Result<(ServerConfig, u64), String> {
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
        .map_err(|e| format!("--tls-cert {shown} and --tls-key {}: {e}", key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption without server state: a reconnecting browser skips the signature.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| format!("cannot set up TLS session tickets: {e}"))?;
    Ok((config, not_after))
}

/// A new server-side connection whose rustls buffers are bounded by [`TLS_BUFFER`].
pub fn accept(certificate: &Certificate) -> Result<ServerConnection, rustls::Error> {
    let mut conn = ServerConnection::new(certificate.config())?;
    conn.set_buffer_limit(Some(TLS_BUFFER));
    Ok(conn)
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
    /// The peer sent something that is not TLS, or broke the protocol: the alert rustls
    /// queued should be flushed, then the connection closed.
    Refused(rustls::Error),
}

/// Reads ciphertext until some plaintext comes out (handed to `sink`), the socket would
/// block, or the connection ends. Handshake records are processed on the way; what they
/// answer waits in rustls for [`flush`].
pub fn read(
    conn: &mut ServerConnection,
    socket: &mut impl Read,
    scratch: &mut [u8],
    mut sink: impl FnMut(&[u8]),
) -> TlsRead {
    loop {
        match conn.read_tls(socket) {
            Ok(0) => return TlsRead::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TlsRead::WouldBlock,
            Err(_) => return TlsRead::Closed,
        }
        let state = match conn.process_new_packets() {
            Ok(state) => state,
            Err(e) => return TlsRead::Refused(e),
        };
        let mut got = false;
        if state.plaintext_bytes_to_read() > 0 {
            loop {
                match conn.reader().read(scratch) {
                    Ok(0) => break,
                    Ok(n) => {
                        sink(scratch.get(..n).unwrap_or_default());
                        got = true;
                    }
                    Err(_) => break, // WouldBlock: all plaintext taken
                }
            }
        }
        if state.peer_has_closed() {
            return TlsRead::Closed;
        }
        if got {
            return TlsRead::Data;
        }
    }
}

/// Writes what rustls holds, then encrypts the outbox's frames a record's worth at a time
/// and writes them, until both are empty or the socket would block.
pub fn flush(
    conn: &mut ServerConnection,
    socket: &mut impl Write,
    outbox: &mut Outbox,
) -> io::Result<(Flush, Written)> {
    let mut total = Written::default();
    loop {
        while conn.wants_write() {
            match conn.write_tls(socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flush::Blocked, total))
                }
                Err(e) => return Err(e),
            }
        }
        if outbox.is_empty() {
            return Ok((Flush::Empty, total));
        }
        // Stops at TLS_BUFFER (a WouldBlock from Plaintext): then back to writing.
        let (_, written) = outbox.write_to(&mut Plaintext(conn))?;
        total.bytes += written.bytes;
        total.frames += written.frames;
        if written.bytes == 0 && !conn.wants_write() {
            // Not reachable with an empty rustls buffer; never spin if it were.
            return Ok((Flush::Blocked, total));
        }
    }
}

/// The plaintext side of a connection as a `Write` that says `WouldBlock` once rustls holds
/// [`TLS_BUFFER`] of ciphertext.
struct Plaintext<'a>(&'a mut ServerConnection);

impl Write for Plaintext<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.writer().write(buf)? {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        match self.0.writer().write_vectored(bufs)? {
            0 if wanted > 0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
