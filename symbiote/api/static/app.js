// The phone page: pair once, then review and sign approvals.
//
// Trust rule: the page never signs what the server merely claims. For every pending approval
// it decodes the proposal's canonical wire bytes, checks they re-encode to the same bytes,
// recomputes the digest (SHA-256 of the signing input) with WebCrypto, and shows and signs
// only that. If the server's digest or description differ, it refuses and says so.

import {
  decode, digest, equalBytes, fromBase64, fromWire, kidOf, signingInput, toBase64, toDisplay, toHex, toWire, uuidv7,
} from "./canon.js";

const $ = (id) => document.getElementById(id);
const DB_NAME = "symbiote";
const STORE = "device";
const PAIR_DOMAIN = new TextEncoder().encode("symbiote/pair/v1\u0000");
const SESSION_DOMAIN = new TextEncoder().encode("symbiote/session/v1\u0000");

const state = {
  device: null, // {privateKey, publicKey, kid, principal}
  checks: new Map(), // command_id -> Promise<{ok, reason, proposal, digest}>
  answered: new Map(), // command_id -> text shown after answering
  pending: [],
  source: null,
  retry: null, // the timer of the next attempt to open a session and reconnect
  backoff: 1000, // how long the next attempt waits
  heard: null, // the last transcript: {text, audio_ms, model, language}
  recorder: null, // the MediaRecorder while recording
};

// -- IndexedDB: the device key (a non-extractable CryptoKey) --------------------------------
function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function dbGet(key) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    const req = db.transaction(STORE, "readonly").objectStore(STORE).get(key);
    req.onsuccess = () => resolve(req.result || null);
    req.onerror = () => reject(req.error);
  });
}

async function dbPut(key, value) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).put(value, key);
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}

async function dbDelete(key) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).delete(key);
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}

// -- helpers --------------------------------------------------------------------------------
function fatal(text) {
  const box = $("fatal");
  box.textContent = text;
  box.hidden = false;
}

function hashParams() {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

function normalizeCode(code) {
  return code.replace(/[\s-]/g, "").toUpperCase().replace(/O/g, "0").replace(/[IL]/g, "1");
}

function formatFingerprint(hex) {
  return hex.replace(/[^0-9a-fA-F]/g, "").toUpperCase().match(/.{1,2}/g)?.join(":") || "";
}

async function api(path, options = {}) {
  const init = { ...options, headers: { "content-type": "application/json", ...(options.headers || {}) } };
  const resp = await fetch(path, init);
  let data = null;
  try {
    data = await resp.json();
  } catch (e) {
    data = null;
  }
  if (!resp.ok) {
    const reason = data && (data.detail || data.error) ? `${data.error || resp.status}: ${data.detail}` : `HTTP ${resp.status}`;
    const err = new Error(reason);
    err.status = resp.status;
    err.reason = data && data.error;
    throw err;
  }
  return data;
}

function joined(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Open a read session: sign the server's one-time challenge with this phone's key. The
 * session is an HttpOnly cookie; the log is not readable without one. */
async function openSession() {
  const { nonce } = await api("/api/session/challenge");
  const enc = new TextEncoder();
  const message = joined(SESSION_DOMAIN, enc.encode(nonce), new Uint8Array([0]), enc.encode(state.device.kid));
  const sig = await sign(message);
  return api("/api/session", {
    method: "POST",
    body: JSON.stringify({ kid: state.device.kid, nonce, sig: toBase64(sig) }),
  });
}

async function sign(bytes) {
  return new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, state.device.privateKey, bytes));
}

/** Build, sign and encode an event the way symbiote's Python side does. */
async function signedEvent(type, body, { corr = null, cause = null } = {}) {
  const at = Date.now();
  const ev = { v: 1, id: uuidv7(at), type, at, actor: state.device.principal, corr, cause, body, sigs: [] };
  const sig = await sign(signingInput(ev));
  ev.sigs = [{ kid: state.device.kid, sig }];
  return { ev, wire: toWire(ev) };
}

// -- pairing --------------------------------------------------------------------------------
function formatCode(code) {
  const c = normalizeCode(code);
  return c.length === 10 ? `${c.slice(0, 5)}-${c.slice(5)}` : code;
}

