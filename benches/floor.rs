//! The floor: the least a server can do to deliver one event to N streams on Linux, used to
//! judge sse-edge's CPU per delivery (BENCHMARKS.md). **Not the product.**
//!
//! One epoll loop (mio), no shards, no queues, no limits, no HTTP beyond what the loadtest
//! sends: `GET /stream` gets a stream head; `POST /broadcast` with a `Content-Length` body is
//! encoded once (`id:` + one `data:` line) and written to every stream with exactly one
//! `write(2)` each. A write that would block or comes up short is simply abandoned: the floor
//! measures the cost of the syscalls, not delivery guarantees.
//!
//! Run: `cargo run --release --example floor -- 127.0.0.1:9090`

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n: connected\nretry: 2000\n\n";

struct Conn {
    socket: TcpStream,
    buf: Vec<u8>,
    streaming: bool,
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".into())
        .parse()
        .expect("usage: floor ADDR");
    sse_edge::node::fdlimit::raise_to_hard_limit()?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("floor listening on {}", listener.local_addr()?);
    let mut conns: Slab<Conn> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut next_id = 0u64;
    let mut scratch = vec![0u8; 65536];
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut socket, _)) = listener.accept() {
                    let key = conns.vacant_key();
                    socket.set_nodelay(true)?;
                    poll.registry()
                        .register(&mut socket, Token(key), Interest::READABLE)?;
                    conns.insert(Conn {
                        socket,
                        buf: Vec::new(),
                        streaming: false,
                    });
                }
                continue;
            }
            let key = event.token().0;
            let mut closed = false;
            while let Some(conn) = conns.get_mut(key) {
                match conn.socket.read(&mut scratch) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) if !conn.streaming => conn.buf.extend_from_slice(&scratch[..n]),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed {
                conns.remove(key);
                continue;
            }
            while let Some(request) = take_request(&mut conns[key].buf) {
                match request {
                    Request::Stream => {
                        let conn = &mut conns[key];
                        let _ = conn.socket.write(HEAD);
                        conn.streaming = true;
                        conn.buf = Vec::new();
                        break;
                    }
                    Request::Publish(body) => {
                        next_id += 1;
                        let mut frame = format!("id: {next_id}\ndata: ").into_bytes();
                        frame.extend_from_slice(&body);
                        frame.extend_from_slice(b"\n\n");
                        let mut clients = 0;
                        for (_, c) in conns.iter_mut().filter(|(_, c)| c.streaming) {
                            let _ = c.socket.write(&frame); // one write, whatever happens
                            clients += 1;
                        }
                        let json = format!(
                            "{{\"id\":\"{next_id}\",\"topic\":\"default\",\"clients\":{clients}}}"
                        );
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                            json.len()
                        );
                        let _ = conns[key].socket.write(response.as_bytes());
                    }
                    Request::Other => {
                        let _ = conns[key]
                            .socket
                            .write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    }
                }
            }
        }
    }
}

enum Request {
    Stream,
    Publish(Vec<u8>),
    Other,
}

/// Takes one complete request off the front of `buf`, if there is one.
fn take_request(buf: &mut Vec<u8>) -> Option<Request> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if buf.len() < end + length {
        return None;
    }
    let body = buf[end..end + length].to_vec();
    buf.drain(..end + length);
    Some(if head.starts_with("get /stream") {
        Request::Stream
    } else if head.starts_with("post /broadcast") {
        Request::Publish(body)
    } else {
        Request::Other
    })
}
