// The browser codec against the golden vectors the Rust crate pins
// (protocol/tests/golden/*.hex), plus MessagePack edge cases, hostile input
// and the client's session and view handling over a fake socket.
//
// Run: node --test protocol/js/test/*.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  DecodeError,
  TesseraClient,
  View,
  decode,
  decodeMessage,
  encode,
  encodeMessage,
  f32,
  messages,
  reconnectAtOnce,
} from '../tessera.js';

const goldenDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'tests', 'golden');
// The client protocol's vectors; `peer_*` are the shard-to-shard tunnel's
// (protocol/PEER.md), which no browser speaks.
const golden = Object.fromEntries(
  readdirSync(goldenDir)
    .filter((f) => f.endsWith('.hex') && !f.startsWith('peer_'))
    .map((f) => [f.slice(0, -4), Buffer.from(readFileSync(join(goldenDir, f), 'utf8').trim(), 'hex')]),
);
const hex = (bytes) => Buffer.from(bytes).toString('hex');

// What every golden vector holds, as decoded JS values.
const EXPECTED = {
  client_hello: { hello: { version: { major: 1, minor: 0 }, name: 'ada' } },
  client_hello_token: { hello: { version: { major: 1, minor: 0 }, token: 'tok', resume: 'res' } },
  client_join: { join: { map: 'lobby' } },
  client_leave: { leave: {} },
  client_move: { move: { seq: 42, dx: 1, dy: -0.5 } },
  client_chat: { chat: { text: 'hi' } },
  client_ping: { ping: { t: 123456 } },
  server_welcome: {
    welcome: {
      version: { major: 1, minor: 0 },
      player_id: 'g-1',
      name: 'ada',
      session_id: 's-1',
      resume_token: 'r',
      tick_hz: 20,
      limits: {
        max_frame_bytes: 4096,
        move_per_sec: 30,
        move_burst: 60,
        chat_per_sec: 2,
        chat_burst: 5,
        control_per_sec: 10,
        control_burst: 20,
        chat_max_chars: 200,
        idle_timeout_ms: 30000,
      },
      maps: ['lobby'],
    },
  },
  server_joined: {
    joined: {
      map: { name: 'lobby', width: 1000, height: 1000, tick_hz: 20, view_radius: 400, speed: 200 },
      you: 1,
      tick: 7,
      entities: [{ id: 1, name: 'ada', x: 500, y: 500, seq: 0 }],
    },
  },
  server_update: {
    update: {
      tick: 8,
      entered: [{ id: 2, name: 'bob', x: 10, y: 20, seq: 3 }],
      moved: [[1, 510, 500, 42]],
      left: [3],
    },
  },
  server_update_full: { update: { tick: 9, full: true } },
  server_left: { left: { map: 'lobby' } },
  server_chat: { chat: { from: 1, name: 'ada', text: 'hi' } },
  server_announce: { announce: { text: 'restart in 5 min' } },
  server_pong: { pong: { t: 123456, server_ms: 1700000000000 } },
  server_error: { error: { code: 1003, text: 'join a map first' } },
  server_error_req: { error: { code: 3006, text: 'not enough currency', req: 9 } },
  server_notice: { notice: { code: 6001, text: 'room restarted' } },
  server_done: { done: { req: 9, inventory: { currency: 75 } } },
  server_inventory: { inventory: { currency: 125, items: { gem: 1 } } },
  client_give: { give: { req: 9, to: 2, currency: 25, items: { gem: 1 } } },
  client_pick_up: { pick_up: { req: 3, item: 12 } },
  server_joined_items: {
    joined: {
      map: { name: 'lobby', width: 1000, height: 1000, tick_hz: 20, view_radius: 400, speed: 200 },
      you: 1,
      tick: 7,
      entities: [{ id: 1, name: 'ada', x: 500, y: 500, seq: 0 }],
      items: [{ id: 12, kind: 'gem', count: 1, x: 250, y: 100 }],
    },
  },
  server_joined_instance: {
    joined: {
      map: { name: 'lobby', width: 1000, height: 1000, tick_hz: 20, view_radius: 400, speed: 200 },
      you: 1,
      tick: 7,
      entities: [{ id: 1, name: 'ada', x: 500, y: 500, seq: 0 }],
      instance: 2,
    },
  },
  server_items: { items: { added: [{ id: 13, kind: 'gem', count: 2, x: 10, y: 20 }], removed: [12] } },
};

