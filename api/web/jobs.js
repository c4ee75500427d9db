// Following one job to its end: Server-Sent Events first, each spoken
// sentence handed over as it comes (`audio` events), long-polling
// (`?wait=20`) when there is no EventSource or the stream fails; and
// cancelling a job when the person interrupts Rose.

/** What the page says while the job is at each stage. */
export const STAGE_WORDS = {
  queued: "Rose is listening closely…",
  stt: "Rose is listening closely…",
  memory: "Rose is gathering her thoughts…",
  llm: "Rose is thinking…",
  tts: "Rose is finding her voice…",
};
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return null;
  }
}

/**
 * Follows the accepted job to its end and resolves with the final job, or
 * null once `hooks.signal` aborts. `hooks.stage(words)` as it moves through
 * its stages, `hooks.sentence({index, text, audio_url})` for each sentence
 * as it is spoken (by the stream only: after polling took over, the final
 * job's `result.chunks` holds the rest), `hooks.ended(status)` at its end.
 */
export function follow(accepted, hooks) {
  return new Promise((resolve) => {
    const { signal } = hooks;
    const fallBack = () => poll(accepted.status_url, hooks).then(resolve);
    if (!("EventSource" in window)) {
      fallBack();
      return;
    }
    const source = new EventSource(accepted.events_url);
    signal.addEventListener("abort", () => {
      source.close();
      resolve(null);
    });
    let finished = false;
    const onState = (event) => {
      const job = parse(event.data);
      if (!job || signal.aborted) return;
      if (TERMINAL.has(job.status)) {
        finished = true;
        source.close();
        hooks.ended(job.status);
        resolve(job);
      } else {
        hooks.stage(STAGE_WORDS[event.type] ?? STAGE_WORDS[job.stage]);
      }
    };
    for (const name of [...Object.keys(STAGE_WORDS), ...TERMINAL]) source.addEventListener(name, onState);
    source.addEventListener("audio", (event) => {
      const chunk = parse(event.data);
      if (chunk && !signal.aborted) hooks.sentence(chunk);
    });
    source.onerror = () => {
      if (finished || signal.aborted) return;
      source.close();
      fallBack();
    };
  });
}

async function poll(statusUrl, hooks) {
  const { signal } = hooks;
  while (!signal.aborted) {
    try {
      const response = await fetch(`${statusUrl}?wait=20`, { signal });
      if (response.ok) {
        const job = await response.json();
        if (TERMINAL.has(job.status)) {
          hooks.ended(job.status);
          return job;
        }
        hooks.stage(STAGE_WORDS[job.stage]);
      } else if (response.status === 404) {
        return { status: "failed", error: { code: "job_not_found" } };
      }
    } catch {
      if (!signal.aborted) await new Promise((r) => setTimeout(r, 1000));
    }
  }
  return null;
}

/**
 * Asks the server to stop the job; one that had already ended (409) needs
 * nothing. Resolves with the job as it stands (null when it cannot be had),
 * so the page can still show what Rose heard.
 */
export async function cancel(jobId) {
  const url = `/api/jobs/${encodeURIComponent(jobId)}`;
  try {
    const response = await fetch(`${url}/cancel`, { method: "POST" });
    if (response.ok) return await response.json();
    if (response.status === 409) return await fetch(url).then((r) => (r.ok ? r.json() : null));
  } catch {
    // The job runs on; its reply is no longer shown or played.
  }
  return null;
}
