// What the browser tests share: the real sse-edge binary on a loopback port, Debian's headless
// Chromium, checks that count themselves, and waits that always have a deadline.
//
// One test file is one process: `finish(main, ...)` runs its checks under a watchdog, cleans up
// even after a failure, prints "N passed, M failed" and sets the exit code.
"use strict";

const { spawn } = require("child_process");
const fs = require("fs");
const path = require("path");

const ROOT = path.resolve(__dirname, "..", "..");
/** The server under test; SSE_EDGE_BIN picks another build (a release binary, say). */
const BIN = process.env.SSE_EDGE_BIN || path.join(ROOT, "target", "debug", "sse-edge");
const OUT = path.join(__dirname, "out");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
/** Flags for a quiet headless Chromium in a container: no sandbox, GPU or background traffic. */
const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run", "--disable-quic",
];
const WAIT = 5000; // deadline of every single wait, ms

let passed = 0;
let failed = 0;
/** Every server started by this process, so an aborted run can still kill them. */
const servers = new Set();

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

/** Runs one named check; a thrown error fails it (and only it). */
async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    console.log(`ok    ${name} (${Date.now() - t0} ms)`);
  } catch (err) {
    failed++;
    console.log(`FAIL  ${name} (${Date.now() - t0} ms)\n      ${String(err && err.message ? err.message : err).split("\n").join("\n      ")}`);
  }
}

/** Fails early, with the command that fixes it, when the binary or the browser is missing. */
function requireTools() {
  if (!fs.existsSync(BIN)) {
    throw new Error(`${path.relative(ROOT, BIN)} is missing: build it first with \`cargo build --workspace --bins\``);
  }
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install it with \`apt-get install -y chromium\``);
  }
  fs.mkdirSync(OUT, { recursive: true });
}

/**
 * Starts the server with exactly `args` (which should hold `--listen 127.0.0.1:PORT`, 0 for any);
 * resolves with { child, port, log, exited } once its "listening on" line names the port.
 */
function startServer(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, { stdio: ["ignore", "ignore", "pipe"] });
    const s = { child, port: 0, log: "", exited: false };
    servers.add(s);
    const timer = setTimeout(() => reject(new Error(`no "listening on" line from the server within ${WAIT} ms:\n${s.log}`)), WAIT);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      // Keep draining stderr for the whole run (a full pipe would stall the server).
      s.log = (s.log + chunk).slice(-32_768);
      if (!s.port) {
        const m = /listening on 127\.0\.0\.1:(\d+)/.exec(s.log);
        if (m) {
          s.port = Number(m[1]);
          clearTimeout(timer);
          resolve(s);
        }
      }
    });
    child.on("error", (err) => { clearTimeout(timer); reject(err); });
    child.on("exit", (code, signal) => {
      s.exited = true;
      servers.delete(s);
      if (!s.port) { clearTimeout(timer); reject(new Error(`server exited (${code ?? signal}) before listening:\n${s.log}`)); }
    });
  });
}

/** Stops a server: SIGTERM, then SIGKILL if it has not exited within the deadline. */
function stopServer(s) {
  if (!s || s.exited) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => s.child.kill("SIGKILL"), WAIT);
    s.child.once("exit", () => { clearTimeout(kill); resolve(); });
    s.child.kill("SIGTERM");
  });
}

function killServers() {
  for (const s of servers) if (!s.exited) s.child.kill("SIGKILL");
}

/** Polls `probe` until it returns a truthy value, failing with `what` after the deadline. */
async function until(what, probe, ms = WAIT) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Resolves after `promise`, or after the deadline, whichever comes first (for closing browsers). */
async function withDeadline(promise, ms = WAIT) {
  let timer;
  const deadline = new Promise((r) => { timer = setTimeout(r, ms); });
  await Promise.race([Promise.resolve(promise).catch(() => {}), deadline]);
  clearTimeout(timer);
}

/**
 * Runs `main` (the file's checks) under a watchdog of `watchdog` ms, then `cleanup`, then prints
 * the tally and sets the exit code. An error thrown by `main` itself counts as a failed setup and
 * shows the logs of the servers still running.
 */
function finish(main, { watchdog, cleanup }) {
  const timer = setTimeout(() => {
    console.log(`FAIL  the whole run took over ${watchdog / 1000} s`);
    killServers();
    console.log(`${passed} passed, ${failed + 1} failed`);
    process.exit(1);
  }, watchdog);
  process.on("exit", killServers);
  for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));

  main()
    .catch((err) => {
      failed++;
      console.log(`FAIL  setup: ${err && err.message ? err.message : err}`);
      for (const s of servers) console.log(`server log (port ${s.port}):\n${s.log}`);
    })
    .finally(async () => {
      await cleanup();
      clearTimeout(timer);
      console.log(`${passed} passed, ${failed} failed`);
      process.exitCode = failed === 0 ? 0 : 1;
    });
}

module.exports = {
  ROOT, BIN, OUT, CHROMIUM, CHROMIUM_ARGS, WAIT,
  assert, check, requireTools, startServer, stopServer, until, withDeadline, finish,
};
