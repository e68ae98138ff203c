// The Tessera ops console page: plain JavaScript, no libraries, nothing
// fetched from the network but this console's own /api.
//
// The token is kept in sessionStorage (this tab only) and sent as a bearer
// header on every call; there are no cookies, so a request from another
// site carries no credential.
"use strict";

const HISTORY = 300; // samples per shard kept for the charts (~5 minutes)
const PALETTE = ["#2a7de1", "#e1572a", "#2aa876", "#a52ae1", "#e1b82a", "#555"];
const state = {
  token: sessionStorage.getItem("tessera-token") || "",
  role: null,
  overview: null,
  history: new Map(), // shard url -> [{t, sessions, in, out, p99}]
  inspecting: null, // {shard, room}
  stream: null,
};

const $ = (sel) => document.querySelector(sel);

// Build an element; children are nodes or text (never parsed as HTML).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") node.addEventListener("click", v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + state.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let doc = null;
  try { doc = JSON.parse(text); } catch (_) { doc = { error: text }; }
  if (!res.ok) {
    const err = new Error(doc && doc.error ? doc.error : res.statusText);
    err.status = res.status;
    throw err;
  }
  return doc;
}

function flash(text, error) {
  const f = $("#flash");
  f.textContent = text;
  f.className = error ? "error" : "";
}

async function act(label, method, path, body) {
  try {
    const reply = await api(method, path, body);
    const parts = Array.isArray(reply) ? reply.map((o) => `${o.shard}: ${o.result}`) : [reply.result || JSON.stringify(reply)];
    flash(`${label}: ${parts.join("; ")}`);
    return reply;
  } catch (e) {
    flash(`${label} refused (${e.status || "network"}): ${e.message}`, true);
    return null;
  }
}

// ---- sign in ----

async function signIn(token) {
  state.token = token;
  try {
    const who = await api("GET", "/api/whoami");
    state.role = who.role;
    sessionStorage.setItem("tessera-token", token);
    document.body.classList.toggle("role-viewer", who.role !== "operator");
    document.body.classList.toggle("role-operator", who.role === "operator");
    $("#who").textContent = `${who.name} (${who.role})`;
    $("#login").hidden = true;
    $("#app").hidden = false;
    startStream();
  } catch (e) {
    signOut(e.status === 401 || e.status === 403 ? "that token was refused" : e.message);
  }
}

