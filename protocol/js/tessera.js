// Tessera browser client: the wire protocol of protocol/PROTOCOL.md (v1.5).
//
// Layout
// - MessagePack: `encode` / `decode`, a small codec for exactly what the
//   protocol uses (nil, bool, ints, float32/64, str, bin, array, map).
//   `f32(x)` marks a number to go out as float32; everything else picks the
//   smallest encoding, as the server does.
// - Messages: `messages.*` build client messages with fields in PROTOCOL.md
//   order; `encodeMessage` / `decodeMessage` frame them as `{type: body}`.
// - `View`: the entities a player sees, kept from `joined` and `update`,
//   and the items lying on the map, kept from `joined` and `items`.
// - `TesseraClient`: one WebSocket session (hello, join, move, chat, ping,
//   give, pick_up) with an event API; it keeps a `View` up to date on its own.
//
// No dependencies and no I/O besides the WebSocket the caller asks for, so
// the same file runs in browsers and in node (tests pass a fake socket).

export const PROTOCOL_VERSION = Object.freeze({ major: 1, minor: 6 });

/** Notice 6004 and close 4008: the shard is draining (a rolling deploy). */
export const NOTICE_SHARD_DRAINING = 6004;
export const CLOSE_DRAINING = 4008;

/**
 * Whether a close asks the client to reconnect at once, without backoff,
 * through the same URL and with its resume token: a draining shard (4008),
 * whose players another shard takes at once. Every other close that allows
 * a reconnect (1001 shutdown, 1006 lost, ...) wants a backoff.
 */
export const reconnectAtOnce = (code) => code === CLOSE_DRAINING;

// ---------------------------------------------------------------------------
// MessagePack

/** Every failure to decode a frame; nothing else escapes `decode`. */
export class DecodeError extends Error {
  constructor(message) {
    super(message);
    this.name = 'DecodeError';
  }
}

/** A number that must be encoded as float32 (0xca), as `f32` fields are. */
export class Float32 {
  constructor(value) {
    this.value = Number(value);
  }
  valueOf() {
    return this.value;
  }
}

export const f32 = (value) => new Float32(value);

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.view = new DataView(this.buf.buffer);
    this.len = 0;
  }

  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v) {
    this.reserve(1);
    this.buf[this.len++] = v;
  }

  // A marker byte followed by an n-byte big-endian field.
  head(marker, n, v) {
    this.reserve(1 + n);
    this.buf[this.len++] = marker;
    if (n === 1) this.view.setUint8(this.len, v);
    else if (n === 2) this.view.setUint16(this.len, v);
    else if (n === 4) this.view.setUint32(this.len, v);
    this.len += n;
  }

  bytes(b) {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  result() {
    return this.buf.slice(0, this.len);
  }
}

// Integers up to 2^53 in magnitude are exact as JS numbers.
const EXACT = 2 ** 53;
const EXACT_BIG = 2n ** 53n;
const isExactInt = (n) => Number.isInteger(n) && n >= -EXACT && n <= EXACT;

function writeInt(w, n) {
  if (n >= 0) {
    if (n < 0x80) w.u8(n);
    else if (n <= 0xff) w.head(0xcc, 1, n);
    else if (n <= 0xffff) w.head(0xcd, 2, n);
    else if (n <= 0xffffffff) w.head(0xce, 4, n);
    else writeBig(w, BigInt(n));
  } else {
    if (n >= -32) w.u8(n & 0xff);
    else if (n >= -0x80) w.head(0xd0, 1, n & 0xff);
    else if (n >= -0x8000) w.head(0xd1, 2, n & 0xffff);
    else if (n >= -0x80000000) w.head(0xd2, 4, n >>> 0);
    else writeBig(w, BigInt(n));
  }
}

