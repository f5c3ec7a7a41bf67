// End-to-end test of index.html in a real headless Chromium against the real sse-edge binary.
//
//   node tests/browser/page.test.js      (after `cargo build --workspace --bins`)
//
// Starts target/debug/sse-edge on a random loopback port, drives the page with playwright-core
// and Debian's /usr/bin/chromium, saves screenshots into tests/browser/out/, and ends with the
// line "N passed, M failed". Exits non-zero on any failure. Every wait has a deadline.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");
const { PAGE, cspHashes } = require("./csp");
const {
  OUT, CHROMIUM, CHROMIUM_ARGS, WAIT, assert, check, requireTools, startServer: start, stopServer, until, withDeadline, finish,
} = require("./harness");

const WATCHDOG = 100_000; // the whole run, ms
const XSS = "<img src=x onerror=alert(1)>";

let server = null; // { child, port, log }
let context = null;
let profile = null;

// ---- helpers -------------------------------------------------------------------------------------

/** Starts the server on `listen` with a fast ticker and retry, and a small body limit. */
const startServer = (listen) => start(["--listen", listen, "--tick", "1", "--retry-ms", "300", "--max-body", "4096"]);

const base = () => `http://127.0.0.1:${server.port}`;

async function publish(body, { topic, event } = {}) {
  const q = new URLSearchParams();
  if (topic) q.set("topic", topic);
  if (event) q.set("event", event);
  const r = await fetch(`${base()}/broadcast?${q}`, { method: "POST", body, signal: AbortSignal.timeout(WAIT) });
  const text = await r.text();
  assert(r.ok, `POST /broadcast answered ${r.status}: ${text}`);
  return JSON.parse(text);
}

async function metric(name) {
  const r = await fetch(`${base()}/metrics`, { signal: AbortSignal.timeout(WAIT) });
  let sum = 0;
  for (const line of (await r.text()).split("\n")) {
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) sum += Number(m[2]);
  }
  return sum;
}

const row = (page, id) => page.locator(`#log li.event[data-id="${id}"]`);

