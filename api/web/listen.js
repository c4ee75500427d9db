// The microphone: one stream, opened when the person taps (and closed after
// their turn) or, hands-free, kept open across turns; the recording of a
// turn; and, hands-free, a watcher that feeds the microphone's level to the
// voice activity detector (vad.js) every 20 ms.
//
// The stream always asks for echo cancellation, so Rose's voice from the
// speakers is not taken for the person's while she speaks. Hands-free, a
// recording runs all the time and is started afresh every few seconds while
// nothing is said: when the person starts speaking, the recording already
// holds the first syllable the detector needed 200 ms to be sure of.

import { hushed, rms, start, step } from "/vad.js";

/** What the microphone is asked for. */
export const CONSTRAINTS = Object.freeze({
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
});

/** How often the level is read. */
const FRAME_MS = 20;
/** A recording that has heard nothing for this long is started afresh, so uploads stay small. */
const FRESH_MS = 5000;

function pickMime() {
  const options = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4", "audio/webm"];
  return options.find((t) => window.MediaRecorder?.isTypeSupported?.(t)) ?? "";
}

/** The file name an upload of `type` gets. */
export function fileName(type) {
  const extension = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
  return `speech.${extension}`;
}

export class Microphone {
  constructor() {
    this.stream = null;
    this.recorder = null;
    this.parts = [];
    this.recordedAt = 0;
    /** Whether the running recording holds speech the detector recognised. */
    this.heard = false;
    this.stopWatching = null;
  }

  get open() {
    return this.stream?.active === true;
  }

  get recording() {
    return this.recorder?.state === "recording";
  }

  get watching() {
    return this.stopWatching !== null;
  }

  /**
   * Opens the stream (once).
   *
   * # Errors
   * When the person or the browser refuses the microphone.
   */
  async openStream() {
    if (!this.open) this.stream = await navigator.mediaDevices.getUserMedia(CONSTRAINTS);
    return this.stream;
  }

  /** Stops watching and recording and releases the microphone. */
  close() {
    this.unwatch();
    this.drop();
    this.stream?.getTracks().forEach((track) => track.stop());
    this.stream = null;
  }

  /** Starts a new recording, dropping any running one. */
  record() {
    this.drop();
    const mimeType = pickMime();
    const recorder = new MediaRecorder(this.stream, mimeType ? { mimeType } : undefined);
    const parts = [];
    recorder.ondataavailable = (event) => {
      if (event.data.size > 0) parts.push(event.data);
    };
    this.recorder = recorder;
    this.parts = parts;
    this.recordedAt = performance.now();
    this.heard = false;
    recorder.start();
  }

  /** Ends the recording and hands it over (null when none was running). */
  take() {
    const recorder = this.recorder;
    const parts = this.parts;
    this.recorder = null;
    if (!recorder || recorder.state === "inactive") return Promise.resolve(null);
    return new Promise((resolve) => {
      recorder.onstop = () => resolve(new Blob(parts, { type: recorder.mimeType || "audio/webm" }));
      recorder.stop();
    });
  }

  /** Ends the recording and forgets it. */
  drop() {
    const recorder = this.recorder;
    this.recorder = null;
    if (recorder && recorder.state !== "inactive") {
      recorder.ondataavailable = null;
      recorder.stop();
    }
  }

  /** Reads the level on `context` and calls `onEvent("speech" | "end")` as vad.js decides. */
  watch(context, onEvent) {
    if (this.watching || !this.open) return;
    const source = context.createMediaStreamSource(this.stream);
    const analyser = context.createAnalyser();
    analyser.fftSize = 1024;
    source.connect(analyser);
    const frame = new Float32Array(analyser.fftSize);
    let vad = start();
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      // A throttled timer must not make one frame look like a long silence.
      const dt = Math.min(now - last, 100);
      last = now;
      analyser.getFloatTimeDomainData(frame);
      vad = step(vad, rms(frame), dt);
      if (vad.event === "speech") this.heard = true;
      if (this.recording && !this.heard && hushed(vad) && now - this.recordedAt > FRESH_MS) this.record();
      if (vad.event) onEvent(vad.event);
    }, FRAME_MS);
    this.stopWatching = () => {
      clearInterval(timer);
      source.disconnect();
    };
  }

  unwatch() {
    this.stopWatching?.();
    this.stopWatching = null;
  }
}
