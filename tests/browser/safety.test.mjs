// The web client's safety help in a real browser (Debian's Chromium, driven
// by playwright-core) against `rose serve` with its in-process simulator and
// a configured crisis resource (ROSE_CRISIS_RESOURCES): the quiet "Need help
// now?" link is always there and points to it, and a typed crisis turn shows
// the resource prominently, not only inside Rose's reply.
//
//   ROSE_BIN=target/debug/rose node --test tests/browser/
//
// Screenshots go to $ROSE_ARTIFACTS (default target/browser-artifacts).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const rose = process.env.ROSE_BIN ?? path.join(root, "target/debug/rose");
const artifacts = process.env.ROSE_ARTIFACTS ?? path.join(root, "target/browser-artifacts");
const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

const RESOURCE = {
  text: "Please reach someone tonight: the Rose test line answers at any hour.",
  url: "https://help.example/rose-browser-test",
};

let dir;
let server;
let serverLog = "";
let base;
let browser;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitForHealth(url, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(`${url}/api/health`);
      if (r.ok) return r.json();
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`rose serve did not answer:\n${serverLog}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  dir = mkdtempSync(path.join(tmpdir(), "rose-browser-safety-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const env = {
    ...process.env,
    ROSE_DATA_DIR: path.join(dir, "data"),
    ROSE_CRISIS_RESOURCES: JSON.stringify(RESOURCE),
    RUST_LOG: "warn",
  };
  for (const name of ["GROQ_API_KEY", "DATABASE_URL", "REDIS_URL", "ROSE_SIMULATOR_URL"]) delete env[name];
  server = spawn(rose, ["serve", "--port", String(port)], { env, stdio: ["ignore", "pipe", "pipe"] });
  server.stdout.on("data", (d) => (serverLog += d));
  server.stderr.on("data", (d) => (serverLog += d));
  await waitForHealth(base, 60_000);
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
  });
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) {
    server.kill("SIGTERM");
    await new Promise((r) => server.once("exit", r));
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function openPage(name) {
  const context = await browser.newContext({ reducedMotion: "reduce" });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(base);
  await page.waitForFunction(() => document.body.dataset.state === "idle");
  return {
    page,
    errors,
    shot: (step) => page.screenshot({ path: path.join(artifacts, `safety-${name}-${step}.png`), fullPage: true }),
  };
}

/** Types `words` and waits for Rose's whole reply; returns its text. */
async function say(page, words) {
  const before = await page.locator("#transcript li.rose").count();
  await page.getByLabel("Or write to Rose").fill(words);
  await page.getByLabel("Or write to Rose").press("Enter");
  await page.waitForFunction((n) => document.querySelectorAll("#transcript li.rose").length > n, before, {
    timeout: 30_000,
  });
  // Her line grows sentence by sentence; it is whole when her turn is over.
  await page.waitForFunction(() => document.body.dataset.state === "idle", null, { timeout: 30_000 });
  return (await page.locator("#transcript li.rose").last().innerText()).replace(/^Rose\s*/, "");
}

test("a quiet 'Need help now?' link is always there, labelled, and points to the configured resource", async () => {
  const { page, errors, shot } = await openPage("link");
  const link = page.getByRole("link", { name: /Need help now\?/ });
  await link.waitFor();
  assert.equal(await link.isVisible(), true);
  await page.waitForFunction((url) => document.getElementById("help-now").href === url, RESOURCE.url);
  assert.equal(await link.getAttribute("target"), "_blank");
  assert.equal(await link.getAttribute("title"), RESOURCE.text);
  // The crisis panel is not shown on an ordinary visit.
  assert.equal(await page.locator("#crisis-help").isVisible(), false);
  // Keyboard: the link is reached by Tab and shows its focus.
  let reached = false;
  for (let i = 0; i < 10 && !reached; i += 1) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement?.id === "help-now");
  }
  assert.ok(reached, "the link is keyboard reachable");
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, "none", "focus is visible");
  // An ordinary turn of grief leaves the panel hidden, the link still there.
  await say(page, "I feel like I died with her.");
  assert.equal(await page.locator("#crisis-help").isVisible(), false);
  assert.equal(await link.isVisible(), true);
  await shot("ordinary");
  assert.deepEqual(errors, []);
  await page.context().close();
});

test("a crisis turn shows the resource prominently, beside Rose's reply that carries it", async () => {
  const { page, errors, shot } = await openPage("crisis");
  const reply = await say(page, "I don't want to be here anymore. I keep thinking about ending my life.");
  assert.ok(reply.includes(RESOURCE.text) && reply.includes(RESOURCE.url), `the reply carries it: ${reply}`);
  const panel = page.getByRole("region", { name: "You don't have to face this alone" });
  await panel.waitFor({ state: "visible" });
  assert.match(await panel.innerText(), new RegExp(RESOURCE.text.replace(/[.?*+^$()[\]{}|\\]/g, "\\$&")));
  const link = panel.getByRole("link", { name: /reach someone now/ });
  assert.equal(await link.getAttribute("href"), RESOURCE.url);
  assert.equal(await link.innerText(), "help.example");
  // Prominent: visible in the viewport, not only inside the reply.
  assert.ok(await panel.isVisible());
  assert.equal(await page.getByRole("link", { name: /Need help now\?/ }).isVisible(), true);
  await shot("resource");
  assert.deepEqual(errors, []);
  await page.context().close();
});