function signOut(message) {
  sessionStorage.removeItem("tessera-token");
  state.token = "";
  if (state.stream) state.stream.abort();
  state.stream = null;
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

// ---- the live stream (server-sent events read through fetch, which can
// carry the bearer header that EventSource cannot) ----

async function startStream() {
  if (state.stream) state.stream.abort();
  const ctl = new AbortController();
  state.stream = ctl;
  try {
    const res = await fetch("/api/stream", { headers: { Authorization: "Bearer " + state.token }, signal: ctl.signal });
    if (res.status === 401 || res.status === 403) return signOut("that token was refused");
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let event = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (event === "overview") onOverview(JSON.parse(data));
        else if (event === "error") return signOut(data);
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (state.stream === ctl) setTimeout(startStream, 2000); // reconnect
}

function onOverview(view) {
  state.overview = view;
  document.body.classList.toggle("cluster", !!view.cluster);
  $("#live").textContent = "live " + new Date(view.at_ms).toLocaleTimeString();
  for (const s of view.shards) {
    if (!s.info) continue;
    const h = state.history.get(s.url) || [];
    h.push({ t: view.at_ms, sessions: s.info.sessions, in: s.info.msgs_in_per_s, out: s.info.msgs_out_per_s, p99: s.info.tick_p99_ms });
    while (h.length > HISTORY) h.shift();
    state.history.set(s.url, h);
  }
  renderShards(view);
  renderDirectory(view);
  renderTunnels(view);
  renderCharts();
  renderRooms(view);
  renderTopics(view);
}

const num = (v, digits = 0) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));
const age = (ms) => (ms === null || ms === undefined ? "-" : ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`);
const secs = (s) => (s === null || s === undefined ? "-" : s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);

function renderShards(view) {
  const body = $("#shards tbody");
  body.replaceChildren(...view.shards.map((s) => {
    const i = s.info || {};
    return el("tr", { "data-shard": s.url },
      el("td", {}, s.url), el("td", { class: "state-" + s.state, title: s.error || "" }, s.state),
      el("td", {}, i.version || "-"), el("td", {}, secs(i.uptime_s)),
      el("td", { class: "num sessions" }, num(i.sessions)), el("td", { class: "num" }, num(i.rooms)),
      el("td", { class: "num msgs-in" }, num(i.msgs_in_per_s, 1)), el("td", { class: "num msgs-out" }, num(i.msgs_out_per_s, 1)),
      el("td", { class: "num" }, num(i.tick_p99_ms, 2)), el("td", { class: "num" }, num(i.restarts)),
      el("td", { class: "num queue-depth" }, s.info ? s.topics.reduce((n, t) => n + t.depth, 0) : "-"),
      el("td", { class: "num" }, num(i.dispatch_dropped)), el("td", {}, i.store_healthy === undefined ? "-" : i.store_healthy ? "up" : "DOWN"),
      el("td", { class: "cluster-only op-only" },
        el("button", { class: "drain", onclick: () => confirm(`Drain ${s.url}?`) && act("drain", "POST", "/api/shards/drain", { shard: s.url }) }, "Drain")));
  }));
}

// The directory's shard records and their leases (--redis only).
function renderDirectory(view) {
  const d = view.directory;
  $("#directory").hidden = !d;
  $("#directory-note").textContent = !d ? "lease figures need the console started with --redis"
    : d.error ? `the directory could not be read: ${d.error}` : `lease ages assume cluster.lease_ms = ${d.lease_ms} ms`;
  if (!d) return;
  $("#directory tbody").replaceChildren(...d.shards.map((s) => el("tr", { "data-id": s.id },
    el("td", {}, s.id), el("td", { class: "state-" + s.state }, s.state), el("td", {}, s.version || "-"),
    el("td", {}, s.ws), el("td", {}, s.http), el("td", { class: "num leases" }, s.leases),
    el("td", { class: "num" }, age(s.lease_age_max_ms)), el("td", { class: "num" }, age(s.lease_ttl_min_ms)),
    el("td", { class: "num" }, age(s.heartbeat_age_ms)))));
}

const rate = (v) => (v === null || v === undefined ? "-" : v < 1024 ? `${v.toFixed(0)} B/s` : v < 1048576 ? `${(v / 1024).toFixed(1)} KiB/s` : `${(v / 1048576).toFixed(1)} MiB/s`);

// The tunnel matrix: one row per reporting shard, one column per peer.
function renderTunnels(view) {
  const links = view.tunnels || [];
  const ids = [...new Set(links.flatMap((l) => [l.from, l.to]))].sort();
  const head = el("tr", {}, el("th", {}, "from \\ to"), ...ids.map((id) => el("th", {}, id)));
  $("#tunnels thead").replaceChildren(head);
  const cell = (from, to) => {
    if (from === to) return el("td", { class: "self" }, "");
    const l = links.find((x) => x.from === from && x.to === to);
    if (!l) return el("td", { class: "missing", "data-from": from, "data-to": to }, "-");
    const version = l.version ? `tunnel ${l.version}` : "tunnel -";
    return el("td", { class: "tunnel state-" + l.state, "data-from": from, "data-to": to, title: `${l.state}; ${version}; ${l.bytes_out} B out, ${l.bytes_in} B in in all` },
      el("span", { class: "rtt" }, l.rtt_ms === null || l.rtt_ms === undefined ? "- ms" : `${l.rtt_ms.toFixed(2)} ms`), " ",
      el("span", { class: "out" }, "out " + rate(l.bytes_out_per_s)), " ",
      el("span", { class: "in" }, "in " + rate(l.bytes_in_per_s)), " ",
      el("span", { class: "streams" }, `${l.streams} streams`), " ",
      el("span", { class: "version" }, version));
  };
  $("#tunnels tbody").replaceChildren(...ids.map((from) => el("tr", { "data-from": from }, el("th", {}, from), ...ids.map((to) => cell(from, to)))));
}

function chart(id, key) {
  const node = $("#" + id);
  const series = [...state.history.entries()];
  // The window grows with the data up to HISTORY seconds, so the first
  // minutes fill the chart instead of a sliver at its right edge.
  const now = state.overview ? state.overview.at_ms : Date.now();
  let oldest = now;
  for (const [, h] of series) if (h.length) oldest = Math.min(oldest, h[0].t);
  const span = Math.max(10_000, Math.min(HISTORY * 1000, now - oldest));
  const from = now - span;
  let max = 1;
  for (const [, h] of series) for (const p of h) max = Math.max(max, p[key] || 0);
  const kids = [svg("text", { x: 2, y: 10, "font-size": 9, fill: "#56607a" })];
  kids[0].textContent = num(max, max < 10 ? 2 : 0);
  series.forEach(([, h], n) => {
    const pts = h.filter((p) => p.t >= from).map((p) => `${(((p.t - from) / span) * 300).toFixed(1)},${(98 - ((p[key] || 0) / max) * 86).toFixed(1)}`);
    if (pts.length) kids.push(svg("polyline", { points: pts.join(" "), fill: "none", stroke: PALETTE[n % PALETTE.length], "stroke-width": 1.5 }));
  });
  node.replaceChildren(...kids);
}

function renderCharts() {
  chart("chart-sessions", "sessions");
  chart("chart-in", "in");
  chart("chart-out", "out");
  chart("chart-p99", "p99");
}

function renderRooms(view) {
  const body = $("#rooms tbody");
  body.replaceChildren(...view.rooms.map((r) => el("tr", { "data-room": r.id, "data-shard": r.shard },
    el("td", {}, r.shard), el("td", { class: "room-id" }, r.id), el("td", {}, r.map),
    el("td", { class: "num members" }, r.members), el("td", { class: "num" }, r.members_remote),
    el("td", {}, r.owner), el("td", { class: "num" }, r.epoch), el("td", { class: "num" }, num(r.tick_ms, 2)),
    el("td", { class: "num" }, r.restarts), el("td", {}, age(r.snapshot_age_ms)), el("td", {}, age(r.store_age_ms)),
    el("td", {},
      el("button", { class: "inspect", onclick: () => inspect(r.shard, r.id) }, "Inspect"), " ",
      el("button", { class: "restart op-only", onclick: () => confirm(`Restart ${r.id}?`) && act("restart " + r.id, "POST", "/api/rooms/restart", { shard: r.shard, room: r.id }) }, "Restart"), " ",
      el("button", { class: "migrate op-only cluster-only", onclick: () => migrate(r) }, "Migrate")))));
}

/** Move a room live to the shard the operator names (empty: any ready one). */
async function migrate(r) {
  const to = prompt(`Migrate ${r.id} (on ${r.owner}) to which shard? Empty: any ready shard.`, "");
  if (to === null) return;
  const body = { shard: r.shard, room: r.id };
  if (to.trim()) body.to = to.trim();
  const moved = await api("POST", "/api/rooms/migrate", body).catch((e) => {
    flash(`migrate ${r.id} refused (${e.status || "network"}): ${e.message}`, true);
    return null;
  });
  if (moved) flash(`migrate ${r.id}: moved from ${moved.from} to ${moved.to} at epoch ${moved.epoch}, paused ${Number(moved.pause_ms).toFixed(1)} ms`);
}

function renderTopics(view) {
  const rows = [];
  for (const s of view.shards) for (const t of s.topics) rows.push(el("tr", { "data-topic": t.topic },
    el("td", {}, s.url), el("td", {}, t.topic), el("td", { class: "num" }, t.subscribers), el("td", { class: "num" }, t.depth),
    el("td", { class: "num" }, num(t.published_per_s, 1)), el("td", { class: "num" }, t.published_total), el("td", { class: "num" }, t.dropped_total)));
  $("#topics tbody").replaceChildren(...rows);
}

// ---- the room inspector ----

function inspect(shard, room) {
  state.inspecting = { shard, room };
  $("#inspector").hidden = false;
  refreshInspector();
}

async function refreshInspector() {
  const target = state.inspecting;
  if (!target || $("#tab-rooms").hidden) return;
  try {
    const d = await api("GET", `/api/room?shard=${encodeURIComponent(target.shard)}&room=${encodeURIComponent(target.room)}`);
    $("#inspector-title").textContent = `${d.room.id} on ${target.shard}: ${d.members.length} members (${d.width} x ${d.height})`;
    const map = $("#inspector-map");
    const kids = [svg("rect", { x: 0, y: 0, width: 400, height: 400, fill: "#fbfcfd" })];
    for (const m of d.members) {
      const cx = (m.x / (d.width || 1)) * 400;
      const cy = (m.y / (d.height || 1)) * 400;
      const dot = svg("circle", { cx: cx.toFixed(1), cy: cy.toFixed(1), r: 5, fill: m.connected ? "#2a7de1" : "#aaa", "data-player": m.player });
      const title = svg("title", {});
      title.textContent = `${m.name} (${m.player}) ${num(m.x, 1)}, ${num(m.y, 1)}`;
      dot.append(title);
      // Labels near the right edge go on the dot's left, inside the map.
      const right = cx > 340;
      const label = svg("text", { x: (right ? cx - 7 : cx + 7).toFixed(1), y: (cy + 3).toFixed(1), "font-size": 10, "text-anchor": right ? "end" : "start" });
      label.textContent = m.name;
      kids.push(dot, label);
    }
    map.replaceChildren(...kids);
    $("#inspector-members tbody").replaceChildren(...d.members.map((m) => el("tr", { "data-player": m.player },
      el("td", { class: "num" }, m.entity), el("td", {}, m.player), el("td", {}, m.name),
      el("td", { class: "num pos-x" }, num(m.x, 1)), el("td", { class: "num pos-y" }, num(m.y, 1)),
      el("td", {}, secs(m.session_age_s)), el("td", {}, m.connected ? "yes" : "seat held"),
      el("td", { class: "op-only" }, el("button", { class: "kick", onclick: () => kick(m.player) }, "Kick")))));
  } catch (e) {
    $("#inspector-title").textContent = `${target.room}: ${e.message}`;
  }
}

function kick(player) {
  const reason = prompt(`Kick ${player}: reason (optional)`, "");
  if (reason === null) return;
  act("kick " + player, "POST", `/api/players/${encodeURIComponent(player)}/kick`, reason ? { reason } : {});
}

// ---- players ----

async function findPlayers() {
  try {
    const reply = await api("GET", "/api/players?q=" + encodeURIComponent($("#player-q").value));
    $("#players tbody").replaceChildren(...reply.players.map((p) => el("tr", { "data-player": p.player },
      el("td", {}, p.player), el("td", {}, p.name), el("td", {}, p.shard), el("td", {}, p.room || "-"),
      el("td", {}, secs(p.session_age_s)), el("td", {}, p.presence === "connected" ? "connected" : "resume seat held"),
      el("td", { class: "op-only" },
        el("button", { class: "kick", onclick: () => kick(p.player) }, "Kick"), " ",
        el("button", { class: "ban", onclick: () => { $("#ban-player").value = p.player; $("#ban-reason").focus(); } }, "Ban…")))));
    if (reply.truncated) flash("more players matched; narrow the search");
  } catch (e) {
    flash("search failed: " + e.message, true);
  }
}

// ---- events ----

let lastEvents = [];
async function refreshEvents() {
  if ($("#tab-events").hidden) return;
  try {
    const reply = await api("GET", "/api/events");
    // The directory's stream (shard up/down, rooms placed, moved, failed
    // over) beside each shard's own events, in one time order.
    const cluster = (reply.cluster_events || []).map((e) => ({ ...e, source: "directory" }));
    lastEvents = reply.events.map((e) => ({ ...e, source: "shard" })).concat(cluster).sort((a, b) => a.at_ms - b.at_ms);
    renderEvents();
  } catch (e) {
    flash("events: " + e.message, true);
  }
}

// Keeps a select's options the union of what it had and `values`.
function offer(select, values) {
  const have = new Set([...select.options].map((o) => o.value));
  for (const v of values) if (v && !have.has(v)) { select.append(el("option", { value: v }, v)); have.add(v); }
}

function renderEvents() {
  offer($("#events-kind"), lastEvents.map((e) => e.kind));
  offer($("#events-shard"), lastEvents.map((e) => e.shard));
  const text = $("#events-filter").value.toLowerCase();
  const kind = $("#events-kind").value;
  const shard = $("#events-shard").value;
  const rows = lastEvents
    .filter((e) => !kind || e.kind === kind)
    .filter((e) => !shard || e.shard === shard)
    .filter((e) => !text || [e.subject, e.detail, e.actor, e.action, e.shard].join(" ").toLowerCase().includes(text))
    .slice(-500)
    .reverse()
    .map((e) => el("tr", { "data-kind": e.kind, "data-source": e.source },
      el("td", {}, new Date(e.at_ms).toLocaleTimeString()), el("td", {}, e.shard), el("td", {}, e.kind),
      el("td", {}, e.subject), el("td", {}, e.actor || ""), el("td", {}, e.action || ""), el("td", {}, e.result || ""), el("td", {}, e.detail)));
  $("#events tbody").replaceChildren(...rows);
}

// ---- wiring ----

function showTab(name) {
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const t of document.querySelectorAll(".tab")) t.hidden = t.id !== "tab-" + name;
  if (name === "events") refreshEvents();
  if (name === "rooms") refreshInspector();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("#token").value.trim()); });
  $("#logout").addEventListener("click", () => signOut(""));
  for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("#announce-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("#announce-text").value;
    const map = $("#announce-map").value.trim();
    act("announce", "POST", "/api/announce", map ? { text, map } : { text });
  });
  $("#player-form").addEventListener("submit", (e) => { e.preventDefault(); findPlayers(); });
  $("#ban-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const player = $("#ban-player").value.trim();
    const secsText = $("#ban-duration").value.trim();
    const body = { reason: $("#ban-reason").value };
    if (secsText) body.duration_s = Number(secsText);
    act("ban " + player, "POST", `/api/players/${encodeURIComponent(player)}/ban`, body);
  });
  $("#unban-btn").addEventListener("click", () => {
    const player = $("#ban-player").value.trim();
    if (player) act("unban " + player, "POST", `/api/players/${encodeURIComponent(player)}/unban`, {});
  });
  $("#events-filter").addEventListener("input", renderEvents);
  $("#events-kind").addEventListener("change", renderEvents);
  $("#events-shard").addEventListener("change", renderEvents);
  setInterval(refreshInspector, 1000);
  setInterval(refreshEvents, 2000);
  if (state.token) signIn(state.token);
});
