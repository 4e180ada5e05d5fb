// dialgate wallboard: builds the page from /events (Server-Sent Events).
// The first event is a snapshot of every retained topic the server has seen;
// later events are single updates. Everything is rendered with textContent,
// never innerHTML, so nothing in a payload can inject markup.
"use strict";

const STATE_ORDER = ["suspended", "suspect", "appealing", "probation", "active", "retired"];
const LIMIT_NAMES = {
  calls_per_minute: "calls/min",
  calls_per_hour: "calls/hour",
  calls_per_day: "calls/day",
  concurrent: "in use",
  talk_minutes_per_day: "talk min",
  distinct_callees_per_day: "callees",
  answer_rate_floor: "answer rate",
  short_call_ceiling: "short calls",
  consecutive_failures: "failures",
};
const RATE_LIMITS = new Set(["answer_rate_floor", "short_call_ceiling"]);

let model = { cards: {}, agents: {}, trend: [], gateways: {}, stats: null, alerts: [], broker: { connected: false } };

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function ago(iso) {
  if (!iso) return "";
  const secs = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (secs < 60) return Math.floor(secs) + "s";
  if (secs < 3600) return Math.floor(secs / 60) + "m";
  if (secs < 86400) return Math.floor(secs / 3600) + "h";
  return Math.floor(secs / 86400) + "d";
}