// The golden vectors were written by a 1.0 peer; builders take the version.
const V1_0 = { major: 1, minor: 0 };

test('every golden vector is covered by this test', () => {
  assert.deepEqual(Object.keys(golden).sort(), Object.keys(EXPECTED).sort());
});

for (const [name, expected] of Object.entries(EXPECTED)) {
  test(`decodes golden ${name}`, () => {
    assert.ok(golden[name], `protocol/tests/golden/${name}.hex exists`);
    assert.deepEqual(decode(golden[name]), expected);
    const [type] = Object.keys(expected);
    assert.deepEqual(decodeMessage(golden[name]), { type, body: expected[type] });
  });

  // Decoding forgets which numbers were float32; encodeMessage knows the
  // protocol's f32 fields and so gives back the same bytes.
  test(`re-encodes golden ${name} byte for byte`, () => {
    assert.equal(hex(encodeMessage(decode(golden[name]))), hex(golden[name]));
  });
}

test('client message builders give the golden bytes', () => {
  const cases = [
    ['client_hello', messages.hello({ version: V1_0, name: 'ada' })],
    ['client_hello_token', messages.hello({ version: V1_0, token: 'tok', resume: 'res' })],
    // Option order must not matter: the wire order is PROTOCOL.md's.
    ['client_hello_token', messages.hello({ resume: 'res', token: 'tok', name: undefined, version: V1_0 })],
    ['client_join', messages.join('lobby')],
    ['client_give', messages.give(9, 2, { currency: 25, items: { gem: 1 } })],
    ['client_pick_up', messages.pickUp(3, 12)],
    ['client_leave', messages.leave()],
    ['client_move', messages.move(42, 1, -0.5)],
    ['client_chat', messages.chat('hi')],
    ['client_ping', messages.ping(123456)],
  ];
  for (const [name, msg] of cases) {
    assert.equal(hex(encodeMessage(msg)), hex(golden[name]), name);
    assert.equal(hex(encode(msg)), hex(golden[name]), `${name} through plain encode`);
  }
});

test('a move given as plain numbers still sends float32 directions', () => {
  const bytes = encodeMessage({ move: { seq: 42, dx: 1, dy: -0.5 } });
  assert.equal(hex(bytes), hex(golden.client_move));
  assert.equal(hex(bytes), '81a46d6f766583a37365712aa26478ca3f800000a26479cabf000000');
});

test('the client sends the golden bytes over its socket', async () => {
  const { client, socket } = await connected();
  client.hello({ version: V1_0, name: 'ada' });
  client.hello({ version: V1_0, token: 'tok', resume: 'res' });
  client.join('lobby');
  client.move(42, 1, -0.5);
  client.chat('hi');
  client.ping(123456);
  client.leave();
  client.give(9, 2, { currency: 25, items: { gem: 1 } });
  client.pickUp(3, 12);
  const names = ['hello', 'hello_token', 'join', 'move', 'chat', 'ping', 'leave', 'give', 'pick_up'];
  assert.deepEqual(socket.sent.map(hex), names.map((n) => hex(golden[`client_${n}`])));
  assert.equal(socket.binaryType, 'arraybuffer');
});

// ---------------------------------------------------------------------------
// MessagePack edge cases

test('integers take the smallest encoding', () => {
  const cases = [
    [0, '00'], [127, '7f'], [128, 'cc80'], [255, 'ccff'], [256, 'cd0100'], [65535, 'cdffff'],
    [65536, 'ce00010000'], [4294967295, 'ceffffffff'], [4294967296, 'cf0000000100000000'],
    [2 ** 53, 'cf0020000000000000'], [Number.MAX_SAFE_INTEGER, 'cf001fffffffffffff'],
    [-1, 'ff'], [-32, 'e0'], [-33, 'd0df'], [-128, 'd080'], [-129, 'd1ff7f'], [-32768, 'd18000'],
    [-32769, 'd2ffff7fff'], [-(2 ** 31), 'd280000000'], [-(2 ** 31) - 1, 'd3ffffffff7fffffff'],
    [Number.MIN_SAFE_INTEGER, 'd3ffe0000000000001'],
  ];
  for (const [n, expected] of cases) {
    assert.equal(hex(encode(n)), expected, `encode ${n}`);
    assert.equal(decode(Buffer.from(expected, 'hex')), n, `decode ${expected}`);
  }
});

