// The edge's own page over https:// (issue 14) in a real headless Chromium against the real
// sse-edge binary.
//
//   node tests/browser/tls.test.js      (after `cargo build --workspace --bins`)
//
// Makes a self-signed certificate for localhost and 127.0.0.1 in the test (the `selfsigned`
// package: no openssl command needed), starts the edge with `--tls-cert`/`--tls-key` on a random
// loopback port, and opens https://127.0.0.1:PORT/ in Chromium launched with
// `--ignore-certificate-errors` (the certificate is not in the browser's store). Node, which
// reads /metrics too, trusts exactly that certificate instead of turning verification off, so
// its requests also prove the name 127.0.0.1 is in the certificate.
//
// Ends with "N passed, M failed"; every wait has a deadline.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const https = require("https");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");
const selfsigned = require("selfsigned");
const { PAGE } = require("./csp");
const {
  OUT, CHROMIUM, CHROMIUM_ARGS, WAIT, assert, check, requireTools, startServer, stopServer, withDeadline, finish,
} = require("./harness");

const WATCHDOG = 60_000; // the whole run, ms

let browser = null;
let server = null; // { child, port, log }
let dir = null; // the certificate and key, in a temp dir of their own
let ca = null; // the certificate's PEM, the only one node trusts here

// ---- helpers -------------------------------------------------------------------------------------

/**
 * A self-signed EC P-256 certificate for `localhost` and `127.0.0.1` (both in subjectAltName: a
 * browser or node checks the IP address against it, never the common name), valid for a day.
 */
