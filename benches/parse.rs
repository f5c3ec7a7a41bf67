//! Request parsing: a typical browser `GET /stream` head and a publish `POST`.
//!
//! Runs once per connection or per publish. Throughput is request bytes, so the figures read
//! as parse speed; the head is what Chromium sends for an `EventSource`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sse_edge::wire::http::parse_request;

const BROWSER_GET: &[u8] = b"GET /stream?topic=news&topic=sport HTTP/1.1\r\n\
Host: localhost:8080\r\n\
Connection: keep-alive\r\n\
Accept: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
Last-Event-ID: 1234567\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36\r\n\
Origin: http://localhost:8080\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-Mode: cors\r\n\
Sec-Fetch-Dest: empty\r\n\
Referer: http://localhost:8080/\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\r\n";

fn publish_post() -> Vec<u8> {
    let body = br#"{"seq":1234,"sent_us":1795569859000000,"price":101.25}"#;
    let mut req = format!(
        "POST /broadcast?topic=prices&event=tick HTTP/1.1\r\nHost: edge:8080\r\nUser-Agent: app/1.0\r\n\
         Authorization: Bearer 0123456789abcdef\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_request");
    group.throughput(Throughput::Bytes(BROWSER_GET.len() as u64));
    group.bench_function("browser_get_stream", |b| {
        b.iter(|| parse_request(std::hint::black_box(BROWSER_GET), 65536).unwrap())
    });
    let post = publish_post();
    group.throughput(Throughput::Bytes(post.len() as u64));
    group.bench_function("publish_post", |b| {
        b.iter(|| parse_request(std::hint::black_box(&post), 65536).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