async function showPairing(code, fp, who) {
  $("pair-view").hidden = false;
  $("main-view").hidden = true;
  setConn("", "not paired");
  if (code) $("pair-code").value = formatCode(code);
  if (who) $("pair-who").textContent = who;
  if (fp) {
    $("pair-fp").textContent = formatFingerprint(fp);
    $("pair-fp-box").hidden = false;
  }
  if (state.device) {
    $("pair-status").textContent = `This phone is already paired as ${state.device.principal}; pairing again makes a new key.`;
  }
  $("pair-button").onclick = () => pair().catch((e) => {
    $("pair-status").textContent = "Pairing failed: " + e.message;
    $("pair-button").disabled = false;
  });
}

async function pair() {
  const code = normalizeCode($("pair-code").value);
  if (code.length !== 10) throw new Error("the code has 10 letters and digits");
  $("pair-button").disabled = true;
  $("pair-status").textContent = "Making a key on this phone…";
  const keys = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", keys.publicKey));
  const kid = kidOf(raw);
  const enc = new TextEncoder();
  const message = joined(PAIR_DOMAIN, enc.encode(code), new Uint8Array([0]), enc.encode(kid));
  const proof = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, keys.privateKey, message));
  $("pair-status").textContent = "Registering the key…";
  const result = await api("/api/pair", {
    method: "POST",
    body: JSON.stringify({ code, kid, proof: toBase64(proof) }),
  });
  state.device = { privateKey: keys.privateKey, publicKey: keys.publicKey, kid, principal: result.principal };
  await dbPut("self", { ...state.device, pairedAt: Date.now() });
  history.replaceState(null, "", location.pathname);
  $("pair-status").textContent = `Paired as ${result.principal}.`;
  showMain();
}

// -- the approvals view -------------------------------------------------------------------
function showMain() {
  $("pair-view").hidden = true;
  $("main-view").hidden = false;
  $("me-principal").textContent = state.device.principal;
  $("me-kid").textContent = state.device.kid.slice(0, 16) + "…";
  document.body.dataset.paired = state.device.principal;
  checkKey();
  goLive();
  if ("Notification" in window && Notification.permission === "default") {
    $("notify-button").hidden = false;
    $("notify-button").onclick = async () => {
      await Notification.requestPermission();
      $("notify-button").hidden = true;
    };
  }
  $("forget-button").onclick = async () => {
    if (!confirm("Forget this phone's key? You will need to pair again.")) return;
    await api("/api/session", { method: "DELETE" }).catch(() => {});
    await dbDelete("self");
    location.reload();
  };
  $("speak-button").onclick = () => speak().catch((err) => {
    $("ask-status").textContent = "Cannot record: " + err.message;
  });
  $("ask-form").onsubmit = (e) => {
    e.preventDefault();
    ask().catch((err) => { $("ask-status").textContent = "Not sent: " + err.message; });
  };
}

async function checkKey() {
  try {
    const info = await api("/api/keys?kid=" + encodeURIComponent(state.device.kid));
    if (!info.active || info.principal !== state.device.principal) {
      keyProblem("This phone's key has been revoked. Forget it and pair again.");
    }
  } catch (e) {
    if (e.status === 404) keyProblem("The computer does not know this phone's key (was it reset?). Forget it and pair again.");
  }
}

function keyProblem(text) {
  const box = $("key-problem");
  box.textContent = text;
  box.hidden = false;
}

async function ask() {
  const text = $("ask-text").value.trim();
  if (!text) return;
  // what was heard, unchanged, is signed as a transcript; anything edited is typed text
  const heard = state.heard && state.heard.text === text ? state.heard : null;
  if (heard) state.heard = null;
  const { wire } = heard
    ? await signedEvent("input.voice", { text, audio_ms: heard.audio_ms, model: heard.model, language: heard.language })
    : await signedEvent("input.text", { text });
  const result = await api("/api/requests", { method: "POST", body: JSON.stringify({ wire: toBase64(wire) }) });
  $("ask-status").textContent = `Sent (${result.id.slice(0, 8)}…).`;
  $("ask-text").value = "";
}

/** Open a session, then the live stream; when the stream is refused (the session ended: the
 * computer restarted, or it expired), open a new session and reconnect. */
async function goLive() {
  clearTimeout(state.retry);
  try {
    await openSession();
  } catch (e) {
    if (e.status === 403 || e.reason === "unknown_key") {
      setConn("offline", "not allowed");
      checkKey(); // says what to do
      return;
    }
    setConn("offline", "cannot sign in: " + e.message);
    retryLater();
    return;
  }
  connect();
}

