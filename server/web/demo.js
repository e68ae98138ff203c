// Tessera demo page: connect, say hello, join a map, walk around, chat, and
// pick up the items lying on the map (E or Space: the nearest one).
//
// Query string: ?name=ada  display name asked for (guest)
//               ?map=lobby map to join (default lobby)
//               ?ws=ws://host:port/  game address (default: this host, the
//                                    port from /client-config.json)
//
// Tests read `window.tessera` ({client, view, me}) and wait for
// `document.body.dataset.state === 'joined'`.

import { TesseraClient, reconnectAtOnce } from './tessera.js';

const params = new URLSearchParams(location.search);
const playerName = params.get('name') || undefined;
const mapName = params.get('map') || 'lobby';

const PING_EVERY_MS = 2000;
const MOVE_RESEND_MS = 100; // re-send a held direction at most ~10 Hz
const CHAT_LOG_LINES = 200;

const $ = (id) => document.getElementById(id);
const canvas = $('map');
const ctx = canvas.getContext('2d');
const statusText = $('status-text');
const chatLog = $('chat-log');
const chatForm = $('chat-form');
const chatInput = $('chat-input');
const chatSend = $('chat-send');

const client = new TesseraClient();
const view = client.view;

window.tessera = {
  client,
  view,
  get me() {
    return view.me;
  },
  get rtt() {
    return client.rtt;
  },
  /** The seq of the last move sent. */
  get moveSeq() {
    return seq;
  },
};

// ---------------------------------------------------------------------------
// Session

let resumeToken;
let reconnectDelay = 1000;
let pingTimer;

function setState(state) {
  document.body.dataset.state = state;
  chatSend.disabled = state !== 'joined';
  renderStatus();
}

async function gameUrl() {
  const override = params.get('ws');
  if (override) return override;
  let port = 7350;
  try {
    const res = await fetch('client-config.json', { cache: 'no-store' });
    if (res.ok) port = (await res.json()).ws_port ?? port;
  } catch {
    // No config (page opened from elsewhere): keep the protocol's default.
  }
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.hostname || '127.0.0.1'}:${port}/`;
}

async function start() {
  setState('connecting');
  const url = await gameUrl();
  try {
    await client.connect(url);
  } catch {
    return; // the close handler has logged it and schedules the retry
  }
  reconnectDelay = 1000;
  client.hello({ name: playerName, resume: resumeToken });
}

client.on('welcome', (w) => {
  resumeToken = w.resume_token;
  setState('welcomed');
  logLine('system', `welcome, ${w.name} (${w.player_id})`);
  client.join(mapName);
  client.ping();
  clearInterval(pingTimer);
  pingTimer = setInterval(() => client.state !== 'closed' && client.ping(), PING_EVERY_MS);
});

client.on('joined', (j) => {
  setState('joined');
  logLine('system', `joined ${j.map.name} as #${j.you}`);
  shown.clear();
  lastDir = [0, 0];
  sendMove(); // keys already held keep walking after a rejoin
  invalidate();
});

client.on('left', (l) => {
  setState('welcomed');
  logLine('system', `left ${l.map}`);
  invalidate();
});

client.on('update', invalidate);
client.on('items', invalidate);
client.on('done', (d) => {
  const items = Object.entries(d.inventory.items ?? {}).map(([k, n]) => `${k} ×${n}`);
  logLine('system', `picked up (req ${d.req}); you hold ${items.join(', ') || 'nothing'}, ${d.inventory.currency} coins`);
});
client.on('pong', renderStatus);

client.on('chat', (c) => {
  const li = logLine(c.from === view.you ? 'mine' : 'chat', '');
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = c.name;
  li.append(who, `: ${c.text}`);
});

client.on('announce', (a) => logLine('announce', `[server] ${a.text}`));
client.on('error', (e) => logLine('error', `error ${e.code}: ${e.text}`));

client.on('close', ({ code, reason }) => {
  clearInterval(pingTimer);
  setState('closed');
  invalidate();
  if (code === 4002) {
    logLine('error', `disconnected (${code} ${reason}): this page speaks another protocol version`);
    return;
  }
  if (code === 4006) {
    // The same player logged in again (another tab or device) and has the
    // seat now; reconnecting would only take it back and forth.
    logLine('system', `disconnected (${code} ${reason}): signed in elsewhere; reload to play here`);
    return;
  }
  if (code === 4007) {
    // An operator kicked or banned the player (the error before the close
    // says which and why): coming straight back would defeat it.
    logLine('system', `disconnected (${code} ${reason}): removed by an operator; reload to come back`);
    return;
  }
  if (reconnectAtOnce(code)) {
    // The shard is draining (notice 6004 came first): another shard takes
    // the seat over at once, through the same URL, with the resume token.
    logLine('system', `disconnected (${code} ${reason}): shard draining; reconnecting now`);
    setTimeout(start, 0);
    return;
  }
  // A resume token a restarted server does not know gets 4003: start fresh.
  if (code === 4003) resumeToken = undefined;
  logLine('system', `disconnected (${code}${reason ? ` ${reason}` : ''}); reconnecting`);
  setTimeout(start, reconnectDelay);
  reconnectDelay = Math.min(reconnectDelay * 2, 15000);
});

