// Subscriber tokens (issue 13) in a real headless Chromium against the real sse-edge binary.
//
//   node tests/browser/auth.test.js      (after `cargo build --workspace --bins`)
//
// 1. An app page on one origin (a tiny Node server) opens a credentialed EventSource to the edge
//    on another origin (`--cors-origins`); the HttpOnly `sse_edge_token` cookie carries the JWT.
//    With the cookie it receives events; without it the stream is refused (401) and gets nothing.
// 2. The edge's own page: with `--token-in-query` the access-token field goes out as
//    `?access_token=` and a token that expires shows the `expired` notice; without the flag the
//    field is disabled with its note, and an expired cookie is refreshed by the browser's own
//    reconnect.
//
// Both origins are 127.0.0.1 on different ports: different origins, the same site, so a
// SameSite=Lax cookie still travels. Ends with "N passed, M failed"; every wait has a deadline.
"use strict";

const crypto = require("crypto");
const http = require("http");
const path = require("path");
const { chromium } = require("playwright-core");
const {
  OUT, CHROMIUM, CHROMIUM_ARGS, WAIT, assert, check, requireTools, startServer, stopServer, until, withDeadline, finish,
} = require("./harness");

const WATCHDOG = 150_000; // the whole run, ms
const SECRET = crypto.randomBytes(32).toString("hex");
/** The node closes a stream 1-5 s before `exp` and then asks for a 5-10 s retry: generous. */
const EXPIRY_WAIT = 15_000;

let browser = null;
let app = null; // the app's own http server (the other origin)
const edges = [];

// ---- helpers -------------------------------------------------------------------------------------

const now = () => Math.floor(Date.now() / 1000);
const b64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** An HS256 JWT over `claims`, signed with `secret` (the server's by default). */
function jwt(claims, secret = SECRET) {
  const signed = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}`;
  return `${signed}.${crypto.createHmac("sha256", secret).update(signed).digest("base64url")}`;
}

/** A subscriber token granting `topics` that expires `seconds` from now. */
const token = (topics, seconds = 600) => jwt({ exp: now() + seconds, sse_edge: { subscribe: topics } });

/** Starts an edge with the subscriber secret and no ticker, plus `extra` flags. */
async function startEdge(extra = []) {
  const s = await startServer(["--listen", "127.0.0.1:0", "--tick", "0", "--subscribe-jwt", SECRET, ...extra]);
  edges.push(s);
  return { server: s, origin: `http://127.0.0.1:${s.port}` };
}

/** Publishes from node (loopback, no Origin header: allowed without a publish token). */
async function publish(origin, topic, body) {
  const r = await fetch(`${origin}/broadcast?topic=${topic}`, { method: "POST", body, signal: AbortSignal.timeout(WAIT) });
  const text = await r.text();
  assert(r.ok, `POST /broadcast answered ${r.status}: ${text}`);
  return JSON.parse(text);
}

/** The cookie the app would set for the edge: HttpOnly, SameSite=Lax. */
const cookieFor = (origin, value) => ({ name: "sse_edge_token", value, url: origin, httpOnly: true, sameSite: "Lax" });

// The app's page: `listen(url, withCredentials)` opens one EventSource and records what it sees.
const APP_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>app</title></head>
<body><p>the app</p>
<script>
  window.seen = { opened: 0, errors: 0, data: [], expired: [], state: -1 };
  window.listen = (url, withCredentials) => {
    const es = new EventSource(url, { withCredentials });
    const note = () => { seen.state = es.readyState; };
    es.onopen = () => { seen.opened++; note(); };
    es.onerror = () => { seen.errors++; note(); };
    es.onmessage = (e) => { seen.data.push(e.data); note(); };
    es.addEventListener("expired", (e) => seen.expired.push(e.data));
    window.es = es;
  };
