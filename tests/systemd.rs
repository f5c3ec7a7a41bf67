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

#[test]
fn an_upgrade_tells_systemd_the_new_main_pid_and_never_stopping() {
    let dir = util::tempdir("notify-upgrade");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let exe = dir.join("sse-edge");
    std::fs::copy(env!("CARGO_BIN_EXE_sse-edge"), &exe).unwrap();
    let mut old = Server::start_exe_env(&exe, &[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    assert!(receive(&socket).contains("READY=1"));
    let _stream = old.stream("/stream");
    old.signal(libc::SIGUSR2);
    // The new process says it is ready (with its own pid), then the old one hands systemd
    // the new main pid before it exits; neither says STOPPING=1, so the service stays up.
    let new_ready = receive(&socket);
    let new_pid: u32 = new_ready
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{new_ready:?}"));
    let _new = util::Successor(new_pid);
    assert!(new_ready.lines().any(|l| l == "READY=1"), "{new_ready:?}");
    assert_ne!(new_pid, old.pid());
    let handed = receive(&socket);
    assert_eq!(handed.trim(), format!("MAINPID={new_pid}"));
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        socket.recv(&mut buf).is_err(),
        "nothing after the new main pid"
    );
    std::fs::remove_dir_all(&dir).ok();
}
