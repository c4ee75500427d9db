// Rose's web client: tap to speak, tap to send (or type), or turn on
// hands-free and simply talk. Each turn is a job followed by Server-Sent
// Events: Rose's reply shows and plays sentence by sentence as it is spoken
// (player.js), or whole once the job ends when the stream is not there
// (long-polling takes over). Tapping while Rose thinks or speaks, or,
// hands-free, starting to speak (listen.js, vad.js), stops her, cancels the
// job and listens. Plain JavaScript against the public HTTP API; no build
// step. Each page load is a visit: a new session for this person
// (identity.js keeps who they are), greeted gently when they have been here
// before.

import { dropPersonKey, initRemembers, personKey, refreshRemembers } from "/identity.js";
import { TERMINAL, cancel, follow } from "/jobs.js";
import { Microphone, fileName } from "/listen.js";
import { ChunkPlayer } from "/player.js";
import { loadResources, showSafety } from "/safety.js";

const $ = (id) => document.getElementById(id);
const talk = $("talk");
const talkLabel = $("talk-label");
const stateLine = $("state");
const handsFree = $("hands-free");
const form = $("type-form");
const message = $("message");
const send = $("send");
const transcript = $("transcript");
const voice = $("voice");
const notice = $("notice");
const greeting = $("greeting");

const GENTLE_FAILURE =
  "Something got in the way and Rose could not answer this time. Please take a breath and try again in a moment.";
/** Shown when the recording held no sound Rose could hear (`invalid_audio`). */
const NOTHING_HEARD = "Rose could not hear anything in that recording. Tap and try again when you are ready.";
const NO_VOICE = "Rose's voice could not be reached this time, so here are her words.";
const SOME_VOICE = "Rose's voice could not be reached for part of this, so here are her words.";
const WELCOME_BACK = "Welcome back. I'm glad you're here again.";
const HANDS_FREE_KEY = "rose.hands_free";

let sessionId = null;
/** The exchange in progress, from sending the person's words to Rose's last sound. */
let turn = null;
let audio = null;
let opening = false;
const mic = new Microphone();

/**
 * What the browser tests read: the sentences as they start to sound, the
 * reply line as each sentence arrived, what happened in order (`log`), the
 * sources interruptions stopped, each interruption (the job, the page's
 * state, what it silenced) and the jobs cancelled.
 */
const trace = {
  played: [],
  shown: [],
  log: [],
  stopped: 0,
  interrupted: [],
  job: null,
  cancelled: [],
  get playing() {
    return Boolean(turn?.player?.playing) || !voice.paused;
  },
  get recording() {
    return mic.recording;
  },
};
window.__rose = trace;

function handsFreeOn() {
  return handsFree.checked && audio !== null;
}

/** The page's state: idle, listening, thinking or speaking. */
function setState(state, words) {
  document.body.dataset.state = state;
  talk.dataset.state = state;
  const [label, name] = {
    idle: ["Tap to speak", "Start speaking to Rose"],
    listening: ["Tap to send", "Stop and send your words to Rose"],
    thinking: ["Tap to speak", "Stop Rose and start speaking"],
    speaking: ["Tap to speak", "Stop Rose and start speaking"],
  }[state];
  talkLabel.textContent = label;
  talk.setAttribute("aria-label", name);
  talk.disabled = false;
  send.disabled = !(state === "idle" || (state === "listening" && handsFreeOn()));
  const hands = handsFreeOn();
  stateLine.textContent = words ?? {
    idle: "When you are ready, tap and speak. Take all the time you need.",
    listening: hands
      ? "Listening… Rose will answer when you pause."
      : "Listening… tap again when you have finished.",
    thinking: "Rose is thinking…",
    speaking: hands
      ? "Rose is speaking. Start talking, or tap, and she will stop to listen."
      : "Rose is speaking. Tap to speak and she will stop to listen.",
  }[state];
}

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

