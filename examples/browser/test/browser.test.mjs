// The browser example in headless Chromium: the page calls the greeter (a
// real `greeter serve ws://...` process) from JavaScript and must show every
// call kind's outcome, then answer the form.
//
//   cargo build -p plexus-examples --bin greeter
//   npm install && npm test            # in examples/browser
//
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM); nothing is
// downloaded. $PLEXUS_EXAMPLES_DIR points at the built examples (default
// target/debug of the workspace).

import { test } from "node:test";
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

/** Starts `greeter serve ws://127.0.0.1:0` and resolves with the URL it prints. */
function startGreeter() {
  const child = spawn(join(examples, "greeter"), ["serve", "ws://127.0.0.1:0"], { stdio: ["ignore", "pipe", "inherit"] });
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

test("the page calls the greeter over ws:// in headless Chromium", { timeout: 120_000 }, async () => {
  const greeter = startGreeter();
  const files = await serveFiles();
  const profile = await mkdtemp(join(tmpdir(), "plexus-chromium-"));
  let context;
  try {
    const ws = await greeter.url;
    context = await bounded("Chromium starting", chromium.launchPersistentContext(profile, {
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      headless: true,
      chromiumSandbox: false,
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ],
    }));
    const page = context.pages()[0] || (await context.newPage());
    const problems = [];
    page.on("console", (message) => { if (message.type() === "error") problems.push(message.text()); });
    page.on("pageerror", (error) => problems.push(String(error)));

    const { port } = files.address();
    await bounded("the page loading", page.goto(`http://127.0.0.1:${port}/?server=${encodeURIComponent(ws)}`));
    await bounded("the calls", page.waitForFunction(() => document.body.dataset.status !== "connecting", null, { timeout: STEP }));
    const status = await page.evaluate(() => document.body.dataset.status);
    assert.equal(status, "done", `page status: ${status}; console: ${problems.join(" | ")}`);

    const text = (id) => page.locator(`#${id} output`).textContent();
    assert.equal(await text("hello"), "hello, ada!");
    assert.equal(await text("reject"), "rejected with code 400: a greeting needs a name");
    assert.equal(await text("countdown"), "5 4 3 2 1");
    assert.equal(await text("waves"), "1 new");
    assert.equal(await text("missing"), "NoSuchOperation (system code 1)");

    await page.fill("input[name=name]", "grace");
    await page.click("button");
    await bounded("the form's answer", page.waitForFunction(() => document.getElementById("answer").textContent !== "", null, { timeout: STEP }));
    assert.equal(await page.locator("#answer").textContent(), "hello, grace!");
    await page.fill("input[name=name]", "");
    await page.click("button");
    await bounded("the form's rejection", page.waitForFunction(() => document.getElementById("answer").textContent.startsWith("Rejected"), null, { timeout: STEP }));
    assert.deepEqual(problems, []);
    if (process.env.PLEXUS_SCREENSHOT) await page.screenshot({ path: process.env.PLEXUS_SCREENSHOT });
  } finally {
    if (context) await context.close();
    greeter.child.kill("SIGINT");
    files.close();
    await rm(profile, { recursive: true, force: true });
  }
});