function clockOf(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function fmt(n) {
  if (n === null || n === undefined) return "–";
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

function usageBar(name, u) {
  const row = el("div", "bar");
  row.dataset.limit = name;
  row.appendChild(el("span", "name", LIMIT_NAMES[name] || name));
  const track = el("div", "track");
  const fill = el("div", "fill");
  track.appendChild(fill);
  row.appendChild(track);
  let level = "ok";
  if (RATE_LIMITS.has(name)) {
    // The bar is the current rate; the white mark is the floor / ceiling.
    const pct = Math.min(100, Math.max(0, u.used * 100));
    fill.style.width = pct + "%";
    const mark = el("div", "mark");
    mark.style.left = Math.min(100, u.limit * 100) + "%";
    track.appendChild(mark);
    const judged = (u.sample || 0) >= (u.min_sample || 0);
    if (judged) {
      const bad = name === "answer_rate_floor" ? u.used < u.limit : u.used > u.limit;
      const near = name === "answer_rate_floor" ? u.used < u.limit + 0.05 : u.used > u.limit - 0.05;
      level = bad ? "over" : near ? "near" : "ok";
    }
    row.appendChild(el("span", "num", Math.round(u.used * 100) + "%"));
  } else {
    const ratio = u.limit > 0 ? u.used / u.limit : (u.used > 0 ? 1 : 0);
    fill.style.width = Math.min(100, ratio * 100) + "%";
    if (name === "concurrent") level = ratio > 1 ? "over" : ratio >= 1 ? "busy" : "ok";
    else level = ratio >= 1 ? "over" : ratio >= 0.8 ? "near" : "ok";
    row.appendChild(el("span", "num", fmt(u.used) + "/" + fmt(u.limit)));
  }
  row.dataset.level = level;
  return row;
}

function cardTile(id, c) {
  const tile = el("div", "card");
  tile.dataset.card = id;
  tile.dataset.state = c.state || "unknown";
  const head = el("div", "card-head");
  head.appendChild(el("span", "card-id", id));
  head.appendChild(el("span", "card-state", c.state + (c.reason ? " · " + c.reason : "")));
  tile.appendChild(head);
  const meta = [];
  if (c.pool) meta.push("pool " + c.pool);
  if (c.carrier) meta.push(c.carrier);
  if (c.since) meta.push("for " + ago(c.since));
  meta.push(c.in_use + " in use");
  if (c.resume_at) meta.push("back " + clockOf(c.resume_at));
  tile.appendChild(el("div", "card-meta", meta.join(" · ")));
  if (c.available && !c.available.now) {
    // Why this card cannot take a call now (the Warning of a 503 no-card-available).
    tile.appendChild(el("div", "card-why", "not available: " + c.available.why));
  }
  const usage = c.usage || {};
  for (const name of Object.keys(usage)) tile.appendChild(usageBar(name, usage[name]));
  return tile;
}

function renderCards() {
  const box = document.getElementById("cards");
  const ids = Object.keys(model.cards).sort((a, b) => {
    const sa = STATE_ORDER.indexOf(model.cards[a].state);
    const sb = STATE_ORDER.indexOf(model.cards[b].state);
    return sa !== sb ? sa - sb : a.localeCompare(b, undefined, { numeric: true });
  });
  box.replaceChildren(...ids.map((id) => cardTile(id, model.cards[id])));
  document.getElementById("no-cards").hidden = ids.length > 0;
  const counts = {};
  for (const id of ids) counts[model.cards[id].state] = (counts[model.cards[id].state] || 0) + 1;
  document.getElementById("card-summary").textContent = STATE_ORDER.filter((s) => counts[s])
    .map((s) => counts[s] + " " + s).join(" · ");
}

function renderStats() {
  const s = model.stats || {};
  document.getElementById("kpi-active").textContent = fmt(s.active_calls);
  document.getElementById("kpi-cps").textContent = s.cps === undefined ? "–" : s.cps.toFixed(1);
  document.getElementById("kpi-asr").textContent =
    s.asr === null || s.asr === undefined ? "–" : Math.round(s.asr * 100) + "%";
  document.getElementById("kpi-attempts").textContent = fmt(s.attempts);
  document.getElementById("kpi-failovers").textContent = fmt(s.failovers);
  const list = document.getElementById("blocked");
  const blocked = s.blocked || {};
  const reasons = Object.keys(blocked).sort((a, b) => blocked[b] - blocked[a]);
  list.replaceChildren(...reasons.map((r) => {
    const li = el("li");
    li.dataset.reason = r;
    li.appendChild(el("span", "reason", r));
    li.appendChild(el("span", "count", blocked[r]));
    return li;
  }));
  if (!reasons.length) list.replaceChildren(el("li", "empty", "none"));
}

function renderAlerts() {
  const list = document.getElementById("alerts");
  list.replaceChildren(...model.alerts.slice(0, 8).map((a) => {
    const li = el("li");
    li.dataset.severity = a.severity || "info";
    li.dataset.alert = a.alert || "";
    li.appendChild(el("span", "when", clockOf(a.at)));
    li.appendChild(el("div", "kind", a.alert + (a.card ? " · " + a.card : a.pool ? " · " + a.pool : "")));
    li.appendChild(el("div", "msg", a.message || ""));
    return li;
  }));
}

function renderTop() {
  const gws = document.getElementById("gateways");
  gws.replaceChildren(...Object.keys(model.gateways).sort().map((node) => {
    const g = model.gateways[node] || {};
    const chip = el("span", "gw", node + " " + (g.status || "?"));
    chip.dataset.node = node;
    chip.dataset.status = g.status || "unknown";
    return chip;
  }));
  const broker = document.getElementById("broker");
  broker.dataset.connected = String(model.broker.connected);
  broker.textContent = model.broker.connected ? "live" : "broker offline";
}

// Keep every card on screen: shrink the cards (not the headline numbers) until
// the grid fits — a TV has no scroll bar — and grow back when cards go away.
function fit() {
  const wrap = document.querySelector(".cards-wrap");
  const cards = document.getElementById("cards");
  let scale = 1;
  cards.style.setProperty("--card-scale", "1");
  while (wrap.scrollHeight > wrap.clientHeight + 1 && scale > 0.4) {
    scale -= 0.05;
    cards.style.setProperty("--card-scale", scale.toFixed(2));
  }
}

// Stats are republished every few seconds; older ones mean the gateway stopped.
function markStale() {
  const s = model.stats;
  const stale = !s || !s.at || Date.now() - Date.parse(s.at) > 30000;
  document.querySelector(".kpis").dataset.stale = String(stale);
}

// Agents (dialgate/agents/{agent}/state): busiest first, then by name.
const AGENT_ORDER = ["talking", "ringing", "dialling", "paused", "idle"];

function agentTile(name, a) {
  const li = el("li", "agent");
  li.dataset.agent = name;
  li.dataset.state = a.state;
  const head = el("div", "agent-head");
  head.append(el("span", "agent-name", name));
  head.append(el("span", "agent-state", a.state + (a.state === "paused" && a.reason ? ": " + a.reason : "")));
  li.append(head);
  const line = `calls ${fmt(a.calls_today)} · answered ${fmt(a.answered_today)} · complaints ${fmt(a.complaints_today)}`;
  li.append(el("div", "agent-counts", line + (a.card ? ` · card ${a.card}` : "")));
  return li;
}

function renderAgents() {
  const box = document.getElementById("agents");
  const names = Object.keys(model.agents).sort((x, y) => {
    const d = AGENT_ORDER.indexOf(model.agents[x].state) - AGENT_ORDER.indexOf(model.agents[y].state);
    return d || x.localeCompare(y);
  });
  box.replaceChildren(...names.map((n) => agentTile(n, model.agents[n])));
  document.getElementById("no-agents").hidden = names.length > 0;
}

// Last hour: calls per minute (green, scaled to the busiest minute) and ASR (blue, 0-100 %).
function renderTrend() {
  const svg = document.getElementById("trend");
  const pts = model.trend || [];
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...pts.map((p) => p.calls));
  const x = (i) => (pts.length < 2 ? 150 : (i * 300) / (pts.length - 1));
  const line = (cls, ys) => {
    const pl = document.createElementNS(ns, "polyline");
    pl.setAttribute("class", cls);
    pl.setAttribute("points", ys.map(([i, y]) => `${x(i).toFixed(1)},${y.toFixed(1)}`).join(" "));
    return pl;
  };
  const calls = pts.map((p, i) => [i, 78 - (p.calls / max) * 74]);
  const asr = pts.map((p, i) => [i, p.asr]).filter(([, a]) => a !== null).map(([i, a]) => [i, 78 - a * 74]);
  svg.replaceChildren(line("trend-calls", calls), line("trend-asr", asr));
  const last = pts.length ? pts[pts.length - 1] : null;
  document.getElementById("trend-legend").textContent = last
    ? `calls/min ${last.calls} (peak ${max}) · ASR ${last.asr === null ? "–" : Math.round(last.asr * 100) + "%"}`
    : "no minute complete yet";
}

function renderAll() {
  renderTop();
  renderAgents();
  renderTrend();
  renderStats();
  renderCards();
  renderAlerts();
  markStale();
  fit();
  document.body.dataset.ready = "true";
}

function apply(u) {
  switch (u.type) {
    case "card": model.cards[u.card] = u.data; renderCards(); fit(); break;
    case "card-removed": delete model.cards[u.card]; renderCards(); fit(); break;
    case "stats": model.stats = u.data; renderStats(); markStale(); break;
    case "gateway":
      if (u.data) model.gateways[u.node] = u.data; else delete model.gateways[u.node];
      renderTop(); break;
    case "alert": model.alerts.unshift(u.data); model.alerts.length = Math.min(model.alerts.length, 20);
      renderAlerts(); break;
    case "broker": model.broker.connected = u.connected; renderTop(); break;
    case "trend": model.trend = u.data || []; renderTrend(); break;
    case "agent":
      if (u.data) model.agents[u.agent] = u.data; else delete model.agents[u.agent];
      renderAgents(); break;
  }
}

function connect() {
  const source = new EventSource("events");
  source.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    model = {
      cards: snap.cards || {}, agents: snap.agents || {}, trend: snap.trend || [],
      gateways: snap.gateways || {}, stats: snap.stats,
      alerts: snap.alerts || [], broker: snap.broker || { connected: false },
    };
    renderAll();
  });
  source.addEventListener("update", (e) => apply(JSON.parse(e.data)));
  source.onerror = () => {
    const broker = document.getElementById("broker");
    broker.dataset.connected = "false";
    broker.textContent = "wallboard server unreachable";
  };
}

function tick() {
  document.getElementById("clock").textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

tick();
setInterval(tick, 10000);
setInterval(renderCards, 30000); // keep "for 12m" fresh
setInterval(markStale, 5000);
window.addEventListener("resize", fit);
connect();
