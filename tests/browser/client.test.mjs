// The web client in a real browser: Debian's Chromium, driven by
// playwright-core, against `rose serve` and the provider simulator as its
// own process (so faults can be injected). Chromium's fake microphone plays
// a WAV spoken by espeak-ng. Rose's replies arrive and play sentence by
// sentence; the page's debug hook (`window.__rose`) says which it played.
//
//   ROSE_BIN=target/debug/rose node --test tests/browser/
//
// Screenshots go to $ROSE_ARTIFACTS (default target/browser-artifacts).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
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
const SPOKEN = "I keep thinking about my father. I wish I could tell him one more thing.";

let dir;
let server;
let sim;
let serverLog = "";
let base;
let simBase;
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
  dir = mkdtempSync(path.join(tmpdir(), "rose-browser-"));
  const wav = path.join(dir, "spoken.wav");
  execFileSync("espeak-ng", ["-s", "150", "-w", wav, SPOKEN]);

  // The simulator as its own process, so the tests can inject provider faults.
  const simPort = await freePort();
  simBase = `http://127.0.0.1:${simPort}`;
  sim = spawn(rose, ["sim", "--port", String(simPort)], { stdio: ["ignore", "pipe", "pipe"] });
  sim.stdout.on("data", (d) => (serverLog += d));
  sim.stderr.on("data", (d) => (serverLog += d));

  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const env = {
    ...process.env,
    ROSE_DATA_DIR: path.join(dir, "data"),
    ROSE_SIMULATOR_URL: simBase,
    RUST_LOG: "warn",
  };
  delete env.GROQ_API_KEY;
  delete env.DATABASE_URL;
  delete env.REDIS_URL;
  server = spawn(rose, ["serve", "--port", String(port)], { env, stdio: ["ignore", "pipe", "pipe"] });
  server.stdout.on("data", (d) => (serverLog += d));
  server.stderr.on("data", (d) => (serverLog += d));
  const health = await waitForHealth(base, 60_000);
  assert.equal(health.simulated, true, "the test runs against the simulator");

  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${wav}`,
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
});

after(async () => {
  await browser?.close();
  for (const child of [server, sim]) {
    if (child && child.exitCode === null) {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
    }
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function openPage(name, { before } = {}) {
  // Reduced motion stills the listening pulse, so clicks land on a steady button.
  const context = await browser.newContext({ permissions: ["microphone"], reducedMotion: "reduce" });
  const page = await context.newPage();
  if (before) await page.addInitScript(before);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(base);
  await page.getByRole("button", { name: "Start speaking to Rose" }).waitFor();
  await page.waitForFunction(() => document.body.dataset.state === "idle");
  return { page, errors, shot: (step) => page.screenshot({ path: path.join(artifacts, `${name}-${step}.png`), fullPage: true }) };
}

/** Rose's reply line without the "Rose" name above it. */
async function replyText(page) {
  return (await page.locator("#transcript li.rose").last().innerText()).replace(/^Rose\s*/, "");
}

/**
 * Waits until Rose's reply is on the page and her turn is over; each of its
 * sentences played, in order (the page's debug hook, `window.__rose`).
 */
async function expectReply(page) {
  const reply = page.locator("#transcript li.rose").last();
  await reply.waitFor({ timeout: 30_000 });
  await page.waitForFunction(() => document.body.dataset.state === "idle", null, { timeout: 30_000 });
  const text = await replyText(page);
  assert.match(text, /Simulated reply/, "the simulator's words are shown");
  const { played, shown } = await page.evaluate(() => ({ played: window.__rose.played, shown: window.__rose.shown }));
  assert.ok(shown.length > 0, "the reply came sentence by sentence");
  assert.deepEqual(played, [...shown.keys()], "every sentence played, in order");
  assert.equal(await page.locator("#voice").getAttribute("src"), null, "not the whole file");
  return text;
}

test("a person taps, speaks, taps to send, and hears Rose answer", async () => {
  const { page, errors, shot } = await openPage("speak");
  assert.equal(await page.locator("#simulated").isVisible(), true, "the page says the providers are simulated");
  await shot("ready");

  const talk = page.locator("#talk");
  await talk.click();
  await page.waitForFunction(() => document.body.dataset.state === "listening");
  assert.equal(await talk.getAttribute("aria-label"), "Stop and send your words to Rose");
  // Let the fake microphone speak for a while.
  await page.waitForTimeout(2500);
  await shot("listening");
  await talk.click();

  await expectReply(page);
  // The person's side shows the transcript Rose heard, not a placeholder.
  const mine = (await page.locator("#transcript li.you").last().innerText()).replace(/^You\s*/, "");
  assert.ok(mine.length > 3 && mine !== "…", `transcript shown: ${mine}`);
  await shot("reply");
  await page.waitForFunction(() => document.body.dataset.state === "idle", null, { timeout: 30_000 });
  assert.deepEqual(errors, []);
  await page.context().close();
});

test("a person types instead and hears Rose answer", async () => {
  const { page, errors, shot } = await openPage("type");
  const words = "Some mornings I still set out two cups.";
  // Keyboard only: the box is labelled, Enter sends.
  await page.getByLabel("Or write to Rose").fill(words);
  await page.getByLabel("Or write to Rose").press("Enter");
  await expectReply(page);
  const mine = (await page.locator("#transcript li.you").last().innerText()).replace(/^You\s*/, "");
  assert.equal(mine, words);
  await shot("reply");
  assert.deepEqual(errors, []);
  await page.context().close();
});

test("without Server-Sent Events the page waits for the whole reply and plays it as one file", async () => {
  const { page, errors } = await openPage("whole", { before: () => delete window.EventSource });
  await page.getByLabel("Or write to Rose").fill("Some mornings I still set out two cups.");
  await page.getByLabel("Or write to Rose").press("Enter");
  const reply = page.locator("#transcript li.rose").last();
  await reply.waitFor({ timeout: 30_000 });
  assert.match(await replyText(page), /Simulated reply/);
  await page.waitForFunction(
    () => {
      const audio = document.getElementById("voice");
      return audio.played.length > 0 && audio.currentTime > 0;
    },
    null,
    { timeout: 30_000 },
  );
  assert.match((await page.locator("#voice").getAttribute("src")) ?? "", /^\/api\/audio\//, "the whole reply is played");
  assert.deepEqual(await page.evaluate(() => window.__rose.shown), [], "no sentence came on its own");
  await page.waitForFunction(() => document.body.dataset.state === "idle", null, { timeout: 30_000 });
  assert.deepEqual(errors, []);
  await page.context().close();
});

/** Makes the simulator answer the next call to `endpoint` with `status`. */
async function fault(endpoint, status) {
  const r = await fetch(`${simBase}/__sim/faults`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ endpoint, status, count: 1 }),
  });
  assert.equal(r.status, 201, await r.text());
}

test("when Rose's voice fails, her words are shown without audio", async () => {
  const { page, shot } = await openPage("degraded");
  await fault("text_to_speech", 401);
  await page.getByLabel("Or write to Rose").fill("I could not sleep again.");
  await page.getByRole("button", { name: "Send" }).click();
  const reply = page.locator("#transcript li.rose").last();
  await reply.waitFor({ timeout: 30_000 });
  await page.waitForFunction(() => document.body.dataset.state === "idle", null, { timeout: 30_000 });
  assert.match(await reply.innerText(), /Simulated reply/);
  assert.match(await reply.innerText(), /voice could not be reached/);
  assert.equal(await page.locator("#voice").getAttribute("src"), null, "no whole file to play");
  // The sentence whose speech failed is shown and skipped; the others play.
  const job = await fetch(`${base}/api/jobs/${await page.evaluate(() => window.__rose.job)}`).then((r) => r.json());
  const voiced = job.result.chunks.filter((c) => c.audio_url).map((c) => c.index);
  assert.ok(voiced.length < job.result.chunks.length, `a sentence without voice: ${JSON.stringify(job.result.chunks)}`);
  assert.deepEqual(await page.evaluate(() => window.__rose.played), voiced);
  await shot("reply");
  await page.context().close();
});

test("when Rose cannot answer, a gentle message is shown", async () => {
  const { page, shot } = await openPage("failed");
  await fault("chat_completions", 400);
  await page.getByLabel("Or write to Rose").fill("Are you there?");
  await page.getByRole("button", { name: "Send" }).click();
  const notice = page.getByRole("alert");
  await notice.waitFor({ timeout: 30_000 });
  assert.match(await notice.innerText(), /try again/);
  assert.equal(await page.locator("#transcript li.rose").count(), 0);
  await page.waitForFunction(() => document.body.dataset.state === "idle");
  await shot("notice");
  await page.context().close();
});

test("the controls are keyboard operable with a visible focus", async () => {
  const { page } = await openPage("keyboard");
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement?.id);
  assert.equal(focused, "talk", "the talk button is the first stop");
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, "none", "focus is visible");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "hands-free");
  const toggle = page.getByRole("switch", { name: "Hands-free" });
  assert.equal(await toggle.isChecked(), false, "hands-free is off until asked for");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "message");
  await page.keyboard.press("Shift+Tab");
  await page.keyboard.press("Shift+Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "talk");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.body.dataset.state === "listening");
  // Let the fake microphone speak: a recording stopped at once holds no audio.
  await page.waitForTimeout(1000);
  await page.keyboard.press("Enter");
  await expectReply(page);
  await page.context().close();
});

test("a tap too short to record any sound gets a gentle word, not a reply", async () => {
  const { page, errors, shot } = await openPage("too-short");
  // Stop the moment recording starts: Chromium's WebM then holds its headers
  // and no audio frame, which Rose refuses (422 invalid_audio) before storing it.
  const upload = page.waitForResponse((r) => r.url().endsWith("/api/voice/process"));
  await page.evaluate(() => {
    const talk = document.getElementById("talk");
    new MutationObserver((_, observer) => {
      if (document.body.dataset.state === "listening") {
        observer.disconnect();
        talk.click();
      }
    }).observe(document.body, { attributes: true, attributeFilter: ["data-state"] });
    talk.click();
  });
  const response = await upload;
  assert.equal(response.status(), 422);
  assert.equal((await response.json()).error.code, "invalid_audio");
  const notice = page.getByRole("alert");
  await notice.waitFor();
  assert.match(await notice.innerText(), /could not hear anything/);
  assert.equal(await page.locator("#transcript li.rose").count(), 0);
  await page.waitForFunction(() => document.body.dataset.state === "idle");
  await shot("notice");
  // The refusal is the api's answer, not a page error (Chromium itself logs the 422).
  assert.deepEqual(
    errors.filter((e) => !e.includes("422")),
    [],
  );
  await page.context().close();
});
