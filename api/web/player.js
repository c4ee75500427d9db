// Rose's reply played sentence by sentence as the sentences arrive, without
// gaps between them.
//
// Web Audio rather than MediaSource: each sentence is a complete MP3 file of
// its own, so decodeAudioData turns it into samples and
// AudioBufferSourceNode.start(at) puts it on the audio clock to begin at the
// very sample the previous one ends. No media element buffers between
// sentences, no timer decides when the next starts, and it works wherever Web
// Audio does (MediaSource would need the files appended as one MPEG stream
// with its timestamps kept right, and is missing from older iPhones). Fetches
// and decodes run side by side as sentences arrive; scheduling keeps their
// index order. What remains between two sentences is each file's own MP3
// padding (tens of milliseconds of encoder silence), where a pause belongs.

/** How far ahead of now the first sentence is scheduled, so its start is not clipped. */
const LEAD_S = 0.05;

/** Plays one reply's sentences in order on `context`. */
export class ChunkPlayer {
  /**
   * @param {AudioContext} context
   * @param {{onStart?: (index: number) => void}} hooks `onStart` when a sentence begins to sound
   */
  constructor(context, hooks = {}) {
    this.context = context;
    this.onStart = hooks.onStart ?? (() => {});
    this.sources = new Set();
    this.timers = new Set();
    this.endsAt = 0;
    this.queue = Promise.resolve();
    this.finished = false;
    this.stopped = false;
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  /** Whether a sentence is sounding or scheduled. */
  get playing() {
    return this.sources.size > 0;
  }

  /** Adds sentence `index` (given in index order); a null `url` is a sentence without voice, skipped. */
  add(index, url) {
    if (this.stopped) return;
    const decoded = url ? this.decode(url) : Promise.resolve(null);
    this.queue = this.queue.then(async () => {
      const buffer = await decoded;
      if (buffer && !this.stopped) this.schedule(index, buffer);
    });
  }

  /** No more sentences will come; `done` resolves once the last has played. */
  finish() {
    this.finished = true;
    this.queue.then(() => this.settle());
  }

  /** Silences the reply at once, and says how many sentences were sounding or scheduled; `done` resolves. */
  stop() {
    const silenced = this.sources.size;
    this.stopped = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    for (const source of this.sources) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        // Already ended.
      }
    }
    this.sources.clear();
    this.resolveDone();
    return silenced;
  }

  async decode(url) {
    try {
      const response = await fetch(url);
      if (!response.ok) return null;
      return await this.context.decodeAudioData(await response.arrayBuffer());
    } catch {
      // A sentence that cannot be fetched or decoded is skipped; its words are on the page.
      return null;
    }
  }

  schedule(index, buffer) {
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const at = Math.max(this.context.currentTime + LEAD_S, this.endsAt);
    this.endsAt = at + buffer.duration;
    source.onended = () => {
      this.sources.delete(source);
      this.settle();
    };
    this.sources.add(source);
    source.start(at);
    const timer = setTimeout(
      () => {
        this.timers.delete(timer);
        this.onStart(index);
      },
      Math.max(0, (at - this.context.currentTime) * 1000),
    );
    this.timers.add(timer);
  }

  /** Resolves `done` once no more sentences will come, none is pending and none is sounding. */
  settle() {
    if (!this.finished) return;
    this.queue.then(() => {
      if (this.sources.size === 0) this.resolveDone();
    });
  }
}
