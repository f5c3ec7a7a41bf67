//! TLS for `https://` URLs: what to trust (`--cacert FILE` or `--insecure`), the client
//! configuration built from it, and the two non-blocking steps a stream's event loop needs
//! ([`flush`] and [`read`]).
//!
//! The parent builds one [`ClientConfig`] per run (for the publisher, and to check the CA
//! file before any worker starts); each worker builds its own from the [`Trust`] carried in
//! its plan, since a config cannot cross a process boundary.
//!
//! By default every stream does a full handshake: session resumption is off, so a run
//! measures what first-time clients (or a reconnect storm after a restart, whose tickets no
//! longer work) cost the server, the conservative figure for capacity. With `--tls-resume` a
//! worker's streams share its configuration's ticket store, so all but the first ones resume,
//! as browsers that come back after a blip do: the cheaper second storm. The buffered
//! [`ClientConnection`] is used as it is: the load generator's own memory per stream is not
//! what a run measures.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::{Deserialize, Serialize};

/// The only application protocol offered: the loadtest speaks HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Which server certificates to accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Certificates that chain to one of the CA certificates in this PEM file (`--cacert`).
    CaFile(PathBuf),
    /// Any certificate (`--insecure`): encrypted, not authenticated.
    Insecure,
}

/// Builds the client configuration for `trust`: TLS 1.2 and 1.3 with aws-lc-rs's safe
/// defaults, ALPN `http/1.1`; with `resume`, rustls's in-memory ticket store, shared by every
/// connection made from this configuration, else no resumption (see the module docs).
pub fn client_config(trust: &Trust, resume: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let mut config = match trust {
        Trust::CaFile(path) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    config.resumption = if resume {
        Resumption::default()
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Reads every `CERTIFICATE` in a PEM file into a root store.
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let context = |why: String| format!("--cacert {}: {why}", path.display());
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| context(pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| context(pem_error(e)))?;
    if certificates.is_empty() {
        return Err(context("no PEM CERTIFICATE in it".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for (i, certificate) in certificates.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|e| context(format!("certificate {}: {e}", i + 1)))?;
    }
    Ok(roots)
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        other => format!("not PEM: {other:?}"),
    }
}

/// `--insecure`: accepts any certificate for any name, but still checks that the server
/// signed the handshake with the key of the certificate it sent, using the provider's
/// algorithms, so the handshake itself costs what a verified one does.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What [`read`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// This many plaintext bytes, at the start of the buffer.
    Plaintext(usize),
    /// The socket has nothing more for now: wait for the next readable edge.
    WouldBlock,
    /// The server ended the connection, with or without `close_notify`, after the
    /// handshake (an end during it is an error: [`ClosedInHandshake`]).
    Closed,
}

/// The server closed the connection before the handshake finished.
#[derive(Debug)]
pub struct ClosedInHandshake;

impl fmt::Display for ClosedInHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the server closed the connection during the TLS handshake")
    }
}

impl std::error::Error for ClosedInHandshake {}

/// Whether `e` came from TLS (a handshake or record error, or [`ClosedInHandshake`]) rather
/// than from the socket.
pub fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>() || inner.is::<ClosedInHandshake>())
}