function addLine(who, text, note) {
  const li = document.createElement("li");
  li.className = who;
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = who === "you" ? "You" : "Rose";
  const words = document.createElement("span");
  words.className = "words";
  words.textContent = text;
  li.append(name, words);
  if (note) addNote(li, note);
  transcript.append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function addNote(li, text) {
  const small = document.createElement("span");
  small.className = "note";
  small.textContent = text;
  li.append(small);
}

const wordsOf = (li) => li.querySelector(".words");

/** The page's audio, woken inside a tap or key press (browsers let sound start only from one). */
function wakeAudio() {
  const Context = window.AudioContext ?? window.webkitAudioContext;
  if (!Context) return null;
  audio ??= new Context();
  if (audio.state === "suspended") audio.resume().catch(() => {});
  return audio;
}

function postStart() {
  return fetch("/api/session/start", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ person_key: personKey() }),
  });
}

/** Starts a session as this person; greets them when they have been here before. */
async function startSession() {
  let response = await postStart();
  if (response.status === 400) {
    const json = await response.json().catch(() => ({}));
    if (json?.error?.code !== "invalid_person_key") throw new Error("session start answered 400");
    // A damaged key cannot be repaired: this browser starts over as someone new.
    dropPersonKey();
    response = await postStart();
  }
  if (!response.ok) throw new Error(`session start answered ${response.status}`);
  const started = await response.json();
  sessionId = started.session_id;
  greeting.textContent = started.returning ? WELCOME_BACK : "";
}

/** A failure whose message is already worded for the person. */
class GentleError extends Error {}

/** Sends one job (audio or typed words); starts a new session if the old one is gone. */
async function submit(fill) {
  for (let tries = 0; tries < 2; tries += 1) {
    const body = new FormData();
    body.append("session_id", sessionId);
    fill(body);
    const response = await fetch("/api/voice/process", { method: "POST", body });
    const json = await response.json().catch(() => ({}));
    if (response.status === 202 || response.ok) return json;
    if (response.status === 429) {
      const wait = Number(response.headers.get("retry-after")) || 5;
      throw new GentleError(
        `Rose is still with your last words. Please give her about ${wait} seconds, then try again.`,
      );
    }
    if (json?.error?.code === "invalid_audio") throw new GentleError(NOTHING_HEARD);
    if (json?.error?.code === "session_not_found" && tries === 0) {
      await startSession();
      continue;
    }
    throw new Error(json?.error?.message ?? `the upload answered ${response.status}`);
  }
  throw new Error("the session could not be started");
}

/** One sentence of Rose's reply: onto her line, and into the player. */
function hear(current, chunk) {
  if (current.interrupted || chunk.index < current.next) return;
  current.next = chunk.index + 1;
  current.line ??= addLine("rose", "");
  const words = wordsOf(current.line);
  words.textContent += (words.textContent ? " " : "") + chunk.text;
  if (!chunk.audio_url) current.unvoiced += 1;
  trace.shown.push(words.textContent);
  trace.log.push(`audio ${chunk.index}`);
  current.player?.add(chunk.index, chunk.audio_url);
}

function sounding(current, index) {
  trace.played.push(index);
  trace.log.push(`play ${index}`);
  if (turn === current && document.body.dataset.state !== "speaking") setState("speaking");
}

/** Shows the finished job, and plays what is left of Rose's reply to its end. */
async function present(job, current) {
  showSafety(job);
  const result = job.result ?? {};
  if (job.status === "cancelled") {
    current.player?.stop();
    return;
  }
  if (job.status !== "succeeded") {
    showNotice(job.error?.code === "invalid_audio" ? NOTHING_HEARD : GENTLE_FAILURE);
    current.player?.stop();
    return;
  }
  if (result.transcript) wordsOf(current.you).textContent = result.transcript;
  refreshRemembers();
  if (!current.line || !current.player) {
    current.player?.stop();
    current.line ??= addLine("rose", "");
    wordsOf(current.line).textContent = result.text ?? "";
    if (!result.audio_url) addNote(current.line, NO_VOICE);
    else await playWhole(result.audio_url, current);
    return;
  }
  // Sentences the stream did not bring (it broke and polling took over).
  for (const chunk of result.chunks ?? []) hear(current, chunk);
  if (result.text) wordsOf(current.line).textContent = result.text;
  if (current.unvoiced > 0) addNote(current.line, current.unvoiced >= current.next ? NO_VOICE : SOME_VOICE);
  current.player.finish();
  // Audio the browser never let start cannot end; the words are on the page.
  if (audio?.state !== "running") current.player.stop();
  await current.player.done;
}

