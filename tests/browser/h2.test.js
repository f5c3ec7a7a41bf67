// Ten EventSources from one page over https:// in a real headless Chromium (issue 28): with HTTP/2
// (negotiated by ALPN, `--http2 on`, the default) all ten open on one connection and all ten get
// a broadcast; the same page against `--http2 off` is held to HTTP/1.1's six connections per
// origin, so only six open and six receive it (the check that this test can fail).
//
//   node tests/browser/h2.test.js      (after `cargo build --workspace --bins`)
//
// The certificate is made in the test (as in tls.test.js); Chromium is launched with
// `--ignore-certificate-errors` and node trusts exactly that certificate. That the page really
// spoke h2 is read from the browser itself: the navigation's and a fetch's `nextHopProtocol`.
// Ends with "N passed, M failed"; every wait has a deadline, nothing asserts on durations.
"use strict";

const fs = require("fs");
const https = require("https");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");
const selfsigned = require("selfsigned");
const {
  CHROMIUM, CHROMIUM_ARGS, WAIT, assert, check, requireTools, startServer, stopServer, until, withDeadline, finish,
} = require("./harness");

const WATCHDOG = 90_000; // the whole run, ms
const STREAMS = 10;

let browser = null;
const running = []; // servers
let dir = null;
let ca = null;

async function makeCertificate() {
  const notBefore = new Date(Date.now() - 60_000);
  return selfsigned.generate([{ name: "commonName", value: "localhost" }], {
    keyType: "ec",
    curve: "P-256",
    algorithm: "sha256",
    notBeforeDate: notBefore,
    notAfterDate: new Date(notBefore.getTime() + 24 * 3600 * 1000),
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "keyUsage", digitalSignature: true, critical: true },
      { name: "extKeyUsage", serverAuth: true },
      { name: "subjectAltName", altNames: [{ type: 2, value: "localhost" }, { type: 7, ip: "127.0.0.1" }] },
    ],
  });
}

/** A request from node over TLS trusting only the test's certificate: { status, body }. */
function request(method, url, body) {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method, ca, agent: false, timeout: WAIT }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c) => { text += c; });
      res.on("end", () => resolve({ status: res.statusCode, body: text }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer to ${url} within ${WAIT} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}

function metricSum(text, name) {
  let sum = 0;
  let found = false;
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) { sum += Number(m[2]); found = true; }
  }
  assert(found, `/metrics has no ${name}`);
  return sum;
}

/**
 * Opens a fresh page on `origin`, starts STREAMS EventSources on one topic from it, waits until
 * `expectOpen` are open, publishes once, and waits until `expectOpen` have it. Returns what the
 * page saw: the protocols, and per stream whether it opened and what it received.
 */