function writeBig(w, n) {
  if (n >= -(1n << 31n) && n < 1n << 32n) {
    writeInt(w, Number(n));
    return;
  }
  if (n >= 0n) {
    if (n >= 1n << 64n) throw new RangeError(`integer ${n} does not fit in uint64`);
    w.reserve(9);
    w.buf[w.len] = 0xcf;
    w.view.setBigUint64(w.len + 1, n);
  } else {
    if (n < -(1n << 63n)) throw new RangeError(`integer ${n} does not fit in int64`);
    w.reserve(9);
    w.buf[w.len] = 0xd3;
    w.view.setBigInt64(w.len + 1, n);
  }
  w.len += 9;
}

function writeStr(w, s) {
  const b = textEncoder.encode(s);
  const n = b.length;
  if (n < 32) w.u8(0xa0 | n);
  else if (n <= 0xff) w.head(0xd9, 1, n);
  else if (n <= 0xffff) w.head(0xda, 2, n);
  else w.head(0xdb, 4, n);
  w.bytes(b);
}

function writeLen(w, n, fix, fixMax, m16, m32) {
  if (n <= fixMax) w.u8(fix | n);
  else if (n <= 0xffff) w.head(m16, 2, n);
  else w.head(m32, 4, n);
}

function writeValue(w, v, depth) {
  if (depth > 64) throw new RangeError('value nested too deeply to encode');
  if (v === null || v === undefined) {
    w.u8(0xc0);
  } else if (v === false || v === true) {
    w.u8(v ? 0xc3 : 0xc2);
  } else if (typeof v === 'number') {
    if (isExactInt(v)) {
      writeInt(w, v);
    } else {
      w.reserve(9);
      w.buf[w.len] = 0xcb;
      w.view.setFloat64(w.len + 1, v);
      w.len += 9;
    }
  } else if (typeof v === 'bigint') {
    writeBig(w, v);
  } else if (typeof v === 'string') {
    writeStr(w, v);
  } else if (v instanceof Float32) {
    w.reserve(5);
    w.buf[w.len] = 0xca;
    w.view.setFloat32(w.len + 1, v.value);
    w.len += 5;
  } else if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
    const b = v instanceof ArrayBuffer ? new Uint8Array(v) : v;
    if (b.length <= 0xff) w.head(0xc4, 1, b.length);
    else if (b.length <= 0xffff) w.head(0xc5, 2, b.length);
    else w.head(0xc6, 4, b.length);
    w.bytes(b);
  } else if (Array.isArray(v)) {
    writeLen(w, v.length, 0x90, 15, 0xdc, 0xdd);
    for (const item of v) writeValue(w, item, depth + 1);
  } else if (v instanceof Map) {
    const entries = [...v].filter(([, x]) => x !== undefined);
    writeLen(w, entries.length, 0x80, 15, 0xde, 0xdf);
    for (const [key, x] of entries) {
      writeValue(w, key, depth + 1);
      writeValue(w, x, depth + 1);
    }
  } else if (typeof v === 'object') {
    // Plain objects keep their insertion order, which is the field order on
    // the wire; absent (undefined) optional fields are left out.
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    writeLen(w, keys.length, 0x80, 15, 0xde, 0xdf);
    for (const key of keys) {
      writeStr(w, key);
      writeValue(w, v[key], depth + 1);
    }
  } else {
    throw new TypeError(`cannot encode a ${typeof v} as MessagePack`);
  }
}

/** Encode one value as MessagePack bytes. */
export function encode(value) {
  const w = new Writer();
  writeValue(w, value, 0);
  return w.result();
}

