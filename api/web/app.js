// Rose's web client: tap to speak, tap to send (or type), follow the job by
// Server-Sent Events with long-polling as the fallback, play Rose's answer.
// Plain JavaScript against the public HTTP API; no build step. Each page
// load is a visit: a new session for this person (identity.js keeps who
// they are), greeted gently when they have been here before.

import { dropPersonKey, initRemembers, personKey, refreshRemembers } from "/identity.js";
import { loadResources, showSafety } from "/safety.js";

const $ = (id) => document.getElementById(id);
const talk = $("talk");
const talkLabel = $("talk-label");
const stateLine = $("state");
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
const STAGE_WORDS = {
  queued: "Rose is listening closely…",
  stt: "Rose is listening closely…",
  memory: "Rose is gathering her thoughts…",
  llm: "Rose is thinking…",
  tts: "Rose is finding her voice…",
};
const TERMINAL = new Set(["succeeded", "failed"]);
const WELCOME_BACK = "Welcome back. I'm glad you're here again.";

let sessionId = null;
let recorder = null;
let chunks = [];
let busy = false;

/** The page's state: idle, listening, thinking or speaking. */
function setState(state, words) {
  document.body.dataset.state = state;
  talk.dataset.state = state;
  const labels = {
    idle: "Tap to speak",
    listening: "Tap to send",
    thinking: "Thinking…",
    speaking: "Speaking…",
  };
  talkLabel.textContent = labels[state];
  talk.setAttribute("aria-label", state === "listening" ? "Stop and send your words to Rose" : "Start speaking to Rose");
  talk.disabled = state === "thinking" || state === "speaking";
  send.disabled = state !== "idle";
  stateLine.textContent = words ?? {
    idle: "When you are ready, tap and speak. Take all the time you need.",
    listening: "Listening… tap again when you have finished.",
    thinking: "Rose is thinking…",
    speaking: "Rose is speaking.",
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
  li.append(name, document.createTextNode(text));
  if (note) {
    const small = document.createElement("span");
    small.className = "note";
    small.textContent = note;
    li.append(small);
  }
  transcript.append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
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

/** Follows the job to its end: SSE first, long-polling if the stream fails. */
function follow(accepted) {
  return new Promise((resolve) => {
    if (!("EventSource" in window)) {
      poll(accepted.status_url).then(resolve);
      return;
    }
    const source = new EventSource(accepted.events_url);
    let finished = false;
    const onEvent = (event) => {
      let job;
      try {
        job = JSON.parse(event.data);
      } catch {
        return;
      }
      if (TERMINAL.has(job.status)) {
        finished = true;
        source.close();
        resolve(job);
      } else {
        setState("thinking", STAGE_WORDS[event.type] ?? STAGE_WORDS[job.stage] ?? undefined);
      }
    };
    for (const name of ["queued", "stt", "memory", "llm", "tts", "succeeded", "failed"]) {
      source.addEventListener(name, onEvent);
    }
    source.onerror = () => {
      if (finished) return;
      source.close();
      poll(accepted.status_url).then(resolve);
    };
  });
}

async function poll(statusUrl) {
  for (;;) {
    try {
      const response = await fetch(`${statusUrl}?wait=20`);
      if (response.ok) {
        const job = await response.json();
        if (TERMINAL.has(job.status)) return job;
        setState("thinking", STAGE_WORDS[job.stage] ?? undefined);
      } else if (response.status === 404) {
        return { status: "failed", error: { code: "job_not_found" } };
      }
    } catch {
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

/** Shows and plays the finished job. */
async function present(job) {
  showSafety(job);
  const result = job.result ?? {};
  if (job.status !== "succeeded") {
    showNotice(job.error?.code === "invalid_audio" ? NOTHING_HEARD : GENTLE_FAILURE);
    setState("idle");
    return;
  }
  const youLine = pendingYou;
  if (youLine && result.transcript) youLine.lastChild.textContent = result.transcript;
  pendingYou = null;
  refreshRemembers();
  const noVoice = !result.audio_url;
  addLine("rose", result.text ?? "", noVoice ? "Rose's voice could not be reached this time, so here are her words." : null);
  if (noVoice) {
    setState("idle");
    return;
  }
  voice.src = result.audio_url;
  setState("speaking");
  try {
    await voice.play();
  } catch {
    // Autoplay refused or the audio failed: the words are on the page.
    setState("idle");
  }
}

let pendingYou = null;

async function run(fill, yourWords) {
  busy = true;
  showNotice("");
  setState("thinking");
  pendingYou = addLine("you", yourWords);
  try {
    const accepted = await submit(fill);
    const job = accepted.status && TERMINAL.has(accepted.status) ? accepted : await follow(accepted);
    await present(job);
  } catch (error) {
    // A gentle error is an answer worded for the person, not a fault.
    if (!(error instanceof GentleError)) console.error(error);
    showNotice(error instanceof GentleError ? error.message : GENTLE_FAILURE);
    setState("idle");
  } finally {
    busy = false;
  }
}

function pickMime() {
  const options = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4", "audio/webm"];
  return options.find((t) => window.MediaRecorder?.isTypeSupported?.(t)) ?? "";
}

async function startListening() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch {
    showNotice("Rose cannot hear you: the microphone is not available. You can write to her below instead.");
    return;
  }
  showNotice("");
  const mimeType = pickMime();
  recorder = new MediaRecorder(stream, mimeType ? { mimeType } : undefined);
  chunks = [];
  recorder.ondataavailable = (event) => {
    if (event.data.size > 0) chunks.push(event.data);
  };
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    const type = recorder.mimeType || "audio/webm";
    const blob = new Blob(chunks, { type });
    recorder = null;
    if (blob.size === 0) {
      showNotice("Rose did not hear anything. Tap and try again when you are ready.");
      setState("idle");
      return;
    }
    const extension = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    run((body) => body.append("audio", blob, `speech.${extension}`), "…");
  };
  recorder.start();
  setState("listening");
}

talk.addEventListener("click", () => {
  if (recorder && recorder.state === "recording") {
    recorder.stop();
    setState("thinking");
  } else if (!busy) {
    startListening();
  }
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const words = message.value.trim();
  if (!words || busy) return;
  message.value = "";
  run((body) => body.append("text", words), words);
});

message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});

voice.addEventListener("ended", () => setState("idle"));
voice.addEventListener("error", () => {
  if (document.body.dataset.state === "speaking") setState("idle");
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
  }
}

init();