function renderStatus() {
  const parts = [];
  const state = document.body.dataset.state;
  parts.push(state === 'connecting' ? 'connecting…' : state === 'closed' ? 'disconnected' : 'connected');
  if (client.rtt !== null && state !== 'closed') parts.push(`ping ${client.rtt.toFixed(1)} ms`);
  if (client.welcome && state !== 'closed') {
    const id = view.you !== null ? `#${view.you} ` : '';
    parts.push(`you ${id}${client.welcome.name} (${client.welcome.player_id})`);
  }
  if (view.map) parts.push(`map ${view.map.name}`, `tick ${view.tick}`, `${view.entities.size} in view`);
  const text = parts.join(' · ');
  if (statusText.textContent !== text) statusText.textContent = text;
}

// ---------------------------------------------------------------------------
// Chat

function logLine(kind, text) {
  const stick = chatLog.scrollTop + chatLog.clientHeight >= chatLog.scrollHeight - 4;
  const li = document.createElement('li');
  li.className = kind;
  li.textContent = text;
  chatLog.append(li);
  while (chatLog.children.length > CHAT_LOG_LINES) chatLog.firstElementChild.remove();
  if (stick) chatLog.scrollTop = chatLog.scrollHeight;
  return li;
}

chatForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = chatInput.value.trim();
  if (!text || client.state !== 'joined') return;
  client.chat(text);
  chatInput.value = '';
});

chatInput.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape') canvas.focus();
});

// ---------------------------------------------------------------------------
// Movement

const KEY_DIRS = {
  ArrowUp: [0, -1], KeyW: [0, -1],
  ArrowDown: [0, 1], KeyS: [0, 1],
  ArrowLeft: [-1, 0], KeyA: [-1, 0],
  ArrowRight: [1, 0], KeyD: [1, 0],
};
const held = new Set();
let seq = 0;
let lastDir = [0, 0];
let lastSentAt = 0;

function heldDirection() {
  let dx = 0;
  let dy = 0;
  for (const code of held) {
    dx += KEY_DIRS[code][0];
    dy += KEY_DIRS[code][1];
  }
  const len = Math.hypot(dx, dy);
  return len > 0 ? [dx / len, dy / len] : [0, 0];
}

/** Send the held direction if it changed, or always when `resend`. */
function sendMove(resend = false) {
  if (client.state !== 'joined') return;
  const dir = heldDirection();
  if (!resend && dir[0] === lastDir[0] && dir[1] === lastDir[1]) return;
  lastDir = dir;
  lastSentAt = performance.now();
  client.move(++seq, dir[0], dir[1]);
}

const typing = (ev) => ev.target instanceof HTMLInputElement || ev.target instanceof HTMLTextAreaElement;

window.addEventListener('keydown', (ev) => {
  if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === 'Enter') {
    ev.preventDefault();
    chatInput.focus();
    return;
  }
  if (ev.code === 'KeyE' || ev.code === 'Space') {
    ev.preventDefault();
    pickUpNearest();
    return;
  }
  if (!(ev.code in KEY_DIRS)) return;
  ev.preventDefault();
  held.add(ev.code);
  sendMove();
});

let pickReq = 0;

/** Ask for the nearest ground item; the server says whether it is in reach. */
function pickUpNearest() {
  if (client.state !== 'joined') return;
  const item = view.nearestItem();
  if (!item) {
    logLine('system', 'nothing lying on this map');
    return;
  }
  client.pickUp(++pickReq, item.id);
}

// Key-ups count wherever focus went, or a key released in the chat box
// would keep the player walking.
window.addEventListener('keyup', (ev) => {
  if (held.delete(ev.code)) sendMove();
});

window.addEventListener('blur', () => {
  held.clear();
  sendMove();
});

setInterval(() => {
  const moving = lastDir[0] !== 0 || lastDir[1] !== 0;
  if (moving && performance.now() - lastSentAt >= MOVE_RESEND_MS - 5) sendMove(true);
}, MOVE_RESEND_MS);

// ---------------------------------------------------------------------------
// Drawing

const css = getComputedStyle(document.documentElement);
const colour = (name) => css.getPropertyValue(name).trim();
const COLOURS = {
  bg: colour('--bg'),
  line: colour('--line'),
  text: colour('--text'),
  muted: colour('--muted'),
  me: colour('--me'),
  other: colour('--other'),
  item: '#7fd6c2',
};

// Where each entity is drawn: eased toward its last known position so that
// 20 Hz updates look like walking.
const shown = new Map();
let frameId = 0;
let frameWanted = false;
let lastFrameAt = performance.now();

function invalidate() {
  if (frameWanted) return;
  frameWanted = true;
  const id = ++frameId;
  requestAnimationFrame((now) => id === frameId && frame(now));
  // A hidden tab gets no animation frames; still keep the picture current.
  setTimeout(() => id === frameId && frameWanted && frame(performance.now()), 250);
}

