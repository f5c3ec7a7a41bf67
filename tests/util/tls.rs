//! TLS helpers for the integration tests: a certificate made in the test (rcgen), the client
//! configuration that trusts it, and a blocking TLS connection for one-off requests.
//! Included with `#[path = "util/tls.rs"] mod tls_util;` by the tests that serve TLS.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A certificate for localhost and 127.0.0.1 (ECDSA P-256), written as PEM files under a
/// directory.
pub struct Cert {
    /// The certificate, to trust it.
    pub der: CertificateDer<'static>,
    /// Its PEM file (`--tls-cert`).
    pub cert: PathBuf,
    /// Its key's PEM file (`--tls-key`).
    pub key: PathBuf,
}

impl Cert {
    /// Makes one, as `{name}.cert.pem` and `{name}.key.pem` under `dir`.
    pub fn new(dir: &Path, name: &str) -> Cert {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let cert = dir.join(format!("{name}.cert.pem"));
        let key = dir.join(format!("{name}.key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        Cert {
            der: certified.cert.der().clone(),
            cert,
            key,
        }
    }

    /// `--tls-cert FILE --tls-key FILE`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// A client configuration that trusts only this certificate. One configuration keeps its
    /// session tickets across connections, as a browser does.
    pub fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A blocking TLS connection.
pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr` as `localhost`, handshake done, reads bounded by `patience`.
pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>, patience: Duration) -> io::Result<Tls> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(patience))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// `GET /metrics` over TLS, each name summed over its label sets.
pub fn metrics(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    patience: Duration,
) -> io::Result<HashMap<String, f64>> {
    let mut tls = connect(addr, config, patience)?;
    write!(
        tls,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    tls.read_to_string(&mut text)?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(super::util::parse_metrics(body))
}
