// The operator's dashboard: reads the same admin API the CLI uses (`/metrics`, `/admin/*`) with
// the master key, which stays in this tab's session storage. No framework, no CDN: the gateway
// serves this file from its binary.
"use strict";

// Errors are kept where a test (or a curious operator) can read them.
window.__errors = [];
window.addEventListener("error", (e) => window.__errors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.__errors.push(String(e.reason)));

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const POINTS = 150;

function masterKey() {
  return sessionStorage.getItem("tollgate-master-key") || "";
}

class Unauthorized extends Error {}

/** The master key's header; none when the gateway runs without one (open, on loopback). */
function authorization() {
  return masterKey() ? { authorization: `Bearer ${masterKey()}` } : {};
}

async function api(path, options = {}) {
  const headers = Object.assign(authorization(), options.headers || {});
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (response.status === 401 || response.status === 403) throw new Unauthorized();
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try { message = JSON.parse(text).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return options.text ? text : JSON.parse(text);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function row(...cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.append(c instanceof Node ? c : cell(c));
  return tr;
}

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows);
}

const dollars = (x) => `$${Number(x).toFixed(x >= 1 ? 2 : 4)}`;

// --- Overview: /metrics sampled every 2 s, rates over each interval -------------------------

/** Prometheus text as {name: [{labels, value}]}. */
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    (out[m[1]] = out[m[1]] || []).push({ labels, value: Number(m[3]) });
  }
  return out;
}

function sum(metrics, name, keep = () => true) {
  return (metrics[name] || []).filter((s) => keep(s.labels)).reduce((a, s) => a + s.value, 0);
}

const series = { rps: [], latency: [], hits: [], saved: [] };
window.__series = series;
let previous = null;
let firstRequests = null;

function push(name, value) {
  series[name].push(value);
  if (series[name].length > POINTS) series[name].shift();
}

