// Rose's safety help, kept apart from the rest of the client: a quiet
// "Need help now?" link that is always on the page, and the crisis resource
// shown prominently on a turn whose job says `safety: "crisis"`. The
// resource comes from GET /api/resources (ROSE_CRISIS_RESOURCES); until it
// answers, or if it cannot, the international default below stands in, so
// the link always leads somewhere.

/** Rose's international default (the server's, for when it cannot be asked). */
const FALLBACK = {
  text:
    "You don't have to carry this alone. If you are thinking of ending your life or hurting yourself, " +
    "please reach out now to a crisis line, or to your local emergency number if you are in danger. " +
    "You can find a free, confidential line in your country at findahelpline.com.",
  url: "https://findahelpline.com",
};

let crisis = FALLBACK;

/** Only web pages and phone numbers: a resource never runs script. */
function safeUrl(url) {
  return typeof url === "string" && /^(https?:\/\/|tel:)/i.test(url) ? url : null;
}

/** What the resource's link says: the number to call, or the site's name. */
function linkLabel(url) {
  if (/^tel:/i.test(url)) return `Call ${url.slice(4)}`;
  try {
    return new URL(url).host.replace(/^www\./, "");
  } catch {
    return url;
  }
}

function pointLink(link, resource) {
  link.href = resource.url;
  if (!/^tel:/i.test(resource.url)) {
    link.target = "_blank";
    link.rel = "noopener noreferrer";
  }
}

/** Points the "Need help now?" link at the configured resource. */
export async function loadResources() {
  try {
    const response = await fetch("/api/resources");
    if (response.ok) {
      const body = await response.json();
      if (safeUrl(body?.crisis?.url) && body.crisis.text) crisis = body.crisis;
    }
  } catch {
    // The default stands in.
  }
  const link = document.getElementById("help-now");
  if (link) {
    pointLink(link, crisis);
    link.title = crisis.text;
  }
}

/**
 * On a turn marked `safety: "crisis"` (succeeded or not), shows the resource
 * prominently, above the conversation; it stays for the rest of the visit.
 */
export function showSafety(job) {
  if (job?.safety !== "crisis") return;
  const given = job.result?.resource;
  const resource = given && safeUrl(given.url) && given.text ? given : crisis;
  const panel = document.getElementById("crisis-help");
  document.getElementById("crisis-help-text").textContent = resource.text;
  const link = document.getElementById("crisis-help-link");
  pointLink(link, resource);
  link.textContent = linkLabel(resource.url);
  link.setAttribute(
    "aria-label",
    `${linkLabel(resource.url)}: reach someone now${/^tel:/i.test(resource.url) ? "" : " (opens in a new tab)"}`,
  );
  panel.hidden = false;
  panel.scrollIntoView({ block: "nearest" });
}
