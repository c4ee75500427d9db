// The hands-free voice activity detector (api/web/vad.js) on synthetic RMS
// sequences, 20 ms frames as the page reads them: the room measured and
// followed, speech told from clicks, a turn ended by silence and not by a
// pause between words.
//
//   node --test tests/browser/vad.test.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { VAD, followFloor, hushed, rms, start, step, threshold } from "../../api/web/vad.js";

const FRAME = 20;

/** Runs `segments` ([level, ms] pairs) through a fresh detector; returns the events with their times and the state. */
function listen(segments, state = start()) {
  const events = [];
  let t = 0;
  for (const [level, ms] of segments) {
    for (let elapsed = 0; elapsed < ms; elapsed += FRAME) {
      t += FRAME;
      state = step(state, level, FRAME);
      if (state.event) events.push({ event: state.event, at: t });
    }
  }
  return { events, state };
}

const ROOM = 0.003;
const VOICE = 0.12;

test("rms of a sine is its amplitude over the square root of two", () => {
  const sine = Float32Array.from({ length: 4800 }, (_, i) => 0.5 * Math.sin((2 * Math.PI * 440 * i) / 48000));
  assert.ok(Math.abs(rms(sine) - 0.5 / Math.SQRT2) < 1e-3, String(rms(sine)));
  assert.equal(rms(new Float32Array(0)), 0);
});

test("the first 300 ms are the room's noise floor, and nothing is detected in them", () => {
  const { events, state } = listen([[ROOM, 300]]);
  assert.deepEqual(events, []);
  assert.equal(state.phase, "quiet");
  assert.ok(Math.abs(state.floor - ROOM) < 1e-9);
  assert.equal(threshold(state.floor), VAD.minThreshold, "a quiet room is held to the absolute minimum");
  assert.equal(threshold(0.02), 0.06, "a louder room raises the bar three times over");
});

test("speech is recognised after 200 ms above the threshold, and the turn ends 700 ms after it", () => {
  const { events } = listen([
    [ROOM, 500],
    [VOICE, 1500],
    [ROOM, 2000],
  ]);
  assert.deepEqual(
    events.map((e) => e.event),
    ["speech", "end"],
  );
  const [speech, end] = events;
  assert.equal(speech.at, 500 + VAD.speechMs, "speech after 200 ms of energy");
  assert.equal(end.at, 2000 + VAD.silenceMs, "the end after 700 ms of quiet");
});

test("a click, a cough's crack or the loop restarting a recording is not speech", () => {
  const { events, state } = listen([
    [ROOM, 400],
    [0.6, 40],
    [ROOM, 500],
    [0.3, 120],
    [ROOM, 500],
    [0.9, 20],
    [0, 300],
  ]);
  assert.deepEqual(events, []);
  assert.equal(state.phase, "quiet");
  assert.ok(hushed(state));
});

test("pauses between words do not end the turn; brief dips do not break the start of speech", () => {
  const words = [];
  for (let i = 0; i < 5; i += 1) words.push([VOICE, 400], [ROOM, 400]);
  const { events } = listen([[ROOM, 300], [VOICE, 120], [ROOM, 40], [VOICE, 100], ...words, [ROOM, 1000]]);
  assert.deepEqual(
    events.map((e) => e.event),
    ["speech", "end"],
  );
  assert.equal(events[0].at, 300 + 120 + 40 + 80, "the run went on across the 40 ms dip");
});

test("a room growing louder over seconds is followed, not taken for speech", () => {
  const ramp = [];
  for (let level = ROOM; level < 0.03; level *= 1.1) ramp.push([level, 400]);
  const { events, state } = listen([[ROOM, 300], ...ramp, [0.03, 3000]]);
  assert.deepEqual(events, [], "the floor rose with the room");
  assert.ok(state.floor > 0.02, `the floor followed: ${state.floor}`);
  // In the louder room, speech at the old level is now too quiet; louder speech counts.
  assert.deepEqual(listen([[0.05, 1000]], state).events, []);
  assert.deepEqual(
    listen([[0.25, 1000], [0.03, 1000]], state).events.map((e) => e.event),
    ["speech", "end"],
  );
});

test("a floor measured while someone was talking settles in their first pause", () => {
  const { events, state } = listen([
    [VOICE, 300],
    [ROOM, 800],
    [VOICE, 600],
    [ROOM, 1000],
  ]);
  assert.ok(state.floor < 0.01, `the floor fell back to the room: ${state.floor}`);
  assert.deepEqual(
    events.map((e) => e.event),
    ["speech", "end"],
  );
});

test("the floor rises slowly and falls quickly", () => {
  const up = followFloor(0.01, 0.02, FRAME);
  const down = followFloor(0.01, 0.0, FRAME);
  assert.ok(up > 0.01 && up - 0.01 < 0.0001, `rise ${up}`);
  assert.ok(down < 0.01 && 0.01 - down > 0.0003, `fall ${down}`);
  assert.equal(followFloor(0.01, 0.5, 10_000), 0.5, "never past the level");
});

test("speech while Rose speaks is told at 200 ms, the moment an interruption is due", () => {
  const { events } = listen([
    [ROOM, 5000],
    [VOICE, 180],
  ]);
  assert.deepEqual(events, [], "not before 200 ms");
  const { events: later } = listen([
    [ROOM, 5000],
    [VOICE, 220],
  ]);
  assert.deepEqual(later, [{ event: "speech", at: 5200 }]);
});

test("after one turn ends the detector is ready for the next", () => {
  const { events } = listen([
    [ROOM, 300],
    [VOICE, 800],
    [ROOM, 900],
    [VOICE, 800],
    [ROOM, 900],
  ]);
  assert.deepEqual(
    events.map((e) => e.event),
    ["speech", "end", "speech", "end"],
  );
});
