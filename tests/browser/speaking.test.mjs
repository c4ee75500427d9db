// Rose speaking sooner, in a real browser (Debian's Chromium, driven by
// playwright-core) against `rose serve` and the provider simulator as its
// own process, paced slowly enough to watch a reply arrive sentence by
// sentence: the page plays each sentence in order as it comes and grows
// Rose's line with it; a tap while she speaks stops her, cancels the job and
// listens; hands-free, a turn ends by itself on silence, and speaking over
// Rose interrupts her. The page's debug hook (`window.__rose`) says what
// played, what was shown as each sentence came, and what was stopped.
//
//   ROSE_BIN=target/debug/rose node --test tests/browser/
//
// Screenshots go to $ROSE_ARTIFACTS (default target/browser-artifacts).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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
/** Words whose simulated reply has three sentences (the reply depends only on them). */
const THREE_SENTENCES = "We used to walk the dog together every evening.";
/** Pacing that leaves seconds between a reply's first sentence and its end. */
const PACING = { tokens_per_s: 10, tts_ttfb_ms: 300 };

let dir;
let server;
let sim;
let serverLog = "";
let base;
let simBase;
/** One browser per fake microphone recording; the capture file loops. */
const browsers = {};
const wavs = {};

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

/** The format chunk and samples of a PCM WAV. */
function readWav(file) {
  const bytes = readFileSync(file);
  let fmt;
  for (let at = 12; at + 8 <= bytes.length; ) {
    const id = bytes.toString("ascii", at, at + 4);
    const size = bytes.readUInt32LE(at + 4);
    if (id === "fmt ") fmt = bytes.subarray(at + 8, at + 8 + size);
    if (id === "data") return { fmt, data: bytes.subarray(at + 8, Math.min(bytes.length, at + 8 + size)) };
    at += 8 + size + (size & 1);
  }
  throw new Error(`${file} has no data chunk`);
}