</script></body></html>`;

function startApp() {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" });
      res.end(APP_PAGE);
    });
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

/**
 * Opens `url` from the app page. Resolves with { response } when the page may read the edge's
 * answer, or { refused } (the browser's error text) when CORS hides it from the page.
 */
async function listenFromApp(page, url, withCredentials) {
  let off = () => {};
  const outcome = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to ${url} within ${WAIT} ms`)), WAIT);
    const onResponse = (r) => { if (r.url() === url) { off(); resolve({ response: r }); } };
    const onFailed = (req) => { if (req.url() === url) { off(); resolve({ refused: req.failure()?.errorText }); } };
    off = () => { clearTimeout(timer); page.off("response", onResponse); page.off("requestfailed", onFailed); };
    page.on("response", onResponse);
    page.on("requestfailed", onFailed);
  });
  await page.evaluate(([u, c]) => window.listen(u, c), [url, withCredentials]);
  return outcome.finally(off);
}

/** What the edge answers from node to a GET of `url` with `headers` (status and headers only). */
async function askEdge(url, headers) {
  const ctl = new AbortController();
  const r = await fetch(url, { headers, signal: ctl.signal });
  ctl.abort();
  return { status: r.status, header: (name) => r.headers.get(name) };
}

/** The edge's count of requests it answered with `status` (sse_edge_rejected_requests_total). */
async function rejected(origin, status) {
  const text = await (await fetch(`${origin}/metrics`, { signal: AbortSignal.timeout(WAIT) })).text();
  const m = new RegExp(`^sse_edge_rejected_requests_total\\{status="${status}"\\} (\\d+)$`, "m").exec(text);
  assert(m, `/metrics has no sse_edge_rejected_requests_total{status="${status}"}`);
  return Number(m[1]);
}

/**
 * Opens `url` from the app page and expects the edge to refuse it with `status`: the edge counts
 * exactly one such answer (whether or not CORS lets the page read it), the EventSource ends
 * CLOSED, and it opened and received nothing. Returns what the network saw.
 */
async function expectRefused(page, edge, url, withCredentials, status) {
  const before = await rejected(edge, status);
  const seenByNet = await listenFromApp(page, url, withCredentials);
  if (seenByNet.response) assert(seenByNet.response.status() === status, `the stream answered ${seenByNet.response.status()}, not ${status}`);
  const s = await closedFor(page, "the EventSource to end CLOSED");
  await until(`the edge to count a ${status} answer`, async () => (await rejected(edge, status)) > before);
  assert((await rejected(edge, status)) === before + 1, `the edge counted ${(await rejected(edge, status)) - before} answers with ${status}, not 1`);
  assert(s.errors >= 1 && s.opened === 0 && s.data.length === 0, `the EventSource opened ${s.opened} times, saw ${s.errors} errors and received ${JSON.stringify(s.data)}`);
  return seenByNet;
}

const seen = (page) => page.evaluate(() => window.seen);

/** Waits until the page's EventSource has given up (CLOSED = 2) and returns what it saw. */
async function closedFor(page, what) {
  return until(what, async () => { const s = await seen(page); return s.state === 2 && s; });
}