// Deeper than any message of the protocol; keeps hostile input off the stack.
const MAX_DEPTH = 32;

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  need(n) {
    if (this.pos + n > this.bytes.length) {
      throw new DecodeError(`truncated: needs ${n} more bytes at offset ${this.pos}`);
    }
  }

  u8() {
    this.need(1);
    return this.bytes[this.pos++];
  }

  u16() {
    this.need(2);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }

  u32() {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  int64(signed) {
    this.need(8);
    const big = signed ? this.view.getBigInt64(this.pos) : this.view.getBigUint64(this.pos);
    this.pos += 8;
    // Exact as a number up to 2^53; past that a BigInt keeps it exact.
    return big >= -EXACT_BIG && big <= EXACT_BIG ? Number(big) : big;
  }

  raw(n) {
    this.need(n);
    const b = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  str(n) {
    const b = this.raw(n);
    try {
      return textDecoder.decode(b);
    } catch {
      throw new DecodeError(`invalid UTF-8 in a string at offset ${this.pos - n}`);
    }
  }

  array(n, depth) {
    // Every element takes at least one byte: refuse lengths the frame cannot
    // hold before allocating anything.
    this.need(n);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth + 1);
    return out;
  }

  map(n, depth) {
    this.need(2 * n);
    const out = {};
    for (let i = 0; i < n; i++) {
      const at = this.pos;
      let key = this.value(depth + 1);
      if (typeof key === 'number' || typeof key === 'bigint') key = String(key);
      if (typeof key !== 'string') throw new DecodeError(`map key at offset ${at} is not a string`);
      // defineProperty, not assignment, so "__proto__" is an ordinary key.
      Object.defineProperty(out, key, {
        value: this.value(depth + 1),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }

  value(depth) {
    if (depth > MAX_DEPTH) throw new DecodeError('value nested too deeply');
    const at = this.pos;
    const m = this.u8();
    if (m < 0x80) return m;
    if (m < 0x90) return this.map(m & 0x0f, depth);
    if (m < 0xa0) return this.array(m & 0x0f, depth);
    if (m < 0xc0) return this.str(m & 0x1f);
    if (m >= 0xe0) return m - 0x100;
    switch (m) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.raw(this.u8()).slice();
      case 0xc5: return this.raw(this.u16()).slice();
      case 0xc6: return this.raw(this.u32()).slice();
      case 0xca: {
        this.need(4);
        const v = this.view.getFloat32(this.pos);
        this.pos += 4;
        return v;
      }
      case 0xcb: {
        this.need(8);
        const v = this.view.getFloat64(this.pos);
        this.pos += 8;
        return v;
      }
      case 0xcc: return this.u8();
      case 0xcd: return this.u16();
      case 0xce: return this.u32();
      case 0xcf: return this.int64(false);
      case 0xd0: return (this.u8() << 24) >> 24;
      case 0xd1: return (this.u16() << 16) >> 16;
      case 0xd2: return this.u32() | 0;
      case 0xd3: return this.int64(true);
      case 0xd9: return this.str(this.u8());
      case 0xda: return this.str(this.u16());
      case 0xdb: return this.str(this.u32());
      case 0xdc: return this.array(this.u16(), depth);
      case 0xdd: return this.array(this.u32(), depth);
      case 0xde: return this.map(this.u16(), depth);
      case 0xdf: return this.map(this.u32(), depth);
      default:
        // 0xc1 (never used) and the ext family, which the protocol never sends.
        throw new DecodeError(`unsupported MessagePack marker 0x${m.toString(16)} at offset ${at}`);
    }
  }
}

function toBytes(input) {
  if (input instanceof Uint8Array) return input;
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  throw new DecodeError('expected bytes (Uint8Array or ArrayBuffer)');
}

/** Decode exactly one MessagePack value; trailing bytes are an error. */
export function decode(input) {
  const r = new Reader(toBytes(input));
  if (r.bytes.length === 0) throw new DecodeError('empty frame');
  const value = r.value(0);
  if (r.pos !== r.bytes.length) {
    throw new DecodeError(`${r.bytes.length - r.pos} bytes after the end of the value`);
  }
  return value;
}

// ---------------------------------------------------------------------------
// Messages

const isMap = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);

/** The largest finite float32. */
const F32_MAX = 3.4028234663852886e38;

const optional = (v) => (v === undefined || v === null || v === '' ? undefined : v);

/** Builders for every client message, fields in PROTOCOL.md order. */
export const messages = {
  hello({ version = PROTOCOL_VERSION, token, resume, name } = {}) {
    return {
      hello: {
        version: { major: version.major, minor: version.minor },
        token: optional(token),
        resume: optional(resume),
        name: optional(name),
      },
    };
  },
  join: (map) => ({ join: { map: String(map) } }),
  leave: () => ({ leave: {} }),
  move: (seq, dx, dy) => {
    // A component beyond float32's range would go out infinite (and be
    // refused): scale such a direction to length 1 first, as the server
    // reads it. Anything smaller goes as it is; the server clamps it.
    const big = Math.max(Math.abs(dx), Math.abs(dy));
    if (Number.isFinite(big) && big > F32_MAX) {
      dx /= big;
      dy /= big;
      const len = Math.hypot(dx, dy);
      dx /= len;
      dy /= len;
    }
    return { move: { seq, dx: f32(dx), dy: f32(dy) } };
  },
  chat: (text) => ({ chat: { text: String(text) } }),
  ping: (t) => ({ ping: { t } }),
  give: (req, to, { currency = 0, items } = {}) => ({
    give: { req, to, currency, items: items && Object.keys(items).length ? items : undefined },
  }),
  pickUp: (req, item) => ({ pick_up: { req, item } }),
};

// Fields typed f32 in PROTOCOL.md, so that a message given as plain numbers
// encodes byte for byte as the Rust side does.
const mapF32 = (o, keys) => {
  if (!isMap(o)) return o;
  const out = { ...o };
  for (const k of keys) if (typeof out[k] === 'number') out[k] = f32(out[k]);
  return out;
};
const entitiesF32 = (list) => (Array.isArray(list) ? list.map((e) => mapF32(e, ['x', 'y'])) : list);
// Ground items carry f32 positions too.
const itemsF32 = entitiesF32;
// `moved` rows are [id, x, y, seq].
const movedF32 = (row) =>
  Array.isArray(row) ? row.map((v, i) => ((i === 1 || i === 2) && typeof v === 'number' ? f32(v) : v)) : row;
const F32_FIELDS = {
  move: (b) => mapF32(b, ['dx', 'dy']),
  joined: (b) => ({
    ...b,
    map: mapF32(b.map, ['width', 'height', 'view_radius', 'speed']),
    entities: entitiesF32(b.entities),
    items: itemsF32(b.items),
  }),
  items: (b) => ({ ...b, added: itemsF32(b.added) }),
  update: (b) => ({
    ...b,
    entered: entitiesF32(b.entered),
    moved: Array.isArray(b.moved) ? b.moved.map(movedF32) : b.moved,
  }),
};

/**
 * Encode a message `{type: body}` (client or server) as one frame. Fields the
 * protocol types as f32 go out as float32 even when given as plain numbers.
 */
export function encodeMessage(msg) {
  const keys = isMap(msg) ? Object.keys(msg) : [];
  if (keys.length !== 1) throw new TypeError('a message is an object with exactly one key, its type');
  const type = keys[0];
  const body = msg[type];
  const fix = F32_FIELDS[type];
  return encode({ [type]: fix && isMap(body) ? fix(body) : body });
}

/** Decode one frame into `{type, body}`; throws DecodeError when it is not a message. */
export function decodeMessage(bytes) {
  const value = decode(bytes);
  if (!isMap(value)) throw new DecodeError('a message must be a map');
  const keys = Object.keys(value);
  if (keys.length !== 1) throw new DecodeError(`a message map has exactly one entry, not ${keys.length}`);
  const type = keys[0];
  const body = value[type];
  if (!isMap(body)) throw new DecodeError(`the body of "${type}" must be a map`);
  return { type, body };
}

// ---------------------------------------------------------------------------
// View

/**
 * What one player sees: the map, its own entity id and every entity in view,
 * kept from `joined` and `update` messages.
 */
export class View {
  constructor() {
    this.clear();
  }

  clear() {
    /** @type {Map<number, {id:number,name:string,x:number,y:number,seq:number}>} */
    this.entities = new Map();
    /** Items lying on the map, by id. @type {Map<number, {id:number,kind:string,count:number,x:number,y:number}>} */
    this.items = new Map();
    this.map = null;
    this.you = null;
    this.tick = 0;
  }

  /** The player's own entity, when it stands in a map. */
  get me() {
    return this.you === null ? undefined : this.entities.get(this.you);
  }

  applyJoined(joined) {
    this.clear();
    this.map = joined.map;
    this.you = joined.you;
    this.tick = joined.tick;
    // Since 1.4; a server before it runs one instance per map.
    this.instance = Number.isInteger(joined.instance) ? joined.instance : 1;
    for (const e of joined.entities ?? []) this.enter(e);
    this.applyItems({ added: joined.items });
  }

  /** Apply an `items` message: `added` first, then `removed`. */
  applyItems(items) {
    for (const it of items.added ?? []) {
      if (isMap(it)) this.items.set(it.id, { id: it.id, kind: it.kind, count: it.count, x: it.x, y: it.y });
    }
    for (const id of items.removed ?? []) this.items.delete(id);
  }

  /** The ground item nearest to the player's own entity, or undefined. */
  nearestItem() {
    const me = this.me;
    if (!me) return undefined;
    let best;
    let bestD = Infinity;
    for (const it of this.items.values()) {
      const d = Math.hypot(it.x - me.x, it.y - me.y);
      if (d < bestD) {
        best = it;
        bestD = d;
      }
    }
    return best;
  }

  applyUpdate(update) {
    this.tick = update.tick;
    if (update.full) this.entities.clear();
    for (const e of update.entered ?? []) this.enter(e);
    for (const m of update.moved ?? []) {
      if (!Array.isArray(m)) continue;
      const [id, x, y, seq] = m;
      const e = this.entities.get(id);
      // A move of an entity never seen is a server bug; there is no name to
      // draw it with, so it waits for its `entered`.
      if (e) Object.assign(e, { x, y, seq });
    }
    for (const id of update.left ?? []) this.entities.delete(id);
  }

  enter(e) {
    if (!isMap(e)) return;
    this.entities.set(e.id, { id: e.id, name: e.name, x: e.x, y: e.y, seq: e.seq });
  }
}

// ---------------------------------------------------------------------------
// Client

const SERVER_EVENTS = ['welcome', 'joined', 'left', 'update', 'chat', 'announce', 'pong', 'error', 'notice', 'done', 'inventory', 'items'];

/**
 * One session with a Tessera shard.
 *
 * Events (`on(name, cb)`): `open`, `welcome`, `joined`, `left`, `update`,
 * `chat`, `announce`, `pong` (the body, plus `rtt` in ms for a timed ping),
 * `notice`, `done`, `inventory`, `items`,
 * `error` (a server error body `{code, text, req?}`: `req` when it answers a
 * `give` or `pick_up`), `close` (`{code, reason,
 * wasClean}`), `message` (every decoded `{type, body}`, unknown types
 * included), `view` (after `view` changed), and `decode_error` (a frame that
 * was not a message).
 */
export class TesseraClient {
  constructor({ WebSocket: socketImpl } = {}) {
    this.WebSocket = socketImpl ?? globalThis.WebSocket;
    this.socket = null;
    this.listeners = new Map();
    this.view = new View();
    /** 'closed' | 'connecting' | 'open' | 'welcomed' | 'joined' */
    this.state = 'closed';
    this.welcome = null;
    /** Round-trip time in ms of the last timed ping, or null. */
    this.rtt = null;
    this.pendingPings = new Set();
  }

  on(event, cb) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(cb);
    return () => this.off(event, cb);
  }

  off(event, cb) {
    this.listeners.get(event)?.delete(cb);
  }

  /** Resolve with the next `event` (matching `filter`), or reject after `timeoutMs`. */
  next(event, { timeoutMs = 5000, filter = () => true } = {}) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new Error(`no "${event}" within ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.on(event, (data) => {
        if (!filter(data)) return;
        clearTimeout(timer);
        off();
        resolve(data);
      });
    });
  }

  emit(event, data) {
    for (const cb of [...(this.listeners.get(event) ?? [])]) {
      try {
        cb(data);
      } catch (err) {
        // One broken listener must not stop the others or the socket.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  /** Open the WebSocket; resolves once it is open, rejects if it closes first. */
  connect(url) {
    if (!this.WebSocket) return Promise.reject(new Error('no WebSocket implementation'));
    this.close();
    const socket = new this.WebSocket(url);
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    this.state = 'connecting';
    return new Promise((resolve, reject) => {
      let opened = false;
      socket.onopen = () => {
        opened = true;
        if (this.socket !== socket) return;
        this.state = 'open';
        this.emit('open');
        resolve();
      };
      socket.onmessage = (ev) => {
        if (this.socket === socket) this.receive(ev.data);
      };
      socket.onerror = () => {
        // The close event that follows carries the detail.
      };
      socket.onclose = (ev) => {
        if (!opened) reject(new Error(`could not connect to ${url} (close ${ev.code})`));
        if (this.socket !== socket) return;
        this.socket = null;
        this.state = 'closed';
        this.view.clear();
        this.emit('close', { code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
      };
    });
  }

  close(code = 1000, reason = '') {
    const socket = this.socket;
    if (!socket) return;
    this.socket = null;
    this.state = 'closed';
    this.view.clear();
    socket.close(code, reason);
    this.emit('close', { code, reason, wasClean: true });
  }

  send(msg) {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1) throw new Error('not connected');
    socket.send(encodeMessage(msg));
  }

  hello(opts = {}) {
    this.send(messages.hello(opts));
  }

  join(map) {
    this.send(messages.join(map));
  }

  leave() {
    this.send(messages.leave());
  }

  move(seq, dx, dy) {
    this.send(messages.move(seq, dx, dy));
  }

  chat(text) {
    this.send(messages.chat(text));
  }

  give(req, to, opts) {
    this.send(messages.give(req, to, opts));
  }

  /** Pick up ground item `item`; answered by `done` (with `req`) or an `error`. */
  pickUp(req, item) {
    this.send(messages.pickUp(req, item));
  }

  /**
   * Send a ping. Without `t` it carries a microsecond clock reading, and its
   * pong sets `rtt` (ms); a caller's own `t` is echoed but not timed.
   */
  ping(t) {
    if (t === undefined) {
      t = clockMicros();
      this.pendingPings.add(t);
      // Pongs that never come must not pile up.
      if (this.pendingPings.size > 32) this.pendingPings.delete(this.pendingPings.values().next().value);
    }
    this.send(messages.ping(t));
  }

  receive(data) {
    let msg;
    try {
      if (!(data instanceof ArrayBuffer || ArrayBuffer.isView(data))) {
        throw new DecodeError('a text frame: the protocol sends binary frames only');
      }
      msg = decodeMessage(data);
    } catch (err) {
      this.emit('decode_error', err);
      return;
    }
    const { type, body } = msg;
    switch (type) {
      case 'welcome':
        this.welcome = body;
        this.state = 'welcomed';
        break;
      case 'joined':
        this.state = 'joined';
        this.view.applyJoined(body);
        break;
      case 'update':
        this.view.applyUpdate(body);
        break;
      case 'items':
        this.view.applyItems(body);
        break;
      case 'left':
        this.state = 'welcomed';
        this.view.clear();
        break;
      case 'pong':
        if (this.pendingPings.delete(body.t)) {
          this.rtt = (clockMicros() - body.t) / 1000;
          body.rtt = this.rtt;
        }
        break;
      default:
        break;
    }
    this.emit('message', msg);
    if (SERVER_EVENTS.includes(type)) this.emit(type, body);
    if (type === 'joined' || type === 'update' || type === 'left' || type === 'items') this.emit('view', this.view);
  }
}

function clockMicros() {
  const now = globalThis.performance?.now?.() ?? Date.now();
  return Math.round(now * 1000);
}