// ---- the run -------------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  requireTools();

  server = await startServer("127.0.0.1:0");
  const origin = base();
  console.log(`server on ${origin}`);

  profile = fs.mkdtempSync(path.join(os.tmpdir(), "sse-edge-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1440, height: 900 },
    timeout: 20_000,
  });
  context.setDefaultTimeout(WAIT);

  const requests = [];
  const foreign = [];
  const dialogs = [];
  const pageErrors = [];
  const cspViolations = [];
  context.on("request", (req) => {
    const url = req.url();
    requests.push(url);
    // data: URLs (the inline favicon) are not network requests.
    if (!url.startsWith(origin + "/") && !url.startsWith("data:")) foreign.push(url);
  });

  const page = context.pages()[0] || (await context.newPage());
  page.on("dialog", (d) => { dialogs.push(`${d.type()}: ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on("pageerror", (err) => pageErrors.push(err.message));
  page.on("console", (msg) => { if (/Content Security Policy/i.test(msg.text())) cspViolations.push(msg.text()); });

  await check("the page loads from the binary, with a current CSP hash and live node figures", async () => {
    const { want, have } = cspHashes(fs.readFileSync(PAGE, "utf8"));
    assert(want === have, `index.html's CSP names sha256-${have}, its script hashes to sha256-${want}: run node tests/browser/csp.js --fix and rebuild`);
    const served = await (await fetch(origin + "/", { signal: AbortSignal.timeout(WAIT) })).text();
    assert(served === fs.readFileSync(PAGE, "utf8"), "the binary serves a different index.html: rebuild with cargo build");
    await page.goto(origin + "/", { timeout: WAIT });
    await page.locator('#status[data-state="closed"]').waitFor();
    assert((await page.locator("#status-text").textContent()) === "closed", "badge does not say closed");
    // /metrics is polled every second; no stream is open yet.
    await page.waitForFunction(() => /^\d/.test(document.getElementById("m-clients").textContent));
    assert((await page.locator("#m-clients").textContent()) === "0", "clients should be 0 before connecting");
  });

  await check("Connect turns the badge connected", async () => {
    await page.click("#connect");
    await page.locator('#status[data-state="connected"]').waitFor();
    assert((await page.locator("#status-text").textContent()) === "connected", "badge text is not connected");
    assert(await page.locator("#disconnect").isEnabled(), "Disconnect should be enabled");
    await page.waitForFunction(() => document.getElementById("m-clients").textContent === "1");
  });

  await check("a heartbeat arrives with its id, type and topic", async () => {
    const hb = page.locator("#log li.event", { hasText: /Auto heartbeat #\d+/ }).first();
    await hb.waitFor();
    const id = await hb.getAttribute("data-id");
    assert(/^\d+$/.test(id), `heartbeat id is ${id}`);
    assert((await hb.locator(".id").textContent()) === "#" + id, "the row does not show its id");
    assert((await hb.locator(".type").textContent()) === "message", "heartbeat type is not message");
    assert((await hb.locator(".topic").textContent()) === "default", "heartbeat topic chip is not default");
  });

  await check("Broadcast from the page: the message comes back with its id and event type", async () => {
    await page.fill("#message", "Hello from the browser test");
    await page.fill("#pub-event", "chat");
    await page.fill("#pub-topic", "default");
    const answer = page.waitForResponse((r) => r.url().startsWith(origin + "/broadcast"));
    await page.click("#broadcast");
    const r = await answer;
    assert(r.status() === 200, `publish answered ${r.status()}`);
    const sent = await r.request().allHeaders();
    assert(!("authorization" in sent), "an Authorization header was sent with the token field empty");
    assert(new URL(r.url()).searchParams.get("event") === "chat", `publish URL ${r.url()}`);
    const j = await r.json();
    const pageId = j.id;
    assert(j.topic === "default" && j.clients === 1, `unexpected answer ${JSON.stringify(j)}`);
    const li = row(page, pageId);
    await li.waitFor();
    assert((await li.locator(".data").textContent()) === "Hello from the browser test", "wrong text");
    assert((await li.locator(".id").textContent()) === "#" + pageId, "the row does not show its id");
    assert((await li.locator(".type").textContent()) === "chat", "the row does not show type chat");
    await page.locator(`#log li.system`, { hasText: `Published #${pageId} to default as chat` }).waitFor();
    assert((await page.inputValue("#types")).split(/[\s,]+/).includes("chat"), "chat was not added to the listened types");
    await page.waitForFunction((id) => Number(document.getElementById("last-id").textContent.slice(1)) >= Number(id), pageId);
  });

  await check("the XSS string published by POST shows as literal text: no element, no dialog", async () => {
    const j = await publish(XSS);
    const li = row(page, j.id);
    await li.waitFor();
    assert((await li.locator(".data").textContent()) === XSS, "the text differs from what was published");
    assert((await page.locator("#log img").count()) === 0, "an <img> element was created in the list");
    assert((await page.locator("img").count()) === 0, "an <img> element exists in the page");
    assert(dialogs.length === 0, `dialog opened: ${dialogs.join("; ")}`);
  });

  await check("events/s follows /metrics (a burst to another topic shows in the figures, not the list)", async () => {
    await page.fill("#types", "chat, deploy");
    await publish("Deploy 1432 finished in 41 s\nall 12 nodes healthy", { event: "deploy" });
    // Three bursts, each waited into its own scrape (the page samples /metrics once a second).
    const samples = () => page.evaluate(() => Number(document.getElementById("chart").dataset.samples || 0));
    for (const n of [60, 150, 90]) {
      const before = await samples();
      for (let i = 0; i < n; i++) await publish(`bulk ${i}`, { topic: "bulk" });
      await page.waitForFunction(
        (b) => Number(document.getElementById("chart").dataset.samples) > b && parseFloat(document.getElementById("m-rate").textContent) >= 20,
        before,
        { timeout: 3000 },
      );
    }
    assert((await page.locator("#log li.event", { hasText: "bulk " }).count()) === 0, "a bulk-topic event reached the list");
    await page.fill("#message", "The fan-out edge is live ✓");
    await page.fill("#pub-event", "");
    const answer = page.waitForResponse((r) => r.url().startsWith(origin + "/broadcast"));
    await page.click("#broadcast");
    await row(page, (await (await answer).json()).id).waitFor();
    const last = page.locator("#log li.event", { hasText: /Auto heartbeat/ }).last();
    await last.waitFor();
  });

  await check("screenshots at 1440 px and 375 px, no horizontal overflow", async () => {
    await page.mouse.move(0, 0);
    await page.evaluate(() => { document.activeElement.blur(); window.scrollTo(0, 0); });
    await page.screenshot({ path: path.join(OUT, "page-1440.png"), fullPage: true, animations: "disabled" });
    await page.emulateMedia({ colorScheme: "dark" });
    await page.screenshot({ path: path.join(OUT, "page-1440-dark.png"), fullPage: true, animations: "disabled" });
    await page.emulateMedia({ colorScheme: "light" });
    await page.setViewportSize({ width: 375, height: 812 });
    await page.waitForFunction(() => document.documentElement.clientWidth === 375);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert(overflow <= 0, `the page is ${overflow} px wider than a 375 px screen`);
    await page.screenshot({ path: path.join(OUT, "page-375.png"), fullPage: true, animations: "disabled" });
    await page.setViewportSize({ width: 1440, height: 900 });
    for (const f of ["page-1440.png", "page-1440-dark.png", "page-375.png"]) assert(fs.statSync(path.join(OUT, f)).size > 10_000, `${f} is suspiciously small`);
  });

  await check("a bad topic name shows an error line and publishes nothing", async () => {
    await page.fill("#pub-topic", "bad topic!");
    const before = requests.filter((u) => u.includes("/broadcast")).length;
    await page.click("#broadcast");
    await page.locator("#log li.error", { hasText: "is not a topic name" }).waitFor();
    assert(requests.filter((u) => u.includes("/broadcast")).length === before, "a request was sent anyway");
    await page.fill("#pub-topic", "default");
  });

  await check("a refused publish shows the server's one-line reason; the token goes out as a Bearer header", async () => {
    await page.fill("#token", "s3cret");
    await page.fill("#message", "x".repeat(5000)); // over --max-body 4096
    const answer = page.waitForResponse((r) => r.url().startsWith(origin + "/broadcast"));
    await page.click("#broadcast");
    const r = await answer;
    assert(r.status() === 413, `publish answered ${r.status()}`);
    const sent = await r.request().allHeaders();
    assert(sent.authorization === "Bearer s3cret", `Authorization header: ${sent.authorization}`);
    await page.locator("#log li.error", { hasText: "Publish refused (413)" }).waitFor();
    await page.fill("#token", "");
    await page.fill("#message", "");
  });

  await check("Disconnect turns the badge closed", async () => {
    await page.click("#disconnect");
    await page.locator('#status[data-state="closed"]').waitFor();
    assert((await page.locator("#status-text").textContent()) === "closed", "badge text is not closed");
    assert(await page.locator("#disconnect").isDisabled(), "Disconnect should be disabled");
    await page.waitForFunction(() => document.getElementById("m-clients").textContent === "0");
  });

  await check("subscribed to news only: news arrives, sport and the heartbeat do not; the last id is sent", async () => {
    await page.click("#clear");
    assert((await page.locator("#log li").count()) === 0, "Clear left rows in the list");
    const lastShown = (await page.locator("#last-id").textContent()).slice(1);
    await page.fill("#topics", "news");
    const streamReq = page.waitForRequest((r) => r.url().startsWith(origin + "/stream"));
    await page.click("#connect");
    const url = new URL((await streamReq).url());
    assert(url.searchParams.getAll("topic").join() === "news", `stream URL ${url}`);
    assert(url.searchParams.get("lastEventId") === lastShown, `stream URL ${url} does not resume after #${lastShown}`);
    await page.locator('#status[data-state="connected"]').waitFor();
    const sport = await publish("sport-1", { topic: "sport" });
    // Wait (with a deadline) until the ticker has published at least one heartbeat after sport-1.
    const count = await metric("sse_edge_events_published_total");
    await until("a heartbeat after sport-1", async () => (await metric("sse_edge_events_published_total")) > count, 3000);
    const news = await publish("news-1", { topic: "news" });
    assert(Number(news.id) > Number(sport.id) + 1, "no event between sport-1 and news-1");
    await row(page, news.id).waitFor();
    const events = await page.locator("#log li.event").evaluateAll((els) => els.map((e) => e.querySelector(".data").textContent));
    assert(events.length === 1 && events[0] === "news-1", `the list holds ${JSON.stringify(events)}`);
    assert((await row(page, news.id).locator(".topic").textContent()) === "news", "topic chip is not news");
  });

  await check("the list keeps at most the last 500 messages", async () => {
    let last = null;
    for (let i = 1; i <= 520; i++) last = await publish(`news-burst ${i}`, { topic: "news" });
    await row(page, last.id).waitFor();
    const n = await page.locator("#log li").count();
    assert(n === 500, `the list holds ${n} rows`);
    assert((await page.locator("#count").textContent()) === "500 messages", "the counter does not say 500 messages");
  });

  await check("a server restart shows the browser's own reconnect as such", async () => {
    const port = server.port;
    await stopServer(server);
    await page.locator('#status[data-state="reconnecting"]').waitFor();
    await page.locator("#log li.error", { hasText: "reconnecting by itself" }).waitFor();
    server = await startServer(`127.0.0.1:${port}`);
    await page.locator('#status[data-state="connected"]').waitFor();
    await page.locator("#log li.system", { hasText: "the browser did this by itself" }).waitFor();
    const j = await publish("after restart", { topic: "news" });
    await row(page, j.id).waitFor();
  });

  await check("two topics on one stream: a topic is shown only where the page knows it", async () => {
    await page.click("#disconnect");
    await page.locator('#status[data-state="closed"]').waitFor();
    await page.fill("#topics", "news, sport");
    await page.click("#connect");
    await page.locator('#status[data-state="connected"]').waitFor();
    assert(/do not say which/.test(await page.locator("#sub-line").textContent()), "the stream card does not explain the missing topic");
    const other = await publish("from elsewhere", { topic: "news" });
    await page.fill("#message", "from this page");
    await page.fill("#pub-topic", "sport");
    const answer = page.waitForResponse((r) => r.url().startsWith(origin + "/broadcast"));
    await page.click("#broadcast");
    const mine = await (await answer).json();
    await row(page, other.id).waitFor();
    await row(page, mine.id).waitFor();
    assert(await row(page, other.id).locator(".topic").isHidden(), "a topic is shown for an event the page cannot place");
    await page.waitForFunction((id) => document.querySelector(`#log li[data-id="${id}"] .topic`).textContent === "sport", mine.id);
    assert(await row(page, mine.id).locator(".topic").isVisible(), "the page's own event does not show its topic");
  });

  await check("nothing but the server was asked for anything; no dialog, script error or CSP violation", async () => {
    assert(requests.length > 0, "no request was seen at all");
    assert(foreign.length === 0, `requests outside ${origin}: ${foreign.join(", ")}`);
    assert(dialogs.length === 0, `dialogs: ${dialogs.join("; ")}`);
    assert(pageErrors.length === 0, `script errors: ${pageErrors.join("; ")}`);
    assert(cspViolations.length === 0, `CSP: ${cspViolations.join("; ")}`);
  });

  console.log(`browser test took ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function cleanup() {
  if (context) await withDeadline(context.close());
  await stopServer(server);
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
}

finish(main, { watchdog: WATCHDOG, cleanup });
