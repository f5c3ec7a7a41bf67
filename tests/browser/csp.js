// The page's Content-Security-Policy allows exactly its own inline script, by hash.
// `node csp.js` checks the hash in ../../index.html; `node csp.js --fix` rewrites it after an edit.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");

const PAGE = path.join(__dirname, "..", "..", "index.html");

/** Returns { html, want, have }: the hash the script needs and the one the policy names. */
function cspHashes(html) {
  const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)];
  if (scripts.length !== 1) throw new Error(`expected one inline <script> in index.html, found ${scripts.length}`);
  const want = crypto.createHash("sha256").update(scripts[0][1], "utf8").digest("base64");
  const m = /script-src 'sha256-([^']*)'/.exec(html);
  return { want, have: m ? m[1] : null };
}

module.exports = { PAGE, cspHashes };

if (require.main === module) {
  const html = fs.readFileSync(PAGE, "utf8");
  const { want, have } = cspHashes(html);
  if (have === want) {
    console.log(`CSP script hash is current: sha256-${want}`);
  } else if (process.argv.includes("--fix")) {
    if (have === null) throw new Error("no script-src 'sha256-…' in index.html's policy");
    fs.writeFileSync(PAGE, html.replace(`'sha256-${have}'`, `'sha256-${want}'`));
    console.log(`CSP script hash updated: sha256-${want}`);
  } else {
    console.error(`index.html's CSP names sha256-${have} but its script hashes to sha256-${want}; run: node tests/browser/csp.js --fix`);
    process.exit(1);
  }
}