/** Draws `lines` ([{values, cls}]) on one scale, right-aligned on a width of `width` points. */
function drawLines(id, lines, format, width) {
  const svg = $(id);
  const max = Math.max(0, ...lines.flatMap((l) => l.values));
  const top = max > 0 ? max * 1.1 : 1;
  const step = width > 1 ? 400 / (width - 1) : 0;
  const drawn = lines.map(({ values, cls }) => {
    const x0 = 400 - step * (values.length - 1);
    const points = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(120 - (v / top) * 110).toFixed(1)}`);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    if (cls) line.setAttribute("class", cls);
    return line;
  });
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "12");
  label.textContent = `max ${format(max)}`;
  svg.replaceChildren(...drawn, label);
  svg.dataset.max = String(max);
  svg.dataset.points = String(lines.length ? lines[0].values.length : 0);
}

function drawChart(id, values, format) {
  drawLines(id, [{ values }], format, POINTS);
}

async function sample() {
  const metrics = parseMetrics(await api("/metrics", { text: true }));
  const now = performance.now();
  const apiRoute = (l) => (l.route || "").startsWith("/v1/");
  const current = {
    at: now,
    requests: sum(metrics, "tollgate_http_requests_total", apiRoute),
    latencySum: sum(metrics, "tollgate_http_request_duration_seconds_sum", apiRoute),
    latencyCount: sum(metrics, "tollgate_http_request_duration_seconds_count", apiRoute),
    hits: sum(metrics, "tollgate_cache_lookups_total", (l) => l.result === "hit" || l.result === "semantic"),
    lookups: sum(metrics, "tollgate_cache_lookups_total"),
    saved: sum(metrics, "tollgate_cache_saved_dollars_total"),
  };
  if (firstRequests === null) firstRequests = current.requests;
  if (previous) {
    const seconds = (current.at - previous.at) / 1000 || 1;
    const done = current.latencyCount - previous.latencyCount;
    push("rps", (current.requests - previous.requests) / seconds);
    push("latency", done > 0 ? ((current.latencySum - previous.latencySum) / done) * 1000 : 0);
    push("hits", (current.hits - previous.hits) / seconds);
    push("saved", current.saved);
    drawChart("chart-rps", series.rps, (v) => v.toFixed(1));
    drawChart("chart-latency", series.latency, (v) => `${v.toFixed(1)} ms`);
    drawChart("chart-hits", series.hits, (v) => v.toFixed(1));
    drawChart("chart-saved", series.saved, dollars);
    $("chart-rps").dataset.requests = String(current.requests - firstRequests);
    $("card-rps").textContent = series.rps[series.rps.length - 1].toFixed(1);
    const mean = current.latencyCount ? (current.latencySum / current.latencyCount) * 1000 : null;
    $("card-latency").textContent = mean === null ? "–" : `${mean.toFixed(1)} ms`;
  }
  $("card-hits").textContent = current.lookups ? `${((100 * current.hits) / current.lookups).toFixed(1)} %` : "–";
  $("card-saved").textContent = dollars(current.saved);
  fill("limiter", (metrics.tollgate_limiter_decisions_total || []).map((s) => row(s.labels.decision, String(s.value))));
  fill("outcomes", (metrics.tollgate_cache_lookups_total || []).map((s) => row(s.labels.result, String(s.value))));
  previous = current;
}

// --- History: /admin/timeline, what every replica answered, from the database ---------------

let historyLoaded = 0;

async function loadHistory() {
  historyLoaded = Date.now();
  let timeline;
  try {
    timeline = await api(`/admin/timeline?minutes=${$("history-window").value}`);
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    $("history-note").textContent = e.message;
    return;
  }
  const steps = timeline.data;
  const minutes = timeline.step_ms / 60000;
  $("history-step").textContent = minutes === 1 ? "a minute" : minutes < 60 ? `${minutes} minutes` : `${minutes / 60} hours`;
  const column = (name) => steps.map((s) => s[name]);
  drawLines("history-requests", [
    { values: column("requests") },
    { values: column("exact"), cls: "exact" },
    { values: column("semantic"), cls: "semantic" },
  ], (v) => v.toFixed(0), steps.length);
  drawLines("history-dollars", [
    { values: column("spend_usd"), cls: "spent" },
    { values: column("saved_usd"), cls: "saved" },
  ], dollars, steps.length);
  $("history-requests").dataset.requests = String(column("requests").reduce((a, b) => a + b, 0));
}

async function loadOverview() {
  await sample();
  await loadHistory();
}

$("history-window").addEventListener("change", () => guarded(loadHistory));

// --- Recent requests (the usage records every replica writes to the database) ----------------

let requestTenant = "";

async function loadRequests() {
  const query = requestTenant ? `?tenant=${encodeURIComponent(requestTenant)}&limit=100` : "?limit=100";
  const recent = (await api(`/admin/requests${query}`)).data;
  fill("request-table", recent.map((r) => row(
    new Date(r.created_ms).toLocaleTimeString(), r.key, r.tenant, r.model,
    String(r.prompt_tokens), String(r.completion_tokens), dollars(r.cost_usd),
    r.served,
  )));
  $("request-note").textContent = recent.length ? "" : "No requests recorded yet.";
}

$("request-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  requestTenant = new FormData(e.target).get("tenant") || "";
  guarded(loadRequests, "request-note");
});

// --- Conversations: sessions and stored responses, read-only ---------------------------------

let conversationTenant = "";

function contentText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => p.text || `[${p.type}]`).join(" ");
  return content === null || content === undefined ? "" : JSON.stringify(content);
}

async function showSession(id) {
  const messages = (await api(`/admin/sessions/${encodeURIComponent(id)}/messages`)).data;
  $("session-name").textContent = id;
  fill("message-table", messages.map((m) => row(String(m.seq), m.message.role, contentText(m.message.content))));
  $("session-view").hidden = false;
}

async function loadConversations() {
  const query = conversationTenant ? `?tenant=${encodeURIComponent(conversationTenant)}` : "";
  const sessions = (await api(`/admin/sessions${query}`)).data;
  fill("session-table", sessions.map((s) => {
    const open = document.createElement("button");
    open.textContent = s.id;
    open.className = "link";
    open.addEventListener("click", () => guarded(() => showSession(s.id), "conversation-note"));
    const id = document.createElement("td");
    id.append(open);
    return row(id, s.tenant || "–", s.owner, s.system || "–", new Date(s.updated_ms).toLocaleString());
  }));
  const responses = (await api(`/admin/responses${query}`)).data;
  fill("response-table", responses.map((r) => row(
    r.id, r.tenant || "–", r.model || "–", r.status || "–", r.previous_response_id || "–",
    r.output_text, new Date(r.created_ms).toLocaleString(),
  )));
}

$("conversation-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  conversationTenant = new FormData(e.target).get("tenant") || "";
  $("session-view").hidden = true;
  guarded(loadConversations, "conversation-note");
});

// --- Live generations: listed from every instance, watched through /v1/streams/{id} -----------

let watching = null;

async function watch(id) {
  if (watching) watching.abort();
  watching = new AbortController();
  $("watch").hidden = false;
  $("watch-id").textContent = id;
  $("watch-state").textContent = "(streaming)";
  $("watch-text").textContent = "";
  // fetch, not EventSource: the master key goes in a header.
  const response = await fetch(`/v1/streams/${encodeURIComponent(id)}`, {
    headers: authorization(),
    signal: watching.signal,
  });
  if (!response.ok) throw new Error(`stream ${id}: ${response.status}`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    const events = pending.split("\n\n");
    pending = events.pop();
    for (const event of events) {
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        try {
          const delta = JSON.parse(line.slice(6)).choices?.[0]?.delta?.content;
          if (delta) $("watch-text").textContent += delta;
        } catch (_) { /* an event that is not a chunk */ }
      }
    }
  }
  $("watch-state").textContent = "(ended)";
}

async function loadLive() {
  const live = (await api("/admin/streams")).data;
  fill("live-table", live.map((s) => {
    const button = document.createElement("button");
    button.textContent = "Watch";
    button.dataset.stream = s.id;
    button.addEventListener("click", () => guarded(() => watch(s.id)));
    const td = document.createElement("td");
    td.append(button);
    return row(s.id, s.model || "–", s.owner || "–", new Date(s.started_ms).toLocaleTimeString(), td);
  }));
}

// --- Keys ------------------------------------------------------------------------------------

let keyList = [];

async function loadKeys() {
  keyList = (await api("/admin/keys")).data;
  fill("key-table", keyList.filter((k) => !k.revoked).map((k) => {
    const revoke = document.createElement("button");
    revoke.textContent = "Revoke";
    revoke.dataset.key = k.id;
    revoke.addEventListener("click", () => guarded(async () => {
      if (!confirm(`Revoke ${k.name} (${k.id})? Requests with it stop at once.`)) return;
      await api(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
      await loadKeys();
    }, "key-error"));
    const limits = k.limits && Object.keys(k.limits).length ? JSON.stringify(k.limits) : "tier's";
    const action = document.createElement("td");
    action.append(revoke);
    return row(k.id, k.name, k.tenant, k.tier, limits, new Date(k.created * 1000).toLocaleString(), action);
  }));
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const form = new FormData(e.target);
    const body = { name: form.get("name") };
    for (const field of ["tenant", "tier"]) if (form.get(field)) body[field] = form.get(field);
    const limits = {};
    if (form.get("rpm")) limits.rpm = Number(form.get("rpm"));
    if (form.get("daily_budget_usd")) limits.daily_budget_usd = Number(form.get("daily_budget_usd"));
    if (Object.keys(limits).length) body.limits = limits;
    const created = await api("/admin/keys", { method: "POST", body });
    $("new-key").textContent = created.key;
    $("key-created").hidden = false;
    e.target.reset();
    await loadKeys();
  }, "key-error");
});

// --- Spend ----------------------------------------------------------------------------------

async function loadSpend() {
  if (!keyList.length) keyList = (await api("/admin/keys")).data;
  const budgets = Object.fromEntries(keyList.map((k) => [k.id, (k.limits || {}).daily_budget_usd]));
  const rows = [];
  for (const entry of (await api("/admin/spend")).data) {
    const models = new Set([...Object.keys(entry.today.models), ...Object.keys(entry.this_month.models)]);
    for (const model of models) {
      const today = entry.today.models[model] || 0;
      const budget = budgets[entry.key];
      let used = cell("–");
      if (budget) {
        used = document.createElement("td");
        const bar = document.createElement("div");
        bar.className = "bar";
        bar.title = `${dollars(entry.today.total_usd)} of ${dollars(budget)} today`;
        const fillBar = document.createElement("span");
        const share = Math.min(1, entry.today.total_usd / budget);
        fillBar.style.width = `${(share * 100).toFixed(0)}%`;
        if (share >= 1) fillBar.className = "over";
        bar.append(fillBar);
        used.append(bar);
      }
      rows.push(row(entry.key, model, dollars(today), dollars(entry.this_month.models[model] || 0), used));
    }
  }
  fill("spend-table", rows);
}

// --- Cache ----------------------------------------------------------------------------------

async function loadCache() {
  const stats = (await api("/admin/cache/stats")).data;
  fill("cache-table", stats.map((s) => {
    const drop = document.createElement("button");
    drop.textContent = "Invalidate";
    drop.addEventListener("click", () => guarded(async () => {
      if (!confirm(`Drop every cached answer of ${s.model}?`)) return;
      await api("/admin/cache/invalidate", { method: "POST", body: { model: s.model } });
      $("cache-note").textContent = `${s.model}: cached answers dropped`;
      await loadCache();
    }, "cache-note"));
    const td = document.createElement("td");
    td.append(drop);
    return row(s.model, String(s.hits), String(s.misses), `${(100 * s.hit_rate).toFixed(1)} %`,
      String(s.saved_prompt_tokens + s.saved_completion_tokens), dollars(s.saved_dollars), td);
  }));
}

// --- Models ---------------------------------------------------------------------------------

async function loadModels() {
  const models = (await api("/admin/models")).data;
  fill("model-table", models.map((m) => row(
    m.name,
    m.deployments.map((d) => `${d.name} → ${d.model} (weight ${d.weight})`).join(", "),
    m.experiment ? `${m.experiment.name}: ${m.experiment.arms.length} arms` : "–",
  )));
}

// --- Shell ----------------------------------------------------------------------------------

const loaders = { overview: loadOverview, requests: loadRequests, conversations: loadConversations, live: loadLive, keys: loadKeys, spend: loadSpend, cache: loadCache, models: loadModels };
let active = "overview";

async function guarded(action, errorId) {
  try {
    if (errorId) $(errorId).textContent = "";
    await action();
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e instanceof Unauthorized) return signIn("That key is not the master key.");
    if (errorId) $(errorId).textContent = e.message;
    else $("status").textContent = e.message;
  }
}

function show(tab) {
  active = tab;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== tab;
  guarded(loaders[tab]);
}

for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.tab));

function signIn(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("tollgate-master-key", $("master-key").value);
  $("login").hidden = true;
  $("app").hidden = false;
  show(active);
});

// The overview keeps sampling while the page is open, whichever tab shows, so its charts have
// no gaps.
setInterval(() => {
  if ($("app").hidden) return;
  guarded(sample);
  if (active === "overview" && Date.now() - historyLoaded > 30000) guarded(loadHistory);
  if (active === "requests") guarded(loadRequests, "request-note");
  if (active === "conversations") guarded(loadConversations, "conversation-note");
  if (active === "live") guarded(loadLive);
}, POLL_MS);

// In with the key this tab has, else ask for one (empty: a gateway that runs open on loopback).
if (sessionStorage.getItem("tollgate-master-key") === null) {
  signIn();
} else {
  api("/admin/keys").then(
    () => { $("app").hidden = false; show("overview"); },
    () => signIn("That key is not the master key."),
  );
}