/** A fresh browser context (its own cookie jar) with one page that reports script errors. */
async function freshPage(cookies = []) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(WAIT);
  if (cookies.length) await context.addCookies(cookies);
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (err) => page.errors.push(err.message));
  page.on("dialog", (d) => { page.errors.push(`dialog: ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on("console", (msg) => { if (/Content Security Policy/i.test(msg.text())) page.errors.push(msg.text()); });
  return page;
}

/** Presses Disconnect when a stream is open, so a check does not depend on the one before. */
async function disconnect(page) {
  if (await page.locator("#disconnect").isEnabled()) await page.click("#disconnect");
  await page.locator('#status[data-state="closed"]').waitFor();
}

const notices = (page, type) => page.locator(`#log li.notice[data-type="${type}"]`);
const row = (page, id) => page.locator(`#log li.event[data-id="${id}"]`);
const logText = (page) => page.locator("#log").textContent();

/** The browser's local time of `exp` as the page shows it: hh:mm:ss (the token expires today). */
const localTime = (page, exp) => page.evaluate((e) => {
  const d = new Date(e * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}, exp);

/** Reads the exp claim back from a token minted by `token()`. */
const expOf = (t) => JSON.parse(Buffer.from(t.split(".")[1], "base64url").toString()).exp;

// ---- the run -------------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  requireTools();
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 20_000 });

  // ---- 1. a page on another origin, with and without the cookie ----------------------------------
  app = await startApp();
  const appOrigin = `http://127.0.0.1:${app.address().port}`;
  const { origin: edge } = await startEdge(["--cors-origins", appOrigin]);
  console.log(`app on ${appOrigin}, edge on ${edge}`);
  const news = `${edge}/stream?topic=news`;

  const withCookie = await freshPage([cookieFor(edge, token(["news"]))]);
  await withCookie.goto(appOrigin + "/");

  await check("with the cookie, a page on another origin gets a credentialed stream and its events", async () => {
    const { response: r, refused } = await listenFromApp(withCookie, news, true);
    if (refused) {
      const jar = await withCookie.context().cookies(news);
      const a = await askEdge(news, { origin: appOrigin, cookie: jar.map((c) => `${c.name}=${c.value}`).join("; ") });
      throw new Error(`the browser refused the edge's answer (${refused}); asked the same from node, the edge answers ${a.status} with ` +
        `Access-Control-Allow-Origin: ${a.header("access-control-allow-origin")}, Access-Control-Allow-Credentials: ${a.header("access-control-allow-credentials")}`);
    }
    assert(r.status() === 200, `the stream answered ${r.status()}`);
    const sent = await r.request().allHeaders();
    assert(sent.origin === appOrigin, `the stream request's Origin was ${sent.origin}`);
    assert(/(^|;\s*)sse_edge_token=/.test(sent.cookie || ""), "the browser did not send the sse_edge_token cookie");
    const h = r.headers();
    assert(h["access-control-allow-origin"] === appOrigin, `Access-Control-Allow-Origin: ${h["access-control-allow-origin"]}`);
    assert(h["access-control-allow-credentials"] === "true", `Access-Control-Allow-Credentials: ${h["access-control-allow-credentials"]}`);
    assert(/\borigin\b/i.test(h.vary || ""), `Vary: ${h.vary}`);
    await until("the EventSource to open", async () => (await seen(withCookie)).opened >= 1);
    const j = await publish(edge, "news", "news-1");
    assert(j.clients === 1, `the publish reached ${j.clients} streams, not the page's one`);
    await until("news-1 in the app page", async () => (await seen(withCookie)).data.includes("news-1"));
    const s = await seen(withCookie);
    assert(s.state === 1 && s.errors === 0, `the EventSource is in state ${s.state} after ${s.errors} errors`);
    assert(!(await withCookie.evaluate(() => document.cookie)).includes("sse_edge_token"), "the HttpOnly cookie is visible to the page's script");
  });

  await check("the same cookie on a topic its token does not grant: 403, the EventSource gives up", async () => {
    const other = await freshPage([cookieFor(edge, token(["news"]))]);
    try {
      await other.goto(appOrigin + "/");
      await expectRefused(other, edge, `${edge}/stream?topic=sport`, true, 403);
    } finally {
      await withDeadline(other.context().close());
    }
  });

  await check("a fresh context without the cookie: refused (401, WWW-Authenticate: Bearer), CLOSED, nothing received", async () => {
    const bare = await freshPage();
    try {
      await bare.goto(appOrigin + "/");
      assert((await bare.context().cookies(news)).length === 0, "the fresh context has a cookie");
      await expectRefused(bare, edge, news, true, 401);
      const a = await askEdge(news, { origin: appOrigin });
      assert(/^Bearer\b/.test(a.header("www-authenticate") || ""), `WWW-Authenticate: ${a.header("www-authenticate")}`);
      // The cookie page is still subscribed: exactly one stream gets this, and not the bare page.
      const j = await publish(edge, "news", "news-2");
      assert(j.clients === 1, `news-2 reached ${j.clients} streams`);
      await until("news-2 in the page with the cookie", async () => (await seen(withCookie)).data.includes("news-2"));
      const after = await seen(bare);
      assert(after.opened === 0 && after.data.length === 0, `without the cookie the page opened ${after.opened} times and received ${JSON.stringify(after.data)}`);
      assert(bare.errors.length === 0, `script errors: ${bare.errors.join("; ")}`);
    } finally {
      await withDeadline(bare.context().close());
    }
  });

  await check("without withCredentials the cookie stays home, so the stream is refused (401)", async () => {
    const plain = await freshPage([cookieFor(edge, token(["news"]))]);
    try {
      await plain.goto(appOrigin + "/");
      // The same cookie opens the stream with credentials (above): a 401 here means it stayed home.
      await expectRefused(plain, edge, news, false, 401);
    } finally {
      await withDeadline(plain.context().close());
    }
  });

  assert(withCookie.errors.length === 0, `script errors on the app page: ${withCookie.errors.join("; ")}`);
  await withDeadline(withCookie.context().close());

  // ---- 2. the edge's page with --token-in-query --------------------------------------------------
  const { origin: q } = await startEdge(["--token-in-query"]);
  const page = await freshPage();
  const streamUrl = () => page.waitForRequest((r) => r.url().startsWith(q + "/stream"), { timeout: WAIT });

  await check("with --token-in-query the node turns the page's meta on and the token field is enabled", async () => {
    await page.goto(q + "/");
    const meta = await page.locator('meta[name="sse-edge-token-in-query"]').getAttribute("content");
    assert(meta === "on", `the meta says ${meta}`);
    assert(await page.locator("#access-token").isEnabled(), "the token field is disabled");
    assert(await page.locator("#access-token-on").isVisible(), "the note for a typed token is hidden");
    assert(await page.locator("#access-token-off").isHidden(), "the cookie-only note still shows");
    assert((await page.locator("#access-token").getAttribute("aria-describedby")) === "access-token-on", "the field is described by the wrong note");
  });

  await check("a typed token goes out as ?access_token= and opens the stream; the log never shows it", async () => {
    const t = token(["news"]);
    await page.fill("#topics", "news");
    await page.fill("#access-token", t);
    const req = streamUrl();
    await page.click("#connect");
    const url = new URL((await req).url());
    assert(url.searchParams.get("access_token") === t, `stream URL ${url.pathname}${url.search.replace(t, "<token>")} does not carry the token`);
    await page.locator('#status[data-state="connected"]').waitFor();
    const j = await publish(q, "news", "news-q1");
    await row(page, j.id).waitFor();
    await page.locator("#log li.system", { hasText: "with the typed access token" }).first().waitFor();
    assert(!(await logText(page)).includes(t.split(".")[2]), "the token appears in the log");
  });

  await check("a wrongly signed typed token is refused (401): the page says so and stops", async () => {
    const t = jwt({ exp: now() + 600, sse_edge: { subscribe: ["news"] } }, "not the secret");
    await disconnect(page);
    await page.fill("#access-token", t);
    const answer = page.waitForResponse((r) => r.url().startsWith(q + "/stream"), { timeout: WAIT });
    await page.click("#connect");
    assert((await answer).status() === 401, "the stream was not refused with 401");
    await page.locator('#status[data-state="closed"]').waitFor();
    await page.locator("#log li.error", { hasText: "refused the stream" }).waitFor();
    assert(!(await logText(page)).includes(t.split(".")[2]), "the token appears in the log");
  });

  await check("a typed token that expires in 3 s: the expired notice with its local time, and the browser keeps retrying", async () => {
    const t = token(["news"], 3);
    const exp = expOf(t);
    await page.click("#clear");
    await page.fill("#access-token", t);
    await page.click("#connect");
    const first = notices(page, "expired").first();
    await first.waitFor({ timeout: EXPIRY_WAIT });
    const text = await first.locator(".data").textContent();
    const at = await localTime(page, exp);
    assert(/expired at /.test(text) && text.includes(at), `the notice says "${text}", not the expiry time ${at}`);
    assert(/paste a fresh one/.test(text), `the notice does not say what to do with a typed token: "${text}"`);
    // Signed but expired: the node answers 200 with the same notice, so EventSource comes back
    // by itself (a 401 would make it give up for good).
    await until("a second expired notice after the browser's own reconnect", async () => (await notices(page, "expired").count()) >= 2, EXPIRY_WAIT);
    assert((await page.locator("#status").getAttribute("data-state")) !== "closed", "the EventSource gave up");
    assert((await page.locator("#log li.error").count()) === 0, "an error line was shown although the notice explained the close");
    assert(!(await logText(page)).includes(t.split(".")[2]), "the token appears in the log");
    await page.screenshot({ path: path.join(OUT, "page-auth-expired.png"), animations: "disabled" });
    await disconnect(page);
    assert(page.errors.length === 0, `script errors or CSP violations: ${page.errors.join("; ")}`);
  });
  await withDeadline(page.context().close());

  // ---- 3. the edge's page without --token-in-query: the cookie only ------------------------------
  const { origin: c } = await startEdge();
  const short = token(["news"], 3);
  const cookiePage = await freshPage([cookieFor(c, short)]);

  await check("without --token-in-query the token field is disabled, with the note about the cookie", async () => {
    await cookiePage.goto(c + "/");
    const meta = await cookiePage.locator('meta[name="sse-edge-token-in-query"]').getAttribute("content");
    assert(meta === "off", `the meta says ${meta}`);
    assert(await cookiePage.locator("#access-token").isDisabled(), "the token field is enabled");
    const note = cookiePage.locator("#access-token-off");
    assert(await note.isVisible(), "the cookie note is hidden");
    const text = await note.textContent();
    assert(text.includes("sse_edge_token") && text.includes("--token-in-query"), `the note says "${text}"`);
    assert(await cookiePage.locator("#access-token-on").isHidden(), "the typed-token note shows");
  });

  await check("an expired cookie: the notice says so, and the browser's own reconnect uses the refreshed cookie", async () => {
    // Even a value forced into the disabled field must not reach the URL.
    await cookiePage.evaluate(() => { document.getElementById("access-token").value = "forced-value"; });
    await cookiePage.fill("#topics", "news");
    const req = cookiePage.waitForRequest((r) => r.url().startsWith(c + "/stream"), { timeout: WAIT });
    await cookiePage.click("#connect");
    const url = new URL((await req).url());
    assert(!url.searchParams.has("access_token"), `stream URL ${url} carries access_token`);
    const notice = notices(cookiePage, "expired").first();
    await notice.waitFor({ timeout: EXPIRY_WAIT });
    const text = await notice.locator(".data").textContent();
    const at = await localTime(cookiePage, expOf(short));
    assert(/expired at /.test(text) && text.includes(at) && /refreshed cookie/.test(text), `the notice says "${text}"`);
    // What the app would do now: refresh the cookie. The browser reconnects by itself with it.
    const fresh = token(["news"]);
    await cookiePage.context().addCookies([cookieFor(c, fresh)]);
    await cookiePage.locator("#log li.system", { hasText: "the browser did this by itself" }).first().waitFor({ timeout: EXPIRY_WAIT });
    await cookiePage.locator('#status[data-state="connected"]').waitFor();
    const j = await publish(c, "news", "after the refresh");
    assert(j.clients === 1, `the publish reached ${j.clients} streams`);
    await row(cookiePage, j.id).waitFor();
    const log = await logText(cookiePage);
    assert(!log.includes(short.split(".")[2]) && !log.includes(fresh.split(".")[2]), "a token appears in the log");
    assert((await cookiePage.locator("#log li.error").count()) === 0, "an error line was shown");
    assert(cookiePage.errors.length === 0, `script errors or CSP violations: ${cookiePage.errors.join("; ")}`);
  });

  console.log(`auth browser test took ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function cleanup() {
  if (browser) await withDeadline(browser.close());
  if (app) await withDeadline(new Promise((r) => app.close(r)));
  for (const s of edges) await stopServer(s);
}

finish(main, { watchdog: WATCHDOG, cleanup });