/** Try again later, waiting twice as long each time (1 s up to a minute) until the stream opens. */
function retryLater() {
  clearTimeout(state.retry);
  state.retry = setTimeout(goLive, state.backoff);
  state.backoff = Math.min(state.backoff * 2, 60_000);
}

/** Record from the microphone until pressed again, then have the computer transcribe it. The
 * text is shown to be checked (and edited) before it is signed and sent. */
async function speak() {
  const button = $("speak-button");
  if (state.recorder) {
    if (state.recorder.state === "recording") state.recorder.stop();
    return; // still starting (asking for the microphone): this press changes nothing
  }
  if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) {
    $("ask-status").textContent = "This browser cannot record.";
    return;
  }
  state.recorder = { state: "starting" }; // taken at once, so a second press cannot start another
  let stream, recorder;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    // speech needs little: about 4 minutes fit in the 1 MiB a request may carry
    recorder = new MediaRecorder(stream, { audioBitsPerSecond: 32_000 });
  } catch (e) {
    stream?.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    throw e;
  }
  const chunks = [];
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    button.classList.remove("recording");
    button.textContent = "Speak";
    $("ask-status").textContent = "Listening to it…";
    try {
      const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
      const post = () => fetch("/api/transcribe", { method: "POST", body: blob, headers: { "content-type": blob.type } });
      let resp = await post();
      if (resp.status === 401) { // the session ended (the computer restarted): sign in again
        await openSession();
        resp = await post();
      }
      const heard = await resp.json();
      if (!resp.ok) throw new Error(heard.detail || `HTTP ${resp.status}`);
      if (!heard.text.trim()) {
        $("ask-status").textContent = "No speech was heard.";
        return;
      }
      if (!Number.isInteger(heard.audio_ms) || heard.audio_ms < 0 || !/^[\w.-]{1,64}$/.test(heard.model) ||
          !/^[a-z]{2,8}$/.test(heard.language)) {
        throw new Error("the computer's answer is malformed");
      }
      state.heard = heard;
      $("ask-text").value = heard.text;
      $("ask-status").textContent = `Heard this (${(heard.audio_ms / 1000).toFixed(1)} s, ${heard.model}, ` +
        `${heard.language}): check it, then send it, signed as what you said.`;
    } catch (e) {
      $("ask-status").textContent = "Not understood: " + e.message;
    }
  };
  state.recorder = recorder;
  recorder.start();
  button.classList.add("recording");
  button.textContent = "Stop recording";
  $("ask-status").textContent = "Recording… press Stop when you are done.";
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource("/api/approvals/stream");
  state.source = source;
  source.addEventListener("open", () => {
    state.backoff = 1000;
    setConn("live", "live");
  });
  source.addEventListener("error", () => {
    setConn("offline", "reconnecting…");
    // a network error reconnects by itself; a refusal (no session) closes the stream for good
    if (source.readyState === EventSource.CLOSED && state.source === source) retryLater();
  });
  source.addEventListener("approvals", (e) => render(JSON.parse(e.data)));
  source.addEventListener("announce", (e) => announce(JSON.parse(e.data)));
}

function setConn(cls, text) {
  const el = $("conn");
  el.className = "conn " + cls;
  el.textContent = text;
}

function announce(p) {
  if (navigator.vibrate) navigator.vibrate(150);
  if ("Notification" in window && Notification.permission === "granted" && document.hidden) {
    const body = `${p.command} (${p.risk_level} risk) is waiting for your approval`;
    navigator.serviceWorker?.ready
      .then((reg) => reg.showNotification("symbiote", { body, tag: p.command_id }))
      .catch(() => new Notification("symbiote", { body, tag: p.command_id }));
  }
}

/** Check a pending approval without trusting the server: decode, re-encode, recompute the digest. */
async function verify(p) {
  let bytes, proposal;
  try {
    bytes = fromBase64(p.proposal_wire);
    proposal = fromWire(bytes);
  } catch (e) {
    return { ok: false, reason: "The proposal the server sent is not canonical symbiote bytes (" + e.message + ")." };
  }
  if (!equalBytes(toWire(proposal), bytes)) {
    return { ok: false, reason: "The proposal does not re-encode to the same bytes.", proposal };
  }
  if (proposal.type !== "command.proposed" || proposal.id !== p.command_id) {
    return { ok: false, reason: "The bytes are not the proposal of this command.", proposal };
  }
  const d = await digest(proposal);
  if (toHex(d) !== String(p.digest).toLowerCase()) {
    return {
      ok: false,
      reason: "The digest the server asks you to sign does not match the command shown. " +
        "Someone may be tampering with this request — do not approve it here.",
      proposal,
    };
  }
  if (proposal.body.command !== p.command) {
    return { ok: false, reason: "The server names a different command than the one in the proposal.", proposal };
  }
  return { ok: true, proposal, digest: d };
}

