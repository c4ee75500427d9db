// Identity and "What Rose remembers" in a real browser (Debian's Chromium,
// driven by playwright-core) against `rose serve` with the provider
// simulator as its own process, whose request log shows the reply prompts:
// a person tells Rose their name, comes back after a reload and is
// recalled, sees the line in "What Rose remembers", forgets it, and at last
// asks Rose to forget them, after which the database holds nothing of them.
//
//   ROSE_BIN=target/debug/rose node --test tests/browser/
//
// Screenshots go to $ROSE_ARTIFACTS (default target/browser-artifacts).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
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

const TOLD = "Hello, my name is Anna. My mother died last spring.";
const NAME_LINE = "Their name is Anna.";
const KEY_SHAPE = /^[A-Za-z0-9_-]{43}$/;
/** How long background extraction may take to keep the name. */
const EXTRACTION_MS = 30_000;
const ADMIN_TOKEN = randomBytes(32).toString("hex");

let dir;
let dataDir;
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
  dir = mkdtempSync(path.join(tmpdir(), "rose-browser-memory-"));
  dataDir = path.join(dir, "data");

  const simPort = await freePort();
  simBase = `http://127.0.0.1:${simPort}`;
  sim = spawn(rose, ["sim", "--port", String(simPort)], { stdio: ["ignore", "pipe", "pipe"] });
  sim.stdout.on("data", (d) => (serverLog += d));
  sim.stderr.on("data", (d) => (serverLog += d));

  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const env = {
    ...process.env,
    ROSE_DATA_DIR: dataDir,
    ROSE_SIMULATOR_URL: simBase,
    ROSE_ADMIN_TOKEN: ADMIN_TOKEN,
    // The test polls for background work; the page's own requests stay few.
    ROSE_RATE_LIMIT_PER_MIN: "0",
    RUST_LOG: "warn",
  };
  for (const name of ["GROQ_API_KEY", "DATABASE_URL", "REDIS_URL"]) delete env[name];
  server = spawn(rose, ["serve", "--port", String(port)], { env, stdio: ["ignore", "pipe", "pipe"] });
  server.stdout.on("data", (d) => (serverLog += d));
  server.stderr.on("data", (d) => (serverLog += d));
  const health = await waitForHealth(base, 60_000);
  assert.equal(health.simulated, true, "the test runs against the simulator");

  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
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

/**
 * The reply prompt (chat messages) that ends with the person saying `words`;
 * extraction (JSON mode) and summaries quote them inside a longer message.
 */
async function replyPrompt(words) {
  const log = await fetch(`${simBase}/__sim/requests`).then((r) => r.json());
  const prompts = log.requests
    .filter((e) => e.path.endsWith("/chat/completions") && e.body?.response_format == null)
    .map((e) => e.body.messages ?? [])
    .filter((messages) => {
      const last = messages.at(-1);
      return last?.role === "user" && typeof last.content === "string" && last.content.trim() === words;
    });
  assert.equal(prompts.length, 1, `one reply prompt for ${JSON.stringify(words)}`);
  return prompts[0];
}

function promptText(messages) {
  return messages.map((m) => (typeof m.content === "string" ? m.content : JSON.stringify(m.content))).join("\n");
}

async function memories(key) {
  const r = await fetch(`${base}/api/me/memories?limit=200`, { headers: { "X-Person-Key": key } });
  assert.equal(r.status, 200, await r.clone().text());
  return (await r.json()).items;
}