/** Writes `speech` with silences around and between it: `plan` lists seconds of silence or "speech". */
function composeWav(target, speech, plan) {
  const { fmt, data } = speech;
  const frameBytes = fmt.readUInt16LE(2) * (fmt.readUInt16LE(14) / 8);
  const silence = (seconds) => Buffer.alloc(Math.round(seconds * fmt.readUInt32LE(4)) * frameBytes);
  const body = Buffer.concat(plan.map((piece) => (piece === "speech" ? data : silence(piece))));
  const header = Buffer.alloc(20);
  header.write("RIFF", 0, "ascii");
  header.writeUInt32LE(4 + 8 + fmt.length + 8 + body.length, 4);
  header.write("WAVEfmt ", 8, "ascii");
  header.writeUInt32LE(fmt.length, 16);
  const dataHeader = Buffer.alloc(8);
  dataHeader.write("data", 0, "ascii");
  dataHeader.writeUInt32LE(body.length, 4);
  writeFileSync(target, Buffer.concat([header, fmt, dataHeader, body]));
  return target;
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  dir = mkdtempSync(path.join(tmpdir(), "rose-browser-speaking-"));
  const raw = path.join(dir, "raw.wav");
  execFileSync("espeak-ng", ["-s", "150", "-w", raw, SPOKEN]);
  const speech = readWav(raw);
  // A person who says something, then waits for Rose long enough for her to answer.
  wavs.once = composeWav(path.join(dir, "once.wav"), speech, [0.5, "speech", 10]);
  // One who says it, pauses three seconds, then says it again over Rose.
  wavs.twice = composeWav(path.join(dir, "twice.wav"), speech, [0.5, "speech", 3, "speech", 10]);

  const simPort = await freePort();
  simBase = `http://127.0.0.1:${simPort}`;
  sim = spawn(
    rose,
    [
      "sim",
      "--port",
      String(simPort),
      "--tokens-per-s",
      String(PACING.tokens_per_s),
      "--tts-ttfb-ms",
      String(PACING.tts_ttfb_ms),
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
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
  for (const name of ["GROQ_API_KEY", "DATABASE_URL", "REDIS_URL", "ROSE_STREAMING"]) delete env[name];
  server = spawn(rose, ["serve", "--port", String(port)], { env, stdio: ["ignore", "pipe", "pipe"] });
  server.stdout.on("data", (d) => (serverLog += d));
  server.stderr.on("data", (d) => (serverLog += d));
  const health = await waitForHealth(base, 60_000);
  assert.equal(health.simulated, true, "the test runs against the simulator");
});

after(async () => {
  for (const browser of Object.values(browsers)) await browser.close();
  for (const child of [server, sim]) {
    if (child && child.exitCode === null) {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
    }
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A browser whose fake microphone plays `wav` (looping). */
async function browserHearing(wav) {
  browsers[wav] ??= await chromium.launch({
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
  return browsers[wav];
}

async function openPage(name, wav = wavs.once) {
  const browser = await browserHearing(wav);
  // Reduced motion stills the listening pulse, so clicks land on a steady button.
  const context = await browser.newContext({ permissions: ["microphone"], reducedMotion: "reduce" });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(base);
  await page.waitForFunction(() => document.body.dataset.state === "idle");
  return {
    page,
    errors,
    shot: (step) => page.screenshot({ path: path.join(artifacts, `speaking-${name}-${step}.png`), fullPage: true }),
  };
}

async function job(id) {
  const r = await fetch(`${base}/api/jobs/${id}`);
  assert.equal(r.status, 200, await r.clone().text());
  return r.json();
}

/** Types `words` and sends them; returns the job id. */
async function type(page, words) {
  const accepted = page.waitForResponse((r) => r.url().endsWith("/api/voice/process"));
  await page.getByLabel("Or write to Rose").fill(words);
  await page.getByLabel("Or write to Rose").press("Enter");
  const response = await accepted;
  assert.equal(response.status(), 202);
  return (await response.json()).job_id;
}

const trace = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.__rose)));
const replyText = async (page) =>
  (await page.locator("#transcript li.rose").last().innerText()).replace(/^Rose\s*/, "");

/** Sets the simulator's pacing (for the requests that start after it). */
async function pace(pacing) {
  const r = await fetch(`${simBase}/__sim/latency`, {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(pacing),
  });
  assert.equal(r.status, 200, await r.text());
}

test("Rose's sentences play in order as they arrive, and her line grows sentence by sentence", async () => {
  const { page, errors, shot } = await openPage("chunks");
  const id = await type(page, THREE_SENTENCES);
  await page.waitForFunction(() => window.__rose.played.length >= 1, null, { timeout: 30_000 });
  await shot("first-sentence");
  await page.waitForFunction(() => document.body.dataset.state === "idle", null, { timeout: 60_000 });
  await shot("reply");

  const finished = await job(id);
  assert.equal(finished.status, "succeeded");
  const sentences = finished.result.chunks.map((c) => c.text);
  assert.equal(sentences.length, 3, `three sentences: ${JSON.stringify(sentences)}`);
  const seen = await trace(page);
  assert.deepEqual(seen.played, [0, 1, 2], "each sentence played, in order");
  // The line as each sentence arrived: the first alone, then growing.
  assert.deepEqual(seen.shown, [sentences[0], sentences.slice(0, 2).join(" "), sentences.join(" ")]);
  assert.equal(await replyText(page), finished.result.text);
  // Rose began to speak while the rest of her reply was still being written.
  const log = seen.log;
  assert.ok(log.indexOf("play 0") < log.indexOf("succeeded"), `first sound before the end: ${log}`);
  assert.ok(log.indexOf("audio 2") < log.indexOf("succeeded"), `sentences before the end: ${log}`);
  assert.equal(await page.locator("#voice").getAttribute("src"), null, "the whole file was not needed");
  assert.equal(seen.playing, false, "her turn ended with her last sentence");
  assert.deepEqual(errors, []);
  await page.context().close();
});

test("tapping while Rose speaks stops her at once, cancels the job and listens", async () => {
  const { page, errors, shot } = await openPage("interrupt");
  // Slower still, so the job is surely running when the first sentence sounds.
  await pace({ tokens_per_s: 3 });
  try {
    const id = await type(page, THREE_SENTENCES);
    await page.waitForFunction(() => window.__rose.played.length >= 1, null, { timeout: 30_000 });
    assert.equal((await job(id)).status, "processing", "Rose is still writing her reply");
    assert.equal((await trace(page)).playing, true);
    await page.waitForFunction(() => document.body.dataset.state === "speaking");
    const talk = page.getByRole("button", { name: "Stop Rose and start speaking" });
    const cancelled = page.waitForResponse((r) => r.url().endsWith(`/api/jobs/${id}/cancel`));
    await talk.click();

    const response = await cancelled;
    assert.equal(response.request().method(), "POST");
    assert.equal(response.status(), 200);
    const seen = await trace(page);
    assert.equal(seen.playing, false, "her voice stopped");
    assert.ok(seen.stopped >= 1, "the scheduled sentences were stopped");
    assert.deepEqual(seen.cancelled, [id]);
    await page.waitForFunction(() => document.body.dataset.state === "listening");
    assert.equal((await trace(page)).recording, true, "the page records the person at once");
    assert.equal(await talk.count(), 0);
    await page.getByRole("button", { name: "Stop and send your words to Rose" }).waitFor();
    const ended = await job(id);
    assert.equal(ended.status, "cancelled");
    // What was shown of her reply stays; nothing more of it comes or plays.
    const shown = seen.shown.at(-1);
    assert.equal(await replyText(page), shown);
    assert.ok(ended.result.text.startsWith(seen.shown[0]), `she was heard: ${ended.result.text}`);
    await page.waitForTimeout(1500);
    const later = await trace(page);
    assert.deepEqual(later.played, seen.played, "nothing more played");
    assert.equal(await replyText(page), shown);
    await shot("listening");
    assert.deepEqual(errors, []);
  } finally {
    await pace(PACING);
  }
  await page.context().close();
});

/** Collects the voice jobs the page creates and the cancels it sends. */
function watchRequests(page) {
  const seen = { jobs: [], cancels: [] };
  page.on("response", async (r) => {
    if (r.url().endsWith("/api/voice/process") && r.status() === 202) seen.jobs.push((await r.json()).job_id);
    const cancel = r.url().match(/\/api\/jobs\/([^/]+)\/cancel$/);
    if (cancel) seen.cancels.push(cancel[1]);
  });
  return seen;
}

/** The transcription requests the simulator has answered: recordings the page sent. */
async function transcriptions() {
  const log = await fetch(`${simBase}/__sim/requests`).then((r) => r.json());
  return log.requests.filter((e) => e.path.endsWith("/audio/transcriptions"));
}

async function until(check, what, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen in ${ms} ms\n${serverLog.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Turns hands-free on from the keyboard and checks it is remembered. */
async function turnOnHandsFree(page) {
  const toggle = page.getByRole("switch", { name: "Hands-free" });
  await toggle.focus();
  await page.keyboard.press("Space");
  assert.equal(await toggle.isChecked(), true);
  assert.equal(await page.evaluate(() => localStorage.getItem("rose.hands_free")), "on");
  await page.waitForFunction(() => document.body.dataset.state === "listening");
}

test("hands-free, a turn ends by itself on silence and Rose answers it", async () => {
  const { page, errors, shot } = await openPage("hands-free");
  const heard = (await transcriptions()).length;
  const seen = watchRequests(page);
  await turnOnHandsFree(page);
  assert.match(await page.getByRole("status").first().innerText(), /answer when you pause/);
  await shot("listening");
  // No tap: the recording is sent when the person falls silent.
  await until(() => seen.jobs.length >= 1, "a job without a tap");
  await until(async () => (await transcriptions()).length > heard, "the recording's transcription");
  const reply = page.locator("#transcript li.rose").first();
  await reply.waitFor({ timeout: 30_000 });
  assert.match(await reply.innerText(), /Simulated reply/);
  const first = await job(seen.jobs[0]);
  assert.ok(first.result?.transcript, `Rose heard the recording: ${JSON.stringify(first)}`);
  await shot("reply");
  assert.deepEqual(seen.cancels, [], "nothing interrupted her first answer");
  // Remembered: after a reload the switch is still on, and the page listens by itself.
  await page.reload();
  assert.equal(await page.getByRole("switch", { name: "Hands-free" }).isChecked(), true);
  await page.waitForFunction(() => document.body.dataset.state === "listening");
  assert.deepEqual(errors, []);
  await page.context().close();
});

test("hands-free, speaking over Rose interrupts her and the new words are answered", async (t) => {
  const { page, errors, shot } = await openPage("barge-in", wavs.twice);
  const heard = (await transcriptions()).length;
  const seen = watchRequests(page);
  await turnOnHandsFree(page);
  await until(() => seen.jobs.length >= 1, "the first turn");
  // The person speaks again while Rose thinks or speaks: she stops, the job is cancelled.
  await until(() => seen.cancels.length >= 1, "an interruption");
  assert.equal(seen.cancels[0], seen.jobs[0]);
  const interrupted = await trace(page);
  assert.deepEqual(interrupted.cancelled, [seen.jobs[0]]);
  assert.equal(interrupted.playing, false, "nothing of hers sounds on");
  const [by] = interrupted.interrupted;
  assert.equal(by.job, seen.jobs[0]);
  assert.ok(["thinking", "speaking"].includes(by.state), `while Rose answered: ${JSON.stringify(by)}`);
  if (by.state === "speaking") assert.ok(by.silenced >= 1, "her voice was stopped");
  t.diagnostic(`interrupted while ${by.state}, ${by.silenced} sentence(s) silenced`);
  // Cancelled if she was still writing; a reply written whole (409) is only silenced.
  const first = await job(seen.jobs[0]);
  assert.ok(["cancelled", "succeeded"].includes(first.status), first.status);
  // The interrupted turn still shows what Rose heard.
  await page.waitForFunction(
    (words) => document.querySelector("#transcript li.you .words").textContent === words,
    first.result.transcript,
  );
  // The words that interrupted her are a turn of their own, ended by silence.
  await until(() => seen.jobs.length >= 2, "the second turn");
  await until(async () => (await transcriptions()).length >= heard + 2, "the second recording's transcription");
  const second = await fetch(`${base}/api/jobs/${seen.jobs[1]}?wait=30`).then((r) => r.json());
  assert.equal(second.status, "succeeded", JSON.stringify(second));
  assert.ok(second.result.transcript, `Rose heard the second turn: ${JSON.stringify(second)}`);
  // Her answer to it is the last line, after both of the person's turns.
  await page.waitForFunction(
    () => {
      const lines = [...document.querySelectorAll("#transcript li")];
      return lines.filter((li) => li.matches(".you")).length === 2 && lines.at(-1).matches(".rose");
    },
    null,
    { timeout: 30_000 },
  );
  assert.match(await replyText(page), /Simulated reply/);
  await shot("answered");
  // A cancel that came after her reply was written is answered 409, which
  // the page expects; Chromium itself logs it.
  assert.deepEqual(
    errors.filter((e) => !e.includes("409")),
    [],
  );
  await page.context().close();
});