test('64-bit integers are exact to 2^53 and BigInt past it', () => {
  assert.equal(decode(Buffer.from('cf0020000000000000', 'hex')), 2 ** 53);
  assert.equal(decode(Buffer.from('d3ffe0000000000000', 'hex')), -(2 ** 53));
  assert.equal(decode(Buffer.from('cf0020000000000001', 'hex')), 2n ** 53n + 1n);
  assert.equal(decode(Buffer.from('cfffffffffffffffff', 'hex')), 2n ** 64n - 1n);
  assert.equal(decode(Buffer.from('d38000000000000000', 'hex')), -(2n ** 63n));
  assert.equal(hex(encode(2n ** 64n - 1n)), 'cfffffffffffffffff');
  assert.equal(hex(encode(-(2n ** 63n))), 'd38000000000000000');
  assert.equal(hex(encode(5n)), '05');
  assert.throws(() => encode(2n ** 64n), RangeError);
  // Narrow signed forms decode with their sign.
  assert.equal(decode(Buffer.from('d0ff', 'hex')), -1);
  assert.equal(decode(Buffer.from('d1ffff', 'hex')), -1);
  assert.equal(decode(Buffer.from('d2ffffffff', 'hex')), -1);
  assert.equal(decode(Buffer.from('d07f', 'hex')), 127);
});

test('floats: float64 by default, float32 when marked', () => {
  assert.equal(hex(encode(0.5)), 'cb3fe0000000000000');
  assert.equal(hex(encode(f32(0.5))), 'ca3f000000');
  assert.equal(hex(encode(f32(1))), 'ca3f800000');
  assert.equal(decode(Buffer.from('ca3f000000', 'hex')), 0.5);
  assert.equal(decode(Buffer.from('cb3fe0000000000000', 'hex')), 0.5);
  assert.equal(decode(encode(f32(0.1))), Math.fround(0.1));
  assert.ok(Number.isNaN(decode(encode(NaN))));
  assert.equal(decode(encode(Infinity)), Infinity);
  assert.equal(decode(encode(-1.25e300)), -1.25e300);
});

test('strings: fixstr, str8, str16, str32 and UTF-8', () => {
  for (const [len, prefix] of [[0, 'a0'], [31, 'bf'], [32, 'd920'], [255, 'd9ff'], [256, 'da0100'], [65536, 'db00010000']]) {
    const s = 'x'.repeat(len);
    const bytes = encode(s);
    assert.equal(hex(bytes.subarray(0, prefix.length / 2)), prefix, `length ${len}`);
    assert.equal(bytes.length, prefix.length / 2 + len);
    assert.equal(decode(bytes), s);
  }
  const unicode = 'héllo, 世界 🎲';
  assert.equal(decode(encode(unicode)), unicode);
  assert.equal(encode(unicode)[0], 0xa0 | new TextEncoder().encode(unicode).length);
  assert.throws(() => decode(Buffer.from('a2c328', 'hex')), DecodeError, 'invalid UTF-8');
});