async function makeCertificate() {
  const notBefore = new Date(Date.now() - 60_000); // a clock a little behind still accepts it
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

const base = () => `https://127.0.0.1:${server.port}`;

/**
 * GETs `url` from node over a new TLS connection (no keep-alive, so each call is one handshake),
 * verifying the edge's certificate against `ca`. Resolves with { status, body, protocol }.
 */
function getOverTls(url) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, agent: false, timeout: WAIT }, (res) => {
      const protocol = res.socket.getProtocol();
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => { body += chunk; });
      res.on("end", () => resolve({ status: res.statusCode, body, protocol }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer to ${url} within ${WAIT} ms`)));
    req.on("error", reject);
  });
}

/** The sum over shards of the metric `name` in a /metrics text; fails when it is absent. */
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

/** What Chromium says about the TLS connection a response came over, or fails if it was none. */
async function tlsOf(response) {
  const sec = await response.securityDetails();
  assert(sec, `${response.url()} came without TLS details: it was not served over TLS`);
  return sec;
}

const row = (page, id) => page.locator(`#log li.event[data-id="${id}"]`);

// ---- the run -------------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  requireTools();

  const pems = await makeCertificate();
  ca = pems.cert;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "sse-edge-tls-"));
  const certFile = path.join(dir, "cert.pem");
  const keyFile = path.join(dir, "key.pem");
  fs.writeFileSync(certFile, pems.cert);
  fs.writeFileSync(keyFile, pems.private, { mode: 0o600 });

  server = await startServer(["--listen", "127.0.0.1:0", "--tick", "1", "--tls-cert", certFile, "--tls-key", keyFile]);
  const origin = base();
  console.log(`server on ${origin}`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, "--ignore-certificate-errors"],
    timeout: 20_000,
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  const foreign = [];
  const problems = []; // script errors, dialogs and CSP violations
  context.on("request", (req) => {
    const url = req.url();
    if (!url.startsWith(origin + "/") && !url.startsWith("data:")) foreign.push(url);
  });
  page.on("pageerror", (err) => problems.push(err.message));
  page.on("dialog", (d) => { problems.push(`dialog: ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on("console", (msg) => { if (/Content Security Policy/i.test(msg.text())) problems.push(msg.text()); });

  await check("the page loads over https (TLS 1.2+, the test's certificate), its CSP lets its script run: live node figures", async () => {
    const r = await page.goto(origin + "/", { timeout: WAIT });
    assert(r, "no response for the page");
    assert(r.url() === origin + "/", `the page came from ${r.url()}, not ${origin}/`);
    assert(r.status() === 200, `the page answered ${r.status()}`);
    const sec = await tlsOf(r);
    assert(/^TLS 1\.[23]$/.test(sec.protocol || ""), `the page came over ${sec.protocol}`);
    assert(sec.subjectName === "localhost", `the page came with a certificate for ${sec.subjectName}, not the test's`);
    assert((await r.text()) === fs.readFileSync(PAGE, "utf8"), "the binary serves a different index.html: rebuild with cargo build");
    assert(await page.evaluate(() => window.isSecureContext && location.protocol === "https:"), "the page is not a secure https: context");
    await page.locator('#status[data-state="closed"]').waitFor();
    // The script polls /metrics every second: a figure there means the script ran (its CSP hash
    // matched) and its fetch to 'self' worked over TLS.
    await page.waitForFunction(() => /^\d/.test(document.getElementById("m-clients").textContent));
    assert((await page.locator("#m-clients").textContent()) === "0", "clients should be 0 before connecting");
    assert(problems.length === 0, `script errors, dialogs or CSP violations: ${problems.join("; ")}`);
  });

  await check("Connect over TLS turns the badge connected and an Auto heartbeat arrives with its id", async () => {
    // Together, so a failed click does not leave the wait to reject unhandled later.
    const [r] = await Promise.all([
      page.waitForResponse((res) => res.url().startsWith(origin + "/stream")),
      page.click("#connect"),
    ]);
    assert(r.status() === 200, `the stream answered ${r.status()}`);
    await tlsOf(r);
    await page.locator('#status[data-state="connected"]').waitFor();
    assert((await page.locator("#status-text").textContent()) === "connected", "badge text is not connected");
    const hb = page.locator("#log li.event", { hasText: /Auto heartbeat #\d+/ }).first();
    await hb.waitFor();
    const id = await hb.getAttribute("data-id");
    assert(/^\d+$/.test(id), `heartbeat id is ${id}`);
    assert((await hb.locator(".id").textContent()) === "#" + id, "the row does not show its id");
    await page.waitForFunction(() => document.getElementById("m-clients").textContent === "1");
  });

  await check("Broadcast from the page over TLS comes back on the page's stream with its id", async () => {
    await page.fill("#message", "Hello over TLS");
    await page.fill("#pub-event", "");
    await page.fill("#pub-topic", "default");
    const [r] = await Promise.all([
      page.waitForResponse((res) => res.url().startsWith(origin + "/broadcast")),
      page.click("#broadcast"),
    ]);
    const sent = await r.request().allHeaders();
    const text = await r.text();
    assert(r.status() === 200, `publish answered ${r.status()}: ${text.trim()} (the page sent Origin: ${sent.origin}, Sec-Fetch-Site: ${sent["sec-fetch-site"]})`);
    await tlsOf(r);
    const j = JSON.parse(text);
    assert(j.topic === "default" && j.clients === 1, `unexpected answer ${text}`);
    const li = row(page, j.id);
    await li.waitFor();
    assert((await li.locator(".data").textContent()) === "Hello over TLS", "wrong text");
    assert((await li.locator(".id").textContent()) === "#" + j.id, "the row does not show its id");
  });

  await check("/metrics over https counts the TLS handshakes, from the page and from node (verifying the certificate)", async () => {
    const fromPage = await page.evaluate(async () => {
      const r = await fetch("/metrics", { cache: "no-store" });
      return { status: r.status, text: await r.text() };
    });
    assert(fromPage.status === 200, `/metrics answered ${fromPage.status} to the page`);
    const seenByPage = metricSum(fromPage.text, "sse_edge_tls_handshakes_total");
    assert(seenByPage > 0, `the page's /metrics shows ${seenByPage} TLS handshakes`);
    // Each node request is a new connection, so its own handshake counts before it is answered.
    const first = await getOverTls(`${origin}/metrics`);
    assert(first.status === 200, `/metrics answered ${first.status} to node`);
    assert(/^TLSv1\.[23]$/.test(first.protocol || ""), `node spoke ${first.protocol}`);
    const n1 = metricSum(first.body, "sse_edge_tls_handshakes_total");
    assert(n1 >= seenByPage + 1, `after the page saw ${seenByPage} handshakes node's own connection saw ${n1}`);
    const n2 = metricSum((await getOverTls(`${origin}/metrics`)).body, "sse_edge_tls_handshakes_total");
    assert(n2 >= n1 + 1, `a new node connection did not count: ${n1} then ${n2} handshakes`);
    const expiry = metricSum(first.body, "sse_edge_tls_certificate_expiry_seconds");
    const notAfter = Date.parse(new crypto.X509Certificate(ca).validTo) / 1000;
    assert(expiry === notAfter, `the certificate expiry gauge says ${expiry}, the test certificate's notAfter is ${notAfter}`);
  });

  await check("nothing but the edge was asked for anything; no script error, dialog or CSP violation", async () => {
    assert(foreign.length === 0, `requests outside ${origin}: ${foreign.join(", ")}`);
    assert(problems.length === 0, `script errors, dialogs or CSP violations: ${problems.join("; ")}`);
    await page.screenshot({ path: path.join(OUT, "page-tls.png"), fullPage: true, animations: "disabled" });
  });

  console.log(`TLS browser test took ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function cleanup() {
  if (browser) await withDeadline(browser.close());
  await stopServer(server);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
}

finish(main, { watchdog: WATCHDOG, cleanup });