function checkOf(p) {
  const key = `${p.command_id}|${p.digest}|${p.proposal_wire}`;
  if (!state.checks.has(key)) state.checks.set(key, verify(p));
  return state.checks.get(key);
}

function shellQuote(argv) {
  return argv.map((a) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : "'" + a.replace(/'/g, "'\\''") + "'")).join(" ");
}

function describeArgs(command, args) {
  const shown = toDisplay(args);
  if (shown && Array.isArray(shown.argv) && shown.argv.every((a) => typeof a === "string") && Object.keys(shown).length === 1) {
    return "$ " + shellQuote(shown.argv);
  }
  return JSON.stringify(shown, null, 2);
}

function fmtLeft(ms) {
  if (ms <= 0) return "expired";
  const s = Math.floor(ms / 1000);
  return `expires in ${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function render(snapshot) {
  state.pending = snapshot.pending;
  const list = $("pending");
  const seen = new Set();
  for (const p of snapshot.pending) {
    seen.add(p.command_id);
    let card = list.querySelector(`[data-command-id="${CSS.escape(p.command_id)}"]`);
    if (!card) {
      card = $("card-template").content.firstElementChild.cloneNode(true);
      card.dataset.commandId = p.command_id;
      list.appendChild(card);
    }
    fillCard(card, p);
  }
  for (const card of [...list.children]) {
    if (!seen.has(card.dataset.commandId)) card.remove();
  }
  $("pending-count").textContent = snapshot.pending.length ? `(${snapshot.pending.length})` : "";
  $("empty").hidden = snapshot.pending.length > 0;
  renderRecent((snapshot.recent || []).filter((c) => !seen.has(c.command_id)));
  const target = hashParams().get("command");
  if (target) list.querySelector(`[data-command-id="${CSS.escape(target)}"]`)?.scrollIntoView({ block: "center" });
}

function fillCard(card, p) {
  card.className = "card risk-" + p.risk_level;
  card.dataset.expiresAt = p.expires_at;
  const badge = card.querySelector(".badge");
  badge.textContent = p.risk_level === "none" ? "no risk" : `${p.risk_level} risk`;
  badge.className = "badge " + p.risk_level;
  card.querySelector(".expires").textContent = fmtLeft(p.expires_at - Date.now());
  card.querySelector(".desc").textContent = p.description;
  const asked = card.querySelector(".asked");
  asked.hidden = !p.request_text;
  asked.textContent = p.request_text ? `You asked: “${p.request_text}”` : "";
  card.querySelector(".risk").textContent = p.risk;
  card.querySelector(".sandbox").textContent = p.sandbox;
  card.querySelector(".principals").textContent =
    `${p.principals.join(", ") || "any registered user"} — ${p.needs} signature${p.needs === 1 ? "" : "s"} needed`;
  card.querySelector(".signed").textContent = p.signed_by.length ? p.signed_by.join(", ") : "nobody yet";
  const result = card.querySelector(".result");
  if (state.answered.has(p.command_id)) result.textContent = state.answered.get(p.command_id);
  if (card.dataset.checked === `${p.digest}|${p.proposal_wire}`) return;
  card.dataset.checked = `${p.digest}|${p.proposal_wire}`;
  // Until the check is done, show nothing the server claims about the command itself.
  card.querySelector(".cmd").textContent = p.command;
  card.querySelector(".args").textContent = "…";
  checkOf(p).then((check) => showCheck(card, p, check));
}

function showCheck(card, p, check) {
  const verifyEl = card.querySelector(".verify");
  const approve = card.querySelector(".approve");
  const reject = card.querySelector(".reject");
  if (check.proposal) {
    card.querySelector(".cmd").textContent = String(check.proposal.body.command);
    card.querySelector(".args").textContent = describeArgs(check.proposal.body.command, check.proposal.body.args);
  } else {
    card.querySelector(".args").textContent = "(unreadable)";
  }
  if (!check.ok) {
    verifyEl.className = "verify warning";
    verifyEl.textContent = "⚠ Not signing. " + check.reason;
    card.classList.add("tampered");
    approve.disabled = true;
    reject.disabled = true;
    return;
  }
  verifyEl.className = "verify ok";
  verifyEl.textContent = `✓ Checked on this phone: you sign exactly this command (digest ${toHex(check.digest).slice(0, 16)}…).`;
  const already = p.signed_by.includes(state.device.principal);
  approve.disabled = already || state.answered.has(p.command_id);
  reject.disabled = state.answered.has(p.command_id);
  if (already) card.querySelector(".result").textContent = "You have approved this; waiting for other signatures.";
  approve.onclick = () => answer(card, p, check, true);
  reject.onclick = () => answer(card, p, check, false);
}

async function answer(card, p, check, approve) {
  const approveBtn = card.querySelector(".approve");
  const rejectBtn = card.querySelector(".reject");
  const result = card.querySelector(".result");
  approveBtn.disabled = true;
  rejectBtn.disabled = true;
  result.textContent = approve ? "Signing the approval…" : "Signing the rejection…";
  try {
    const fresh = await verify(p); // re-check right before signing
    if (!fresh.ok || !equalBytes(fresh.digest, check.digest)) throw new Error(fresh.reason || "the proposal changed");
    const proposal = fresh.proposal;
    const { ev, wire } = await signedEvent(
      approve ? "command.approved" : "command.rejected",
      { command_id: proposal.id, digest: fresh.digest },
      { corr: proposal.corr, cause: proposal.id },
    );
    decode(wire); // the bytes we send are canonical
    await api("/api/approvals", { method: "POST", body: JSON.stringify({ wire: toBase64(wire) }) });
    const text = approve ? "Approved — it will run now." : "Rejected — it will not run.";
    state.answered.set(p.command_id, text);
    result.textContent = text;
    card.classList.add(approve ? "approved" : "rejected");
    card.dataset.answer = ev.id;
  } catch (e) {
    result.textContent = "Not sent: " + e.message;
    approveBtn.disabled = false;
    rejectBtn.disabled = false;
  }
}

const STATE_WORDS = {
  succeeded: "✓ succeeded",
  failed: "✗ failed",
  denied: "✗ denied",
  started: "… running",
  awaiting_approval: "… waiting for approval",
  proposed: "… proposed",
};

function renderRecent(recent) {
  const ul = $("recent");
  ul.replaceChildren();
  $("recent-title").hidden = recent.length === 0;
  for (const c of recent) {
    const li = document.createElement("li");
    li.className = "state-" + c.state;
    li.dataset.commandId = c.command_id;
    const head = document.createElement("div");
    head.className = "recent-head";
    const name = document.createElement("b");
    name.textContent = c.command || "(unknown)";
    const st = document.createElement("span");
    st.className = "state";
    st.textContent = (STATE_WORDS[c.state] || c.state) + (c.reason ? ` (${c.reason.replace(/_/g, " ")})` : "");
    head.append(name, st);
    li.append(head);
    if (c.output) {
      const out = document.createElement("pre");
      out.textContent = c.output;
      li.append(out);
    }
    ul.append(li);
  }
}

setInterval(() => {
  for (const card of document.querySelectorAll("#pending .card")) {
    card.querySelector(".expires").textContent = fmtLeft(Number(card.dataset.expiresAt) - Date.now());
  }
}, 1000);

// -- start ----------------------------------------------------------------------------------
async function main() {
  if (!window.isSecureContext || !crypto.subtle) {
    fatal("This page must be opened over https:// (it needs the browser's cryptography).");
    return;
  }
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/sw.js").catch(() => {}); // refused with a self-signed certificate: fine
  }
  try {
    state.device = await dbGet("self");
  } catch (e) {
    state.device = null;
  }
  const params = hashParams();
  const code = params.get("pair");
  if (code || !state.device) {
    try {
      await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    } catch (e) {
      fatal("This browser cannot make Ed25519 keys. Use a current Chrome, Firefox or Safari.");
      return;
    }
    await showPairing(code, params.get("fp"), params.get("as"));
    return;
  }
  showMain();
}

main().catch((e) => fatal("Something went wrong: " + e.message));