/** The whole reply as one file: no sentence came by the event stream, or there is no Web Audio. */
async function playWhole(url, current) {
  voice.src = url;
  setState("speaking");
  const ended = new Promise((resolve) => {
    voice.addEventListener("ended", resolve, { once: true });
    voice.addEventListener("error", resolve, { once: true });
    current.abort.signal.addEventListener("abort", resolve, { once: true });
  });
  try {
    await voice.play();
  } catch {
    // Autoplay refused or the audio failed: the words are on the page.
    return;
  }
  await ended;
}

async function run(fill, yourWords) {
  const current = {
    abort: new AbortController(),
    jobId: null,
    interrupted: false,
    you: null,
    line: null,
    next: 0,
    unvoiced: 0,
    player: null,
  };
  turn = current;
  showNotice("");
  setState("thinking");
  current.you = addLine("you", yourWords);
  if (audio) current.player = new ChunkPlayer(audio, { onStart: (index) => sounding(current, index) });
  try {
    const accepted = await submit(fill);
    current.jobId = accepted.job_id ?? null;
    trace.job = current.jobId;
    if (current.interrupted) {
      if (current.jobId) cancelJob(current);
      return;
    }
    const job =
      accepted.status && TERMINAL.has(accepted.status)
        ? accepted
        : await follow(accepted, {
            signal: current.abort.signal,
            stage: (words) => {
              if (!current.line) setState("thinking", words);
            },
            sentence: (chunk) => hear(current, chunk),
            ended: (status) => trace.log.push(status),
          });
    if (job && !current.interrupted) await present(job, current);
  } catch (error) {
    if (current.interrupted) return;
    current.player?.stop();
    // A gentle error is an answer worded for the person, not a fault.
    if (!(error instanceof GentleError)) console.error(error);
    showNotice(error instanceof GentleError ? error.message : GENTLE_FAILURE);
  } finally {
    if (turn === current) {
      turn = null;
      turnOver();
    }
  }
}

/** After Rose's last sound: hands-free listens again, otherwise the page waits for a tap. */
function turnOver() {
  if (handsFreeOn()) listen();
  else setState("idle");
}

/** Cancels the turn's job; the person's line shows what Rose heard, if she heard it. */
function cancelJob(current) {
  trace.cancelled.push(current.jobId);
  cancel(current.jobId).then((job) => {
    if (job?.result?.transcript) wordsOf(current.you).textContent = job.result.transcript;
  });
}

/** The person speaks over Rose: she stops at once, the job is cancelled, the page listens. */
function interrupt() {
  const current = turn;
  if (!current) return;
  current.interrupted = true;
  turn = null;
  const was = document.body.dataset.state;
  let silenced = current.player?.stop() ?? 0;
  if (!voice.paused) {
    voice.pause();
    silenced += 1;
  }
  trace.stopped += silenced;
  trace.interrupted.push({ job: current.jobId, state: was, silenced });
  current.abort.abort();
  if (current.jobId) cancelJob(current);
  listen();
}

/** Starts (or, hands-free, carries on) recording the person. */
async function listen() {
  if (opening) return;
  opening = true;
  try {
    await mic.openStream();
  } catch {
    showNotice("Rose cannot hear you: the microphone is not available. You can write to her below instead.");
    setState("idle");
    return;
  } finally {
    opening = false;
  }
  showNotice("");
  // Hands-free, the recording already running holds the words that interrupted Rose.
  if (!mic.recording) mic.record();
  if (handsFreeOn()) mic.watch(audio, onVoice);
  setState("listening");
}

