//! Under systemd (`Type=notify`): the node says `READY=1`, with its pid, once its listeners
//! are bound, and `STOPPING=1` when it begins to drain; without `NOTIFY_SOCKET` it says
//! nothing and serves as usual.

mod util;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use util::{Server, PATIENCE};

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = socket
        .recv(&mut buf)
        .expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_then_stopping_over_the_notify_socket() {
    let path = std::env::temp_dir().join(format!("sse-edge-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut server = Server::start_with_env(&[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let ready = receive(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready
            .lines()
            .any(|l| l == format!("MAINPID={}", server.pid())),
        "{ready:?}"
    );
    assert!(
        ready.contains(&format!("STATUS=serving on {}", server.addr)),
        "{ready:?}"
    );
    // Ready means ready: a stream opens at once.
    let _ = server.stream("/stream");
    server.signal(libc::SIGTERM);
    let stopping = receive(&socket);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert_eq!(server.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_unreachable_notify_socket_is_logged_not_fatal() {
    let server = Server::start_with_env(&[], &[("NOTIFY_SOCKET", "/nonexistent/notify.sock")]);
    let _ = server.stream("/stream");
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        server
            .log()
            .contains("cannot tell systemd the node is ready"),
        "{}",
        server.log()
    );
}
