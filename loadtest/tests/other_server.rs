//! The `loadtest` binary against a server that is not sse-edge: a tiny SSE server that
//! chunks its responses, ends lines with `\r\n`, and splits each event over two chunks.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Writes `data` as one HTTP chunk.
fn chunk(out: &mut TcpStream, data: &str) -> std::io::Result<()> {
    write!(out, "{:x}\r\n{data}\r\n", data.len())
}

/// Serves `GET` as a chunked event stream and `POST` as a broadcast to every stream.
fn serve(listener: TcpListener) {
    let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let streams = streams.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut out = conn;
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    return;
                }
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("header");
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().expect("length");
                    }
                }
                if request_line.starts_with("GET") {
                    // Hold the list while answering: a POST can only follow a head this
                    // stream received, so it finds the stream already listed.
                    let mut all = streams.lock().unwrap();
                    out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .expect("head");
                    chunk(&mut out, ": hello\r\n\r\n").expect("comment");
                    all.push(out);
                    return;
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("body");
                let body = String::from_utf8(body).expect("utf-8");
                let (first, second) = body.split_at(body.len() / 2);
                for s in streams.lock().unwrap().iter_mut() {
                    let _ = chunk(s, &format!("event: load\r\ndata: {first}"));
                    let _ = chunk(s, &format!("{second}\r\n\r\n"));
                }
                out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    .expect("answer");
            }
        });
    }
}

#[test]
fn a_chunking_crlf_server_loses_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || serve(listener));
    let json = std::env::temp_dir().join(format!("loadtest-{}-other.json", std::process::id()));
    let out = common::run_loadtest(&[
        "--connections".into(),
        "100".into(),
        "--messages".into(),
        "20".into(),
        "--url".into(),
        format!("http://127.0.0.1:{port}/events"),
        "--publish-url".into(),
        format!("http://127.0.0.1:{port}/publish"),
        "--json".into(),
        json.display().to_string(),
    ]);
    let status = out.status;
    let text = std::fs::read_to_string(&json).expect("--json written");
    let _ = std::fs::remove_file(&json);
    let j: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert!(status.success(), "{j:#}");
    assert_eq!(j["connections_established"], 100, "{j:#}");
    assert_eq!(j["deliveries_received"], 2000, "{j:#}");
    assert_eq!(j["deliveries_lost"], 0, "{j:#}");
    assert_eq!(j["other_events"], 0, "{j:#}");
}
