// The browser example in headless Chromium: the page calls the greeter (a
// real `greeter serve ws://...` process) from JavaScript and must show every
// call kind's outcome, then answer the form; against a greeter started with
// `--key HEX` it proves the key, and every wrong combination is refused with
// its name.
//
//   cargo build -p plexus-examples --bin greeter
//   npm ci && npm test                 # in examples/browser
//
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM); nothing is
// downloaded. $PLEXUS_EXAMPLES_DIR points at the built examples (default
// target/debug of the workspace).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const page_dir = join(here, "..");
const repo = join(here, "..", "..", "..");
const examples = process.env.PLEXUS_EXAMPLES_DIR || join(repo, "target", "debug");
const STEP = 30_000;

function bounded(what, promise, ms = STEP) {
  let timer;
  const limit = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms); });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/** Starts `greeter serve ws://127.0.0.1:0 [extra...]` and resolves with the URL it prints. */
function startGreeter(...extra) {
  const child = spawn(join(examples, "greeter"), ["serve", "ws://127.0.0.1:0", ...extra], { stdio: ["ignore", "pipe", "inherit"] });
  const url = new Promise((resolve, reject) => {
    let seen = "";
    child.stdout.on("data", (chunk) => {
      seen += chunk;
      const match = seen.match(/(ws:\/\/\S+)/);
      if (match) resolve(match[1]);
    });
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`greeter exited with ${code} before listening: ${seen}`)));
  });
  return { child, url: bounded("the greeter starting", url) };
}

/** Serves the example's files (and nothing above them) on 127.0.0.1. */
async function serveFiles() {
  const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8" };
  const server = createServer(async (request, response) => {
    const path = new URL(request.url, "http://localhost").pathname;
    const file = normalize(join(page_dir, path === "/" ? "index.html" : path));
    const type = types[file.slice(file.lastIndexOf("."))];
    if (!file.startsWith(page_dir) || !type || file.includes("node_modules")) {
      response.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(file);
      response.writeHead(200, { "content-type": type }).end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

let files;
let profile;
let context;

before(async () => {
  files = await serveFiles();
  profile = await mkdtemp(join(tmpdir(), "plexus-chromium-"));
  context = await bounded("Chromium starting", chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    chromiumSandbox: false,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  }));
});

after(async () => {
  if (context) await context.close();
  if (files) files.close();
  if (profile) await rm(profile, { recursive: true, force: true });
});

/** Opens the page against `ws` (with `key`, if given) and waits until it is done or failed. */
async function openPage(ws, key) {
  const page = await context.newPage();
  const problems = [];
  page.on("console", (message) => { if (message.type() === "error") problems.push(message.text()); });
  page.on("pageerror", (error) => problems.push(String(error)));
  const { port } = files.address();
  const query = `server=${encodeURIComponent(ws)}${key ? `&key=${key}` : ""}`;
  await bounded("the page loading", page.goto(`http://127.0.0.1:${port}/?${query}`));
  await bounded("the calls", page.waitForFunction(() => document.body.dataset.status !== "connecting", null, { timeout: STEP }));
  const status = await page.evaluate(() => document.body.dataset.status);
  const error = await page.evaluate(() => document.body.dataset.error || "");
  return { page, problems, status, error };
}

/** What every call kind shows on a page that connected. */
async function assertEveryCallKind(page) {
  const text = (id) => page.locator(`#${id} output`).textContent();
  assert.equal(await text("hello"), "hello, ada!");
  assert.equal(await text("reject"), "rejected with code 400: a greeting needs a name");
  assert.equal(await text("countdown"), "5 4 3 2 1");
  assert.equal(await text("waves"), "1 new");
  assert.equal(await text("missing"), "NoSuchOperation (system code 1)");
}

const randomKey = () => Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) => b.toString(16).padStart(2, "0")).join("");

test("the page calls the greeter over ws:// in headless Chromium", { timeout: 120_000 }, async () => {
  const greeter = startGreeter();
  try {
    const { page, problems, status } = await openPage(await greeter.url);
    assert.equal(status, "done", `page status: ${status}; console: ${problems.join(" | ")}`);
    await assertEveryCallKind(page);

    await page.fill("input[name=name]", "grace");
    await page.click("button");
    await bounded("the form's answer", page.waitForFunction(() => document.getElementById("answer").textContent !== "", null, { timeout: STEP }));
    assert.equal(await page.locator("#answer").textContent(), "hello, grace!");
    await page.fill("input[name=name]", "");
    await page.click("button");
    await bounded("the form's rejection", page.waitForFunction(() => document.getElementById("answer").textContent.startsWith("Rejected"), null, { timeout: STEP }));
    assert.deepEqual(problems, []);
    if (process.env.PLEXUS_SCREENSHOT) await page.screenshot({ path: process.env.PLEXUS_SCREENSHOT });
    await page.close();
  } finally {
    greeter.child.kill("SIGINT");
  }
});

test("the page proves a session key to a keyed greeter, and wrong keys are refused by name", { timeout: 120_000 }, async () => {
  const key = randomKey();
  const keyed = startGreeter("--key", key);
  const keyless = startGreeter();
  try {
    const ws = await keyed.url;
    // The right key: every call kind, as without a key.
    const right = await openPage(ws, key);
    assert.equal(right.status, "done", `page status: ${right.status}; console: ${right.problems.join(" | ")}`);
    await assertEveryCallKind(right.page);
    assert.deepEqual(right.problems, []);
    await right.page.close();

    // Another key, no key, and a key against a server that has none.
    for (const [server, given, expected] of [
      [ws, randomKey(), "KeyMismatch"],
      [ws, null, "KeyRequired"],
      [await keyless.url, key, "Untrusted"],
    ]) {
      const refused = await openPage(server, given);
      assert.match(refused.status, /^failed: /, `expected ${expected}, page status: ${refused.status}`);
      assert.equal(refused.error, expected, refused.status);
      await refused.page.close();
    }
  } finally {
    keyed.child.kill("SIGINT");
    keyless.child.kill("SIGINT");
  }
});