test('bin, arrays and maps of every width', () => {
  const bin = new Uint8Array([1, 2, 3]);
  assert.equal(hex(encode(bin)), 'c403010203');
  assert.deepEqual(decode(encode(bin)), bin);
  assert.equal(hex(encode(new Uint8Array(256)).subarray(0, 3)), 'c50100');
  assert.equal(hex(encode(new Uint8Array(65536)).subarray(0, 5)), 'c600010000');
  assert.deepEqual(decode(encode(new Uint8Array(65536))), new Uint8Array(65536));

  for (const [len, prefix] of [[0, '90'], [15, '9f'], [16, 'dc0010'], [65536, 'dd00010000']]) {
    const arr = Array.from({ length: len }, (_, i) => i % 100);
    const bytes = encode(arr);
    assert.equal(hex(bytes.subarray(0, prefix.length / 2)), prefix);
    assert.deepEqual(decode(bytes), arr);
  }
  for (const [len, prefix] of [[0, '80'], [15, '8f'], [16, 'de0010'], [65536, 'df00010000']]) {
    const obj = Object.fromEntries(Array.from({ length: len }, (_, i) => [`k${i}`, i]));
    const bytes = encode(obj);
    assert.equal(hex(bytes.subarray(0, prefix.length / 2)), prefix);
    assert.deepEqual(decode(bytes), obj);
  }
  assert.equal(hex(encode(new Map([['a', 1]]))), '81a16101');
  assert.equal(hex(encode({ a: 1, b: undefined, c: null })), '82a16101a163c0');
  assert.deepEqual(decode(encode([null, true, false, 'a', [1, { b: -1 }]])), [null, true, false, 'a', [1, { b: -1 }]]);
});

test('map keys: integer keys become strings, "__proto__" stays an own key', () => {
  assert.deepEqual(decode(Buffer.from('8101a161', 'hex')), { 1: 'a' });
  const obj = decode(encode(new Map([['__proto__', { polluted: true }]])));
  assert.equal(Object.getPrototypeOf(obj), Object.prototype);
  assert.deepEqual(Object.keys(obj), ['__proto__']);
  assert.equal({}.polluted, undefined);
  assert.throws(() => decode(Buffer.from('8191a0a0', 'hex')), DecodeError, 'array as key');
});

test('malformed frames are DecodeErrors with a reason', () => {
  const bad = {
    'empty': '',
    'truncated map': '82a16101',
    'truncated str': 'a5616263',
    'trailing bytes': '0000',
    'unused marker': 'c1',
    'ext': 'd40100',
    'huge array length': 'ddffffffff',
    'huge map length': 'dfffffffff',
    'huge bin length': 'c6ffffffff00',
  };
  for (const [what, h] of Object.entries(bad)) {
    assert.throws(() => decode(Buffer.from(h, 'hex')), DecodeError, what);
  }
  assert.throws(() => decode(Buffer.from('91'.repeat(100) + '00', 'hex')), /nested too deeply/);
  assert.throws(() => decode('not bytes'), DecodeError);

  assert.throws(() => decodeMessage(encode([1])), /must be a map/);
  assert.throws(() => decodeMessage(encode({})), /exactly one entry/);
  assert.throws(() => decodeMessage(encode({ a: {}, b: {} })), /exactly one entry/);
  assert.throws(() => decodeMessage(encode({ ping: 5 })), /body of "ping"/);
});

test('random bytes never make decode throw anything but a DecodeError', () => {
  const rand = prng(0x7e55e7a);
  const seeds = Object.values(golden);
  let decoded = 0;
  for (let i = 0; i < 30000; i++) {
    let bytes;
    if (i % 2 === 0) {
      bytes = new Uint8Array(Math.floor(rand() * 48));
      for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(rand() * 256);
    } else {
      // Golden frames with a few bytes changed, cut or extended: reaches
      // deeper into the decoder than pure noise does.
      const seed = seeds[Math.floor(rand() * seeds.length)];
      bytes = Uint8Array.from(seed);
      const flips = 1 + Math.floor(rand() * 3);
      for (let k = 0; k < flips; k++) bytes[Math.floor(rand() * bytes.length)] = Math.floor(rand() * 256);
      if (rand() < 0.3) bytes = bytes.subarray(0, Math.floor(rand() * bytes.length));
    }
    for (const fn of [decode, decodeMessage]) {
      try {
        fn(bytes);
        decoded++;
      } catch (err) {
        if (!(err instanceof DecodeError)) {
          assert.fail(`${fn.name}(${hex(bytes)}) threw ${err?.name}: ${err?.message}`);
        }
        assert.ok(err.message.length > 0);
      }
    }
  }
  assert.ok(decoded > 0, 'some inputs decode');
});

// ---------------------------------------------------------------------------
// View and client

