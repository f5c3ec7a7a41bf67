//! Telling a supervisor how the node is doing: systemd's `sd_notify` protocol, one datagram
//! to the socket named by `NOTIFY_SOCKET`, so a `Type=notify` unit starts its dependants only
//! once the listeners are bound, and knows when the node begins to drain.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call does nothing. A failure to notify
//! is logged, never fatal: the node serves either way.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `message` (`KEY=value` lines) to `$NOTIFY_SOCKET`; `Ok(false)` when there is none.
pub fn notify(message: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (what systemd itself uses).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        socket.send_to(message.as_bytes(), &path)?;
    }
    Ok(true)
}

/// The node is serving: `READY=1`, with its process id and a status line.
pub fn ready(status: &str) -> io::Result<bool> {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS={status}",
        std::process::id()
    ))
}

/// The node is draining and will exit.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1\nSTATUS=draining")
}