/** Polls until Rose keeps a line that `matches`, bounded by `ms`. */
async function waitForMemory(key, matches, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const found = (await memories(key)).find(matches);
    if (found) return found;
    if (Date.now() > deadline) {
      throw new Error(`Rose did not keep the line in ${ms} ms: ${JSON.stringify(await memories(key))}\n${serverLog}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Waits until no queue has work waiting, delayed or running (background extraction done). */
async function settled(ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await fetch(`${base}/api/admin/queues`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(r.status, 200, await r.clone().text());
    const body = await r.json();
    const queues = Array.isArray(body) ? body : (body.queues ?? []);
    assert.ok(queues.length > 0, `queue stats: ${JSON.stringify(body)}`);
    if (queues.every((q) => q.pending + q.delayed + q.running === 0)) return;
    if (Date.now() > deadline) throw new Error(`the queues did not settle in ${ms} ms: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** One value from the embedded database, read beside the running server. */
function sql(query) {
  return execFileSync("sqlite3", ["-cmd", ".timeout 5000", path.join(dataDir, "rose.db"), query], {
    encoding: "utf8",
  }).trim();
}

test("Rose knows a returning person, shows what she remembers, forgets a line, and forgets them", async () => {
  const context = await browser.newContext({ reducedMotion: "reduce" });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  const shot = (step) => page.screenshot({ path: path.join(artifacts, `memory-${step}.png`), fullPage: true });
  const ready = () => page.waitForFunction(() => document.body.dataset.state === "idle");
  const storedKey = () => page.evaluate(() => localStorage.getItem("rose.person_key"));

  // First visit: a key is made and kept; no greeting for someone new.
  await page.goto(base);
  await ready();
  const key = await storedKey();
  assert.match(key ?? "", KEY_SHAPE, "a 32-byte base64url key is kept");
  assert.equal(await page.locator("#greeting").innerText(), "");
  await say(page, TOLD);
  const line = await waitForMemory(key, (item) => item.text === NAME_LINE, EXTRACTION_MS);
  assert.equal(line.kind, "profile");
  assert.equal(line.field, "name");

  // Reload: the same person, a new session, a gentle welcome back.
  await page.reload();
  await ready();
  assert.equal(await storedKey(), key, "the key survives the reload");
  assert.match(await page.locator("#greeting").innerText(), /Welcome back/);
  await shot("welcome-back");
  await say(page, "Do you remember my name?");
  const recalled = await replyPrompt("Do you remember my name?");
  assert.ok(promptText(recalled).includes(NAME_LINE), `the reply prompt carries the name: ${promptText(recalled)}`);
  assert.ok(
    !promptText(recalled).includes(TOLD),
    "the reload started a new session: the name comes from what Rose kept, not from this visit's turns",
  );

  // "What Rose remembers": the name line is listed, with a labelled way to forget it.
  const toggle = page.getByRole("button", { name: "What Rose remembers" });
  assert.equal(await toggle.getAttribute("aria-expanded"), "false");
  await toggle.click();
  assert.equal(await toggle.getAttribute("aria-expanded"), "true");
  const panel = page.getByRole("region", { name: "What Rose remembers" });
  await panel.waitFor({ state: "visible" });
  const listed = panel.locator("li.remembered", { hasText: NAME_LINE });
  await listed.waitFor();
  await shot("remembers");
  await panel.getByRole("button", { name: `Forget: ${NAME_LINE}` }).click();
  await listed.waitFor({ state: "detached" });
  assert.match(await panel.getByRole("status").innerText(), /let that go/);
  assert.equal((await memories(key)).find((item) => item.id === line.id), undefined, "the api no longer lists it");

  // The next reply prompt no longer carries the forgotten line.
  await say(page, "Do you still know who I am?");
  const after = await replyPrompt("Do you still know who I am?");
  assert.ok(!promptText(after).includes(NAME_LINE), `the forgotten line is gone: ${promptText(after)}`);

  // Everything Rose holds of this person, found through their sessions, once
  // the background work on their last words is done.
  await settled(EXTRACTION_MS);
  const owners = sql("SELECT DISTINCT user_id FROM sessions WHERE user_id IS NOT NULL").split("\n").filter(Boolean);
  assert.equal(owners.length, 1, `one person so far: ${owners}`);
  const [owner] = owners;
  assert.match(owner, /^pk_[0-9a-f]{64}$/, "a person's key is kept only as its keyed hash");
  assert.ok(!owner.includes(key), "the key itself is not stored");
  const sessionIds = sql(`SELECT id FROM sessions WHERE user_id = '${owner}'`).split("\n").filter(Boolean);
  assert.ok(sessionIds.length >= 2, `two visits, two sessions: ${sessionIds}`);
  const inSessions = sessionIds.map((id) => `'${id.replace(/'/g, "''")}'`).join(",");
  const held = () => ({
    sessions: Number(sql(`SELECT COUNT(*) FROM sessions WHERE user_id = '${owner}'`)),
    turns: Number(sql(`SELECT COUNT(*) FROM turns WHERE session_id IN (${inSessions})`)),
    jobs: Number(sql(`SELECT COUNT(*) FROM voice_jobs WHERE session_id IN (${inSessions})`)),
    profile_lines: Number(sql(`SELECT COUNT(*) FROM profile_lines WHERE owner = '${owner}'`)),
    memories: Number(sql(`SELECT COUNT(*) FROM memories WHERE owner = '${owner}'`)),
  });
  const before = held();
  assert.ok(before.turns > 0 && before.jobs > 0, `Rose holds their conversations: ${JSON.stringify(before)}`);

  // "Forget me" asks first; keeping the memories changes nothing.
  const forgetMe = panel.getByRole("button", { name: "Forget me" });
  await forgetMe.click();
  const confirm = panel.getByRole("group", { name: /forget everything/ });
  await confirm.waitFor({ state: "visible" });
  await shot("forget-me-confirm");
  await confirm.getByRole("button", { name: "Keep my memories" }).click();
  await confirm.waitFor({ state: "hidden" });
  assert.deepEqual(held(), before, "declining erases nothing");
  assert.equal(await storedKey(), key);

  await forgetMe.click();
  await confirm.getByRole("button", { name: "Yes, forget everything" }).click();
  await page.waitForFunction(() => /forgotten everything/.test(document.getElementById("remembers-status").textContent));
  await ready();
  await shot("forgotten");

  // The page starts afresh under a new key, and nothing of the old one is left.
  const fresh = await storedKey();
  assert.match(fresh ?? "", KEY_SHAPE, "a new key for the next visit");
  assert.notEqual(fresh, key);
  assert.equal(await page.locator("#transcript li").count(), 0, "the conversation is cleared from the page");
  assert.equal(await panel.locator("li.remembered").count(), 0);
  assert.deepEqual(await memories(key), [], "the old key finds nothing");
  assert.deepEqual(held(), { sessions: 0, turns: 0, jobs: 0, profile_lines: 0, memories: 0 });
  const others = sql("SELECT DISTINCT user_id FROM sessions WHERE user_id IS NOT NULL").split("\n").filter(Boolean);
  assert.equal(others.length, 1, "only the fresh session of the new key");
  assert.notEqual(others[0], owner);

  assert.deepEqual(errors, []);
  await context.close();
});