test('the view follows joined, update and full resync', () => {
  const view = new View();
  view.applyJoined(decodeMessage(golden.server_joined).body);
  assert.equal(view.you, 1);
  assert.equal(view.tick, 7);
  assert.equal(view.map.name, 'lobby');
  assert.deepEqual(view.me, { id: 1, name: 'ada', x: 500, y: 500, seq: 0 });

  view.applyUpdate({ tick: 8, entered: [{ id: 3, name: 'cy', x: 1, y: 2, seq: 0 }] });
  view.applyUpdate(decodeMessage(golden.server_update).body);
  assert.equal(view.tick, 8);
  assert.deepEqual([...view.entities.keys()].sort(), [1, 2]);
  assert.deepEqual(view.me, { id: 1, name: 'ada', x: 510, y: 500, seq: 42 });
  assert.deepEqual(view.entities.get(2), { id: 2, name: 'bob', x: 10, y: 20, seq: 3 });

  // A moved entry for an entity never entered is ignored, not invented.
  view.applyUpdate({ tick: 9, moved: [[99, 1, 1, 1]] });
  assert.equal(view.entities.has(99), false);

  view.applyUpdate({ tick: 10, full: true, entered: [{ id: 1, name: 'ada', x: 5, y: 6, seq: 43 }] });
  assert.deepEqual([...view.entities.keys()], [1]);
  assert.equal(view.me.x, 5);

  view.applyUpdate(decodeMessage(golden.server_update_full).body);
  assert.equal(view.entities.size, 0);
  assert.equal(view.tick, 9);
});

test('the view says which instance it shows, the first when joined has none', () => {
  const view = new View();
  view.applyJoined(decodeMessage(golden.server_joined_instance).body);
  assert.equal(view.instance, 2);
  view.applyJoined(decodeMessage(golden.server_joined).body);
  assert.equal(view.instance, 1);
});

test('the view keeps ground items from joined and items', () => {
  const view = new View();
  view.applyJoined(decodeMessage(golden.server_joined_items).body);
  assert.deepEqual([...view.items.values()], [{ id: 12, kind: 'gem', count: 1, x: 250, y: 100 }]);
  view.applyItems(decodeMessage(golden.server_items).body);
  assert.deepEqual([...view.items.keys()], [13]);
  assert.deepEqual(view.items.get(13), { id: 13, kind: 'gem', count: 2, x: 10, y: 20 });
  // A 1.1 joined has no items: the ground is empty.
  view.applyJoined(decodeMessage(golden.server_joined).body);
  assert.equal(view.items.size, 0);
  assert.equal(view.nearestItem(), undefined);
  view.applyItems({ added: [{ id: 1, kind: 'gem', count: 1, x: 900, y: 900 }, { id: 2, kind: 'gem', count: 1, x: 510, y: 490 }] });
  assert.equal(view.nearestItem().id, 2);
  view.applyItems({ removed: [2, 99] });
  assert.equal(view.nearestItem().id, 1);
});

test('the client routes items to an event and its view', async () => {
  const { client, socket } = await connected();
  const seen = [];
  client.on('items', (body) => seen.push(body.removed));
  socket.receive(golden.server_joined_items);
  socket.receive(golden.server_items);
  assert.deepEqual(seen, [[12]]);
  assert.deepEqual([...client.view.items.keys()], [13]);
});

test('the client routes server messages to events and keeps its view', async () => {
  const { client, socket } = await connected();
  const seen = [];
  for (const ev of ['welcome', 'joined', 'update', 'chat', 'announce', 'pong', 'error', 'left', 'view']) {
    client.on(ev, (body) => seen.push(ev === 'view' ? `view:${body.entities.size}` : ev));
  }
  const decodeErrors = [];
  client.on('decode_error', (err) => decodeErrors.push(err));

  const frames = ['welcome', 'joined', 'update', 'chat', 'announce', 'pong', 'error'];
  for (const name of frames) socket.receive(golden[`server_${name}`]);
  assert.equal(client.state, 'joined');
  assert.equal(client.welcome.player_id, 'g-1');
  assert.equal(client.view.entities.size, 2);

  socket.receive(golden.server_left);
  assert.equal(client.state, 'welcomed');
  assert.equal(client.view.entities.size, 0);

  socket.receive(new Uint8Array([0xc1]).buffer);
  socket.receive('a text frame');
  assert.equal(decodeErrors.length, 2);

  // A message type from a later minor version is passed on, not fatal.
  const unknown = [];
  client.on('message', (m) => unknown.push(m.type));
  socket.receive(encode({ shiny_new: { x: 1 } }).buffer);
  assert.deepEqual(unknown, ['shiny_new']);

  assert.deepEqual(seen, [
    'welcome', 'joined', 'view:1', 'update', 'view:2', 'chat', 'announce', 'pong', 'error', 'left', 'view:0',
  ]);
});