function frame(now) {
  frameWanted = false;
  const dt = Math.min(0.25, Math.max(0, (now - lastFrameAt) / 1000));
  lastFrameAt = now;
  renderStatus();
  if (draw(dt)) invalidate();
}

/** Draw one frame; true while something is still easing toward its target. */
function draw(dt) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = COLOURS.bg;
  ctx.fillRect(0, 0, w, h);

  const map = view.map;
  if (!map) {
    ctx.fillStyle = COLOURS.muted;
    ctx.font = '14px system-ui, sans-serif';
    ctx.textAlign = 'center';
    const state = document.body.dataset.state;
    const text = { closed: 'disconnected', welcomed: 'not in a map' }[state] ?? 'connecting…';
    ctx.fillText(text, w / 2, h / 2);
    return false;
  }

  // Fit the map, leaving room for names at the top and the hint below.
  const pad = 24;
  const hint = 32;
  const scale = Math.max(0.0001, Math.min((w - 2 * pad) / map.width, (h - 2 * pad - hint) / map.height));
  const ox = (w - map.width * scale) / 2;
  const oy = pad + (h - 2 * pad - hint - map.height * scale) / 2;
  const sx = (x) => ox + x * scale;
  const sy = (y) => oy + y * scale;

  // The map: its bounds and a light grid of about ten cells a side.
  ctx.fillStyle = '#131a29';
  ctx.fillRect(ox, oy, map.width * scale, map.height * scale);
  ctx.strokeStyle = COLOURS.line;
  ctx.lineWidth = 1;
  ctx.beginPath();
  const step = niceStep(Math.max(map.width, map.height) / 10);
  for (let x = step; x < map.width; x += step) {
    ctx.moveTo(Math.round(sx(x)) + 0.5, oy);
    ctx.lineTo(Math.round(sx(x)) + 0.5, oy + map.height * scale);
  }
  for (let y = step; y < map.height; y += step) {
    ctx.moveTo(ox, Math.round(sy(y)) + 0.5);
    ctx.lineTo(ox + map.width * scale, Math.round(sy(y)) + 0.5);
  }
  ctx.stroke();
  ctx.strokeStyle = COLOURS.muted;
  ctx.strokeRect(ox + 0.5, oy + 0.5, map.width * scale - 1, map.height * scale - 1);

  // Ease every entity toward where the server last put it.
  let easing = false;
  const k = 1 - Math.exp(-dt * 18);
  for (const id of shown.keys()) if (!view.entities.has(id)) shown.delete(id);
  for (const e of view.entities.values()) {
    const s = shown.get(e.id);
    if (!s || Math.hypot(e.x - s.x, e.y - s.y) > map.speed) {
      shown.set(e.id, { x: e.x, y: e.y });
      continue;
    }
    s.x += (e.x - s.x) * k;
    s.y += (e.y - s.y) * k;
    if (Math.abs(e.x - s.x) * scale > 0.05 || Math.abs(e.y - s.y) * scale > 0.05) easing = true;
    else Object.assign(s, { x: e.x, y: e.y });
  }

  // What the server lets this player see.
  const me = view.me && shown.get(view.you);
  if (me) {
    ctx.beginPath();
    ctx.arc(sx(me.x), sy(me.y), map.view_radius * scale, 0, Math.PI * 2);
    ctx.fillStyle = 'rgba(255, 181, 71, 0.05)';
    ctx.fill();
    ctx.strokeStyle = 'rgba(255, 181, 71, 0.25)';
    ctx.setLineDash([4, 4]);
    ctx.stroke();
    ctx.setLineDash([]);
  }

  // Ground items: small diamonds under the players.
  ctx.fillStyle = COLOURS.item;
  for (const it of view.items.values()) {
    const x = sx(it.x);
    const y = sy(it.y);
    ctx.beginPath();
    ctx.moveTo(x, y - 5);
    ctx.lineTo(x + 4, y);
    ctx.lineTo(x, y + 5);
    ctx.lineTo(x - 4, y);
    ctx.closePath();
    ctx.fill();
  }

  ctx.font = '12px system-ui, sans-serif';
  ctx.textAlign = 'center';
  ctx.textBaseline = 'bottom';
  // Others first, so one's own dot is never hidden.
  const order = [...view.entities.values()].sort((a, b) => (a.id === view.you) - (b.id === view.you));
  for (const e of order) {
    const s = shown.get(e.id);
    const mine = e.id === view.you;
    const x = sx(s.x);
    const y = sy(s.y);
    ctx.beginPath();
    ctx.arc(x, y, mine ? 6 : 5, 0, Math.PI * 2);
    ctx.fillStyle = mine ? COLOURS.me : COLOURS.other;
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = COLOURS.bg;
    ctx.stroke();
    ctx.fillStyle = mine ? COLOURS.me : COLOURS.text;
    ctx.fillText(e.name ?? `#${e.id}`, x, y - 9);
  }
  return easing;
}

function niceStep(raw) {
  const pow = 10 ** Math.floor(Math.log10(raw || 1));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

new ResizeObserver(invalidate).observe(canvas);
canvas.focus();
start();
