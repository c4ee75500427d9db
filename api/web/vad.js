// When the person speaks and when they have finished: energy-based voice
// activity detection over RMS frames of the microphone, as pure functions so
// node can test the logic without a browser (tests/browser/vad.test.mjs).
//
// The room is measured first (the mean RMS of the first ~300 ms is the noise
// floor), then followed: up slowly on frames below the threshold, so a fan
// turning on is learnt over seconds, and down quickly, so a floor measured
// while someone was already talking soon settles. Speech is energy above
// three times the floor (about +10 dB; never below an absolute minimum) for
// 200 ms: a click, a cough's first crack or the fake microphone's loop
// restart is shorter. A turn ends after 700 ms below the threshold following
// speech. The same state runs across a whole conversation: `speech` while
// Rose speaks is an interruption, `end` while the page listens sends the turn.

/** The detector's tuning; times in milliseconds, levels as RMS of samples in [-1, 1]. */
export const VAD = Object.freeze({
  /** The opening stretch whose mean RMS is the first noise floor. */
  calibrationMs: 300,
  /** A first floor louder than this (about −34 dBFS) was someone talking, not the room. */
  maxFloor: 0.02,
  /** Speech is louder than the floor times this (about +10 dB)... */
  ratio: 3,
  /** ...and never quieter than this (about −40 dBFS), so near-digital silence does not trigger. */
  minThreshold: 0.01,
  /** How slowly the floor rises toward a louder room (time constant). */
  riseMs: 3000,
  /** How quickly it falls toward a quieter one. */
  fallMs: 500,
  /** Energy above the threshold this long is speech; shorter is a click. */
  speechMs: 200,
  /** A dip this short does not break the run of energy that becomes speech. */
  gapMs: 80,
  /** Quiet this long after speech ends the turn. */
  silenceMs: 700,
});

/** The root mean square of one frame of samples. */
export function rms(samples) {
  if (samples.length === 0) return 0;
  let sum = 0;
  for (const s of samples) sum += s * s;
  return Math.sqrt(sum / samples.length);
}

/** The level speech must exceed over `floor`. */
export function threshold(floor, p = VAD) {
  return Math.max(p.minThreshold, floor * p.ratio);
}

/** The floor after one quiet frame of `level` lasting `dtMs`: slow to rise, quick to fall. */
export function followFloor(floor, level, dtMs, p = VAD) {
  const tau = level > floor ? p.riseMs : p.fallMs;
  return floor + (level - floor) * Math.min(1, dtMs / tau);
}

/** A detector that has heard nothing yet. */
export function start() {
  return { phase: "calibrating", floor: 0, calibratedMs: 0, calibrationSum: 0, runMs: 0, dipMs: 0, quietMs: 0, event: null };
}

/**
 * The detector after one frame of `level` lasting `dtMs`. `phase` is
 * `calibrating`, `quiet` (waiting for speech) or `speech`; `event` is `speech`
 * on the frame speech is recognised, `end` on the frame the turn ends after
 * it, else null.
 */
export function step(state, level, dtMs, p = VAD) {
  const s = { ...state, event: null };
  if (s.phase === "calibrating") {
    s.calibrationSum += level * dtMs;
    s.calibratedMs += dtMs;
    if (s.calibratedMs >= p.calibrationMs) {
      s.floor = Math.min(s.calibrationSum / s.calibratedMs, p.maxFloor);
      s.phase = "quiet";
    }
    return s;
  }
  const loud = level > threshold(s.floor, p);
  // Only what is not speech teaches the floor.
  if (!loud) s.floor = followFloor(s.floor, level, dtMs, p);
  if (s.phase === "quiet") {
    if (loud) {
      s.runMs += dtMs;
      s.dipMs = 0;
    } else if (s.runMs > 0) {
      s.dipMs += dtMs;
      if (s.dipMs > p.gapMs) s.runMs = 0;
    }
    if (s.runMs >= p.speechMs) {
      s.phase = "speech";
      s.quietMs = 0;
      s.event = "speech";
    }
  } else if (loud) {
    s.quietMs = 0;
  } else {
    s.quietMs += dtMs;
    if (s.quietMs >= p.silenceMs) {
      s.phase = "quiet";
      s.runMs = 0;
      s.dipMs = 0;
      s.event = "end";
    }
  }
  return s;
}

/** Whether nothing is being said, not even the start of something (safe to restart a recording). */
export function hushed(state) {
  return state.phase === "quiet" && state.runMs === 0;
}