test('pong of our own ping carries the round-trip time', async () => {
  const { client, socket } = await connected();
  client.ping();
  const { ping } = decode(socket.sent[0]);
  assert.ok(Number.isInteger(ping.t) && ping.t >= 0);
  const pong = client.next('pong', { timeoutMs: 1000 });
  socket.receive(encode({ pong: { t: ping.t, server_ms: Date.now() } }).buffer);
  const body = await pong;
  assert.ok(body.rtt >= 0 && body.rtt < 1000, `rtt ${body.rtt}`);
  assert.equal(client.rtt, body.rtt);

  // A t the client did not time is echoed without touching the RTT.
  client.ping(123456);
  socket.receive(golden.server_pong);
  assert.equal(client.rtt, body.rtt);
});

test('close reports, clears the view and refuses to send', async () => {
  const { client, socket } = await connected();
  socket.receive(golden.server_joined);
  const closed = client.next('close', { timeoutMs: 1000 });
  socket.serverClose(4004, 'idle');
  assert.deepEqual(await closed, { code: 4004, reason: 'idle', wasClean: true });
  assert.equal(client.state, 'closed');
  assert.equal(client.view.entities.size, 0);
  assert.throws(() => client.ping(), /not connected/);
});

test('connect rejects when the socket closes before opening', async () => {
  FakeSocket.refuse = true;
  try {
    const client = new TesseraClient({ WebSocket: FakeSocket });
    await assert.rejects(client.connect('ws://nowhere/'), /could not connect/);
    assert.equal(client.state, 'closed');
  } finally {
    FakeSocket.refuse = false;
  }
});

// ---------------------------------------------------------------------------
// Helpers

/** A WebSocket stand-in: records sent frames, lets the test deliver frames. */
class FakeSocket {
  static refuse = false;

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.last = this;
    setTimeout(() => {
      if (FakeSocket.refuse) {
        this.readyState = 3;
        this.onclose?.({ code: 1006, reason: '', wasClean: false });
      } else {
        this.readyState = 1;
        this.onopen?.();
      }
    }, 0);
  }

  send(bytes) {
    this.sent.push(Uint8Array.from(bytes));
  }

  receive(data) {
    const buf = data instanceof Uint8Array ? data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) : data;
    this.onmessage?.({ data: buf });
  }

  serverClose(code, reason) {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: true });
  }

  close(code = 1000, reason = '') {
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason, wasClean: true }), 0);
  }
}

async function connected() {
  const client = new TesseraClient({ WebSocket: FakeSocket });
  await client.connect('ws://test/');
  assert.equal(client.state, 'open');
  return { client, socket: FakeSocket.last };
}

// mulberry32: a seeded generator, so a failure reproduces.
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('a move beyond float32 range keeps its direction instead of going out infinite', () => {
  const move = decodeMessage(encodeMessage(messages.move(1, -1e300, 0))).body;
  assert.equal(move.dx, -1);
  assert.equal(move.dy, 0);
  const small = decodeMessage(encodeMessage(messages.move(2, 3, -4))).body;
  assert.deepEqual([small.dx, small.dy], [3, -4]);
});

test('a draining shard (close 4008) asks for a reconnect at once; other closes do not', () => {
  assert.equal(reconnectAtOnce(4008), true);
  for (const code of [1000, 1001, 1006, 1013, 4003, 4006, 4007]) {
    assert.equal(reconnectAtOnce(code), false, `close ${code}`);
  }
});