async function tenStreams(origin, topic, expectOpen) {
  const context = await browser.newContext();
  context.setDefaultTimeout(WAIT);
  try {
    const page = await context.newPage();
    // /healthz: a same-origin page with no CSP of its own, so the script below may run there.
    const nav = await page.goto(`${origin}/healthz`);
    assert(nav && nav.status() === 200, `GET /healthz in the browser: ${nav && nav.status()}`);
    await page.evaluate(({ n, topic }) => {
      window.streams = [];
      for (let i = 0; i < n; i++) {
        const s = { open: false, data: [] };
        const es = new EventSource(`/stream?topic=${topic}&n=${i}`);
        es.onopen = () => { s.open = true; };
        es.onmessage = (e) => { s.data.push(e.data); };
        window.streams.push(s);
      }
    }, { n: STREAMS, topic });
    await until(`${expectOpen} EventSources open`, () =>
      page.evaluate(() => window.streams.filter((s) => s.open).length).then((k) => k >= expectOpen), 3 * WAIT);
    // The node agrees on what is open before the publish (its count, not the page's, decides
    // who gets the broadcast).
    await until(`the node counts ${expectOpen} streams`, async () =>
      metricSum((await request("GET", `${origin}/metrics`)).body, "sse_edge_clients") >= expectOpen, 3 * WAIT);
    const published = await request("POST", `${origin}/broadcast?topic=${topic}`, "to every tab");
    assert(published.status === 200, `publish: ${published.status} ${published.body}`);
    await until(`${expectOpen} streams with the broadcast`, () =>
      page.evaluate(() => window.streams.filter((s) => s.data.includes("to every tab")).length)
        .then((k) => k >= expectOpen), 3 * WAIT);
    // Over HTTP/1.1 a fetch would wait behind the six held connections: only over h2.
    const protocols = await page.evaluate(async (withFetch) => {
      if (!withFetch) return { navigation: performance.getEntriesByType("navigation")[0].nextHopProtocol };
      await (await fetch("/healthz?probe")).text();
      const nav = performance.getEntriesByType("navigation")[0];
      // The resource entry lands once the body is read, which may be a task after the text.
      let fetched;
      for (let i = 0; i < 100 && !fetched; i++) {
        fetched = performance.getEntriesByType("resource").find((e) => e.name.endsWith("/healthz?probe"));
        if (!fetched) await new Promise((r) => setTimeout(r, 20));
      }
      return { navigation: nav && nav.nextHopProtocol, fetch: fetched && fetched.nextHopProtocol };
    }, expectOpen === STREAMS);
    const streams = await page.evaluate(() => window.streams.map((s) => ({ open: s.open, got: s.data.length })));
    const clients = JSON.parse(published.body).clients;
    return { protocols, streams, clients };
  } finally {
    await withDeadline(context.close());
  }
}

async function main() {
  const started = Date.now();
  requireTools();
  const pems = await makeCertificate();
  ca = pems.cert;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "sse-edge-h2-"));
  const certFile = path.join(dir, "cert.pem");
  const keyFile = path.join(dir, "key.pem");
  fs.writeFileSync(certFile, pems.cert);
  fs.writeFileSync(keyFile, pems.private, { mode: 0o600 });
  const tls = ["--listen", "127.0.0.1:0", "--tick", "0", "--tls-cert", certFile, "--tls-key", keyFile];

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, "--ignore-certificate-errors"],
    timeout: 20_000,
  });

  await check(`HTTP/2 by ALPN: ${STREAMS} EventSources on one page all open and all get a broadcast`, async () => {
    const server = await startServer(tls);
    running.push(server);
    const seen = await tenStreams(`https://127.0.0.1:${server.port}`, "h2tabs", STREAMS);
    assert(seen.protocols.navigation === "h2" && seen.protocols.fetch === "h2",
      `the page did not speak h2: ${JSON.stringify(seen.protocols)}`);
    assert(seen.streams.every((s) => s.open && s.got === 1), `streams: ${JSON.stringify(seen.streams)}`);
    assert(seen.clients === STREAMS, `the publish reached ${seen.clients} streams`);
    await stopServer(server);
  });

  await check(`--http2 off: the same page is held to HTTP/1.1's six connections (${STREAMS - 6} wait)`, async () => {
    const server = await startServer([...tls, "--http2", "off"]);
    running.push(server);
    const seen = await tenStreams(`https://127.0.0.1:${server.port}`, "h1tabs", 6);
    assert(seen.protocols.navigation === "http/1.1", `protocols: ${JSON.stringify(seen.protocols)}`);
    const open = seen.streams.filter((s) => s.open).length;
    const got = seen.streams.filter((s) => s.got === 1).length;
    assert(open === 6 && got === 6 && seen.clients === 6,
      `open ${open}, received ${got}, publish reached ${seen.clients}: ${JSON.stringify(seen.streams)}`);
    await stopServer(server);
  });

  console.log(`HTTP/2 browser test took ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function cleanup() {
  if (browser) await withDeadline(browser.close());
  for (const s of running) await stopServer(s);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
}

finish(main, { watchdog: WATCHDOG, cleanup });