/// Sends what the session has queued (handshake messages, the request, alerts) until it is
/// all out or the socket would block. When it blocks, the caller must be registered for
/// writable edges: the rest leaves on the next one.
pub fn flush(conn: &mut ClientConnection, socket: &mut impl Write) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Returns the next plaintext the session holds; when it holds none, reads and decrypts
/// from the socket until it does or the socket would block, sending whatever the session
/// wants to send along the way (the handshake is driven here).
///
/// Called on every readable (or writable) edge of a TLS stream, and again until it answers
/// [`Got::WouldBlock`] or [`Got::Closed`]: mio is edge-triggered. A TLS error comes back as
/// an `io::Error` for which [`is_tls_error`] holds, after a best-effort send of the alert.
pub fn read(
    conn: &mut ClientConnection,
    socket: &mut (impl Read + Write),
    buf: &mut [u8],
) -> io::Result<Got> {
    loop {
        // Plaintext first: rustls refuses to read more records while its plaintext buffer
        // is full, and what is buffered already must not wait for the next edge.
        match conn.reader().read(buf) {
            Ok(0) => return Ok(Got::Closed),
            Ok(n) => return Ok(Got::Plaintext(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Got::Closed),
            Err(e) => return Err(e),
        }
        flush(conn, socket)?;
        match conn.read_tls(socket) {
            Ok(0) if conn.is_handshaking() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    ClosedInHandshake,
                ))
            }
            // rustls remembers the end; the reader reports it on the next pass.
            Ok(0) => {}
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // The alert that tells the server why; its own failure changes nothing.
                    let _ = flush(conn, socket);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Got::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ServerConfig, ServerConnection};

    /// A CA named `ca` and a server certificate it signed for `names`: (CA PEM, server
    /// config).
    fn ca_and_server(ca: &str, names: &[&str]) -> (String, Arc<ServerConfig>) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, ca);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        (ca.pem(), Arc::new(config))
    }

    fn ca_file(pem: &str, tag: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("loadtest-{}-{tag}.pem", std::process::id()));
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// A socket with nothing behind it but two byte queues: reads of an empty queue block.
    #[derive(Default)]
    struct Wire {
        incoming: VecDeque<u8>,
        outgoing: Vec<u8>,
        eof: bool,
    }

    impl Read for Wire {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.incoming.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            self.incoming.read(buf)
        }
    }

    impl Write for Wire {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.outgoing.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Moves the client's bytes to the server and the server's answer back; `Err` when the
    /// server refused what it got.
    fn serve(server: &mut ServerConnection, wire: &mut Wire) -> Result<(), rustls::Error> {
        let mut sent = std::mem::take(&mut wire.outgoing);
        let mut from_client = sent.as_slice();
        while !from_client.is_empty() {
            server.read_tls(&mut from_client).unwrap();
            server.process_new_packets()?;
        }
        sent.clear();
        let mut to_client = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut to_client).unwrap();
        }
        wire.incoming.extend(to_client);
        Ok(())
    }

    /// Runs a client against `server` until it has `want` plaintext bytes or an error.
    fn exchange(
        config: Arc<ClientConfig>,
        name: &str,
        server: Arc<ServerConfig>,
        answer: &[u8],
        want: usize,
    ) -> io::Result<Vec<u8>> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut client = ClientConnection::new(config, name).unwrap();
        let mut server = ServerConnection::new(server).unwrap();
        client
            .writer()
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .unwrap();
        let mut wire = Wire::default();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let mut answered = false;
        for _ in 0..20 {
            match read(&mut client, &mut wire, &mut buf)? {
                Got::Plaintext(n) => got.extend_from_slice(&buf[..n]),
                Got::Closed => break,
                Got::WouldBlock => {
                    if serve(&mut server, &mut wire).is_err() {
                        wire.eof = true;
                    }
                    let mut request = [0u8; 64];
                    if !answered && matches!(server.reader().read(&mut request), Ok(n) if n > 0) {
                        server.writer().write_all(answer).unwrap();
                        answered = true;
                        serve(&mut server, &mut wire).unwrap();
                    }
                }
            }
            if got.len() >= want {
                break;
            }
        }
        Ok(got)
    }

    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: hello\n\n";

    #[test]
    fn a_trusted_ca_and_insecure_both_get_the_plaintext() {
        let (ca, server) = ca_and_server("good CA", &["localhost", "127.0.0.1"]);
        let path = ca_file(&ca, "good-ca");
        let trusted = client_config(&Trust::CaFile(path.clone()), false).unwrap();
        let _ = std::fs::remove_file(&path);
        for name in ["localhost", "127.0.0.1"] {
            let got = exchange(trusted.clone(), name, server.clone(), ANSWER, ANSWER.len());
            assert_eq!(got.unwrap(), ANSWER, "{name}");
        }
        // --insecure: a certificate for another name, from a CA nobody trusts.
        let (_, elsewhere) = ca_and_server("unknown CA", &["elsewhere.example"]);
        let insecure = client_config(&Trust::Insecure, false).unwrap();
        let got = exchange(insecure, "127.0.0.1", elsewhere, ANSWER, ANSWER.len());
        assert_eq!(got.unwrap(), ANSWER);
    }

    #[test]
    fn an_untrusted_or_misnamed_certificate_is_a_tls_error() {
        let (_, server) = ca_and_server("server's CA", &["localhost"]);
        let (other_ca, _) = ca_and_server("another CA", &["localhost"]);
        let path = ca_file(&other_ca, "other-ca");
        let wrong = client_config(&Trust::CaFile(path.clone()), false).unwrap();
        let _ = std::fs::remove_file(&path);
        let e = exchange(wrong, "localhost", server, ANSWER, 1).unwrap_err();
        assert!(is_tls_error(&e), "{e}");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");

        let (ca, server) = ca_and_server("good CA", &["localhost"]);
        let path = ca_file(&ca, "name-ca");
        let trusted = client_config(&Trust::CaFile(path.clone()), false).unwrap();
        let _ = std::fs::remove_file(&path);
        let e = exchange(trusted, "127.0.0.1", server, ANSWER, 1).unwrap_err();
        assert!(is_tls_error(&e), "{e}");
        assert!(e.to_string().contains("not valid for name"), "{e}");
        assert!(!is_tls_error(&io::ErrorKind::ConnectionReset.into()));
    }

    #[test]
    fn a_server_that_hangs_up_mid_handshake_is_a_tls_error() {
        let config = client_config(&Trust::Insecure, false).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(config, name).unwrap();
        let mut wire = Wire {
            eof: true,
            ..Wire::default()
        };
        let e = read(&mut client, &mut wire, &mut [0u8; 64]).unwrap_err();
        assert!(is_tls_error(&e), "{e}");
        assert!(!wire.outgoing.is_empty(), "the ClientHello went out first");
    }

    #[test]
    fn a_bad_ca_file_is_one_clear_line() {
        let missing = Trust::CaFile("/nonexistent/ca.pem".into());
        let e = client_config(&missing, false).unwrap_err();
        assert!(e.starts_with("--cacert /nonexistent/ca.pem: "), "{e}");

        let empty = ca_file("not a certificate\n", "empty");
        let e = client_config(&Trust::CaFile(empty.clone()), false).unwrap_err();
        assert!(e.ends_with("no PEM CERTIFICATE in it"), "{e}");

        std::fs::write(
            &empty,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = client_config(&Trust::CaFile(empty.clone()), false).unwrap_err();
        let _ = std::fs::remove_file(&empty);
        assert!(e.contains("certificate 1: "), "{e}");
    }

    #[test]
    fn trust_crosses_the_worker_pipe() {
        for trust in [Trust::CaFile("/etc/ca.pem".into()), Trust::Insecure] {
            let line = serde_json::to_string(&trust).unwrap();
            assert_eq!(serde_json::from_str::<Trust>(&line).unwrap(), trust);
        }
    }
}