/** Ends the person's turn and sends the recording. */
async function sendRecording() {
  setState("thinking");
  const blob = await mic.take();
  // Hands-free, the microphone stays open and records on, to hear an interruption.
  if (handsFreeOn() && mic.open) mic.record();
  else mic.close();
  if (!blob || blob.size === 0) {
    showNotice("Rose did not hear anything. Tap and try again when you are ready.");
    turnOver();
    return;
  }
  run((body) => body.append("audio", blob, fileName(blob.type)), "…");
}

/** What the voice activity detector heard (hands-free). */
function onVoice(event) {
  if (!handsFreeOn()) return;
  if (event === "speech" && turn) interrupt();
  else if (event === "end" && !turn && mic.heard && document.body.dataset.state === "listening") sendRecording();
}

/** Hands-free on: listen now, or, while Rose answers, keep an ear open for an interruption. */
async function startHandsFree() {
  if (audio?.state !== "running") {
    await Promise.race([audio?.resume(), new Promise((r) => setTimeout(r, 300))]).catch(() => {});
  }
  if (audio?.state !== "running") {
    setState("idle", "Hands-free is on. Tap once to begin, and Rose will listen by herself from then on.");
    return;
  }
  if (!turn) {
    if (document.body.dataset.state === "idle" || mic.recording) await listen();
    return;
  }
  try {
    await mic.openStream();
  } catch {
    return;
  }
  if (!mic.recording) mic.record();
  mic.watch(audio, onVoice);
  if (document.body.dataset.state === "speaking") setState("speaking");
}

function stopHandsFree() {
  mic.unwatch();
  const state = document.body.dataset.state;
  // A recording in progress becomes an ordinary one, sent with a tap.
  if (state !== "listening") mic.close();
  if (state !== "thinking") setState(state);
}

function storeHandsFree(on) {
  try {
    localStorage.setItem(HANDS_FREE_KEY, on ? "on" : "off");
  } catch {
    // Storage is off for this page: the choice lasts for the visit.
  }
}

function storedHandsFree() {
  try {
    return localStorage.getItem(HANDS_FREE_KEY) === "on";
  } catch {
    return false;
  }
}

talk.addEventListener("click", () => {
  wakeAudio();
  if (turn) interrupt();
  else if (mic.recording && document.body.dataset.state === "listening") sendRecording();
  else if (document.body.dataset.state === "idle") listen();
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const words = message.value.trim();
  if (!words || turn || send.disabled) return;
  wakeAudio();
  message.value = "";
  // Hands-free, typing instead sets the recording aside; the ear stays open.
  if (mic.recording) mic.record();
  run((body) => body.append("text", words), words);
});

message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});

handsFree.addEventListener("change", () => {
  wakeAudio();
  storeHandsFree(handsFree.checked);
  if (handsFree.checked) startHandsFree();
  else stopHandsFree();
});

/** After "Forget me": a clean page and a new session under a new key. */
async function startAfresh() {
  transcript.replaceChildren();
  showNotice("");
  try {
    await startSession();
  } catch {
    sessionId = null;
    showNotice("Rose cannot be reached right now. Please try again in a little while.");
  }
}

async function init() {
  if (!(window.AudioContext ?? window.webkitAudioContext)) {
    // Without Web Audio there is no ear to listen with, and replies play whole.
    handsFree.disabled = true;
  } else {
    handsFree.checked = storedHandsFree();
    // Otherwise the audio wakes with the first tap or key press.
    if (handsFree.checked) wakeAudio();
  }
  loadResources();
  try {
    const health = await fetch("/api/health").then((r) => r.json());
    $("simulated").hidden = !health.simulated;
  } catch {
    // Health is informative only.
  }
  initRemembers({ erased: startAfresh });
  try {
    await startSession();
    setState("idle");
  } catch {
    showNotice("Rose cannot be reached right now. Please try again in a little while.");
    stateLine.textContent = "";
    return;
  }
  if (handsFree.checked) startHandsFree();
}

init();
