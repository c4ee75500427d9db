// Who the person is to Rose, and what she keeps of them. A person is known
// by a key this browser makes once (32 random bytes, base64url) and keeps in
// localStorage; every session starts with it, so Rose knows a returning
// person. "What Rose remembers" lists what she has kept of them, each line
// with a way to forget it; "Forget me" erases everything and the key with it.
// All requests carry the key in `X-Person-Key`; memory text is only ever
// written as text, never as markup.

const KEY_NAME = "rose.person_key";
const KEY_SHAPE = /^[A-Za-z0-9_-]{43}$/;
const PAGE_SIZE = 50;

/** The key for this visit when the browser keeps no storage for the page. */
let transientKey = null;

function stored() {
  try {
    return localStorage.getItem(KEY_NAME);
  } catch {
    return transientKey;
  }
}

function store(key) {
  transientKey = key;
  try {
    if (key === null) localStorage.removeItem(KEY_NAME);
    else localStorage.setItem(KEY_NAME, key);
  } catch {
    // Storage is off for this page: the key lasts for the visit only.
  }
}

/** 32 random bytes as base64url without padding (43 characters). */
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** This person's key, made and kept on first use (or when the kept one is damaged). */
export function personKey() {
  const key = stored();
  if (key && KEY_SHAPE.test(key)) return key;
  const fresh = newKey();
  store(fresh);
  return fresh;
}

/** Drops the kept key; the next `personKey()` makes a new one. */
export function dropPersonKey() {
  store(null);
}

function withKey(init = {}) {
  return { ...init, headers: { ...init.headers, "X-Person-Key": personKey() } };
}

const $ = (id) => document.getElementById(id);

/** The panel's parts, looked up once by `initRemembers`. */
let ui = null;
let onErased = async () => {};

function say(words) {
  ui.status.textContent = words;
}

function itemLine(item) {
  const li = document.createElement("li");
  li.className = "remembered";
  li.dataset.id = item.id;
  const text = document.createElement("span");
  text.className = "remembered-text";
  text.textContent = item.text;
  const forget = document.createElement("button");
  forget.type = "button";
  forget.className = "quiet-button";
  forget.textContent = "Forget";
  forget.setAttribute("aria-label", `Forget: ${item.text}`);
  forget.addEventListener("click", () => forgetOne(item.id, forget));
  li.append(text, forget);
  return li;
}

/** Which load is the latest: an older answer arriving late is not shown. */
let loads = 0;

/** Shows the first page of what Rose keeps, or the next one after `cursor`. */
async function load(cursor) {
  loads += 1;
  const mine = loads;
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (cursor) query.set("cursor", cursor);
  let body;
  try {
    const response = await fetch(`/api/me/memories?${query}`, withKey());
    if (!response.ok) throw new Error(`memories answered ${response.status}`);
    body = await response.json();
  } catch {
    if (mine === loads) say("Rose could not look at her memories just now. Please try again in a moment.");
    return;
  }
  if (mine !== loads) return;
  const items = Array.isArray(body?.items) ? body.items : [];
  if (!cursor) ui.list.replaceChildren();
  ui.list.append(...items.map(itemLine));
  ui.more.hidden = !body?.next_cursor;
  ui.more.dataset.cursor = body?.next_cursor ?? "";
  ui.empty.hidden = ui.list.children.length > 0;
  ui.list.hidden = ui.list.children.length === 0;
}

async function forgetOne(id, button) {
  button.disabled = true;
  let response;
  try {
    response = await fetch(`/api/me/memories/${encodeURIComponent(id)}`, withKey({ method: "DELETE" }));
  } catch {
    response = null;
  }
  // 404: it was already gone, which is what the person asked for.
  if (response && (response.status === 204 || response.status === 404)) {
    await load();
    say("Rose has let that go.");
  } else {
    button.disabled = false;
    say("Rose could not forget that just now. Please try again in a moment.");
  }
}

function setOpen(open) {
  ui.toggle.setAttribute("aria-expanded", String(open));
  ui.panel.hidden = !open;
  if (open) {
    say("");
    load();
  } else {
    askToForgetMe(false);
  }
}

function askToForgetMe(asking) {
  ui.confirm.hidden = !asking;
  ui.forgetMe.hidden = asking;
  if (asking) ui.confirmYes.focus();
}

async function forgetMe() {
  ui.confirmYes.disabled = true;
  let response;
  try {
    response = await fetch("/api/me", withKey({ method: "DELETE" }));
  } catch {
    response = null;
  }
  ui.confirmYes.disabled = false;
  if (!response || response.status !== 204) {
    say("Rose could not forget you just now. Nothing was erased. Please try again in a moment.");
    return;
  }
  dropPersonKey();
  askToForgetMe(false);
  ui.list.replaceChildren();
  ui.list.hidden = true;
  ui.more.hidden = true;
  ui.empty.hidden = false;
  await onErased();
  say("Rose has forgotten everything you shared. If you come back, she will meet you fresh.");
  ui.forgetMe.focus();
}

/** Refreshes the list if the person has it open (after a turn, say). */
export function refreshRemembers() {
  if (ui && !ui.panel.hidden) load();
}

/**
 * Wires the "What Rose remembers" panel and "Forget me"; `erased` runs after
 * everything was erased and the key dropped (the page starts afresh there).
 */
export function initRemembers({ erased }) {
  onErased = erased;
  ui = {
    toggle: $("remembers-toggle"),
    panel: $("remembers"),
    status: $("remembers-status"),
    list: $("remembers-list"),
    empty: $("remembers-empty"),
    more: $("remembers-more"),
    forgetMe: $("forget-me"),
    confirm: $("forget-me-confirm"),
    confirmYes: $("forget-me-yes"),
    confirmNo: $("forget-me-no"),
  };
  ui.toggle.addEventListener("click", () => setOpen(ui.panel.hidden));
  ui.more.addEventListener("click", () => load(ui.more.dataset.cursor));
  ui.forgetMe.addEventListener("click", () => askToForgetMe(true));
  ui.confirmNo.addEventListener("click", () => {
    askToForgetMe(false);
    ui.forgetMe.focus();
  });
  ui.confirmYes.addEventListener("click", forgetMe);
}
