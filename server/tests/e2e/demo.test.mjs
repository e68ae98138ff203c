// End to end: the real server binary, the demo page in Debian's chromium
// (driven by playwright-core), two players who see each other walk and chat,
// and one who picks up a gem lying in the lobby.
//
// Env: TESSERA_SERVER_BIN (default <repo>/target/debug/tessera-server),
//      CHROMIUM (default /usr/bin/chromium).
// Run: scripts/e2e.sh (installs what it needs), or node --test server/tests/e2e/*.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import { chromium } from 'playwright-core';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const serverBin = process.env.TESSERA_SERVER_BIN || join(repo, 'target', 'debug', 'tessera-server');
const chromiumBin = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

let server;
let serverLog = [];
let workDir;
let browser;
let httpBase;
let wsAddr;

before(async () => {
  // The server's embedded store writes beside its working directory: keep
  // that out of the repository.
  workDir = mkdtempSync(join(tmpdir(), 'tessera-e2e-'));
  server = spawn(serverBin, ['--ws-addr', '127.0.0.1:0', '--http-addr', '127.0.0.1:0'], {
    cwd: workDir,
    // The server reads TESSERA_* as configuration and refuses unknown
    // names (TESSERA_SERVER_BIN among them): pass none on.
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TESSERA_'))),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const addrs = await listeningAddrs(server, 15_000);
  httpBase = `http://${addrs.http}`;
  wsAddr = addrs.ws;
  browser = await chromium.launch({
    executablePath: chromiumBin,
    args: CHROMIUM_ARGS,
    timeout: 20_000,
  });
}, { timeout: 40_000 });

after(async () => {
  await Promise.race([browser?.close().catch(() => {}), sleep(5_000)]);
  await stopServer();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
}, { timeout: 15_000 });

test('the server serves the page, its scripts and the client config', { timeout: 10_000 }, async () => {
  const get = (path) => fetch(`${httpBase}${path}`, { signal: AbortSignal.timeout(5_000) });

  const page = await get('/');
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
  assert.match(await page.text(), /<canvas id="map"/);

  // Module scripts only run when served with a JavaScript MIME type.
  for (const path of ['/demo.js', '/tessera.js']) {
    const res = await get(path);
    assert.equal(res.status, 200, path);
    assert.match(res.headers.get('content-type') ?? '', /^(text|application)\/javascript/, `${path} content-type`);
    assert.ok((await res.text()).length > 100, `${path} has a body`);
  }

  const config = await get('/client-config.json');
  assert.equal(config.status, 200);
  assert.deepEqual(await config.json(), { ws_port: Number(wsAddr.split(':').pop()) });

  assert.equal((await get('/healthz')).status, 200);
});

test('two players see each other walk and chat', { timeout: 45_000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 960, height: 640 } });
  try {
    const alice = await openPlayer(context, 'alice');
    const bob = await openPlayer(context, 'bob');

    const aliceId = await alice.page.evaluate(() => window.tessera.view.you);
    assert.equal(typeof aliceId, 'number', 'alice has an entity id');
    await bob.page.waitForFunction((id) => window.tessera.view.entities.has(id), aliceId, { timeout: 5_000 });
    const start = await bob.page.evaluate((id) => window.tessera.view.entities.get(id), aliceId);
    assert.equal(start.name, 'alice');

    // Let bob's picture settle, then remember it.
    await sleep(300);
    await bob.page.evaluate(() => {
      window.__canvasBefore = document.getElementById('map').toDataURL();
    });

    await alice.page.keyboard.down('ArrowRight');
    await sleep(500);
    await alice.page.keyboard.up('ArrowRight');

    await bob.page.waitForFunction(
      ([id, x0]) => (window.tessera.view.entities.get(id)?.x ?? -Infinity) > x0 + 1,
      [aliceId, start.x],
      { timeout: 5_000 },
    );
    const moved = await bob.page.evaluate((id) => window.tessera.view.entities.get(id), aliceId);
    assert.ok(moved.x > start.x, `alice walked right as bob sees her: x ${start.x} -> ${moved.x}`);
    assert.ok(Math.abs(moved.y - start.y) < 1, `alice kept her y: ${start.y} -> ${moved.y}`);

    await bob.page.waitForFunction(
      () => document.getElementById('map').toDataURL() !== window.__canvasBefore,
      null,
      { timeout: 5_000 },
    );

    // The stop (the last move sent, on key-up) reaches alice's own entity.
    await alice.page.waitForFunction(
      () => window.tessera.me && window.tessera.me.seq === window.tessera.moveSeq,
      null,
      { timeout: 5_000 },
    );

    const line = `hello bob ${Date.now()}`;
    await alice.page.fill('#chat-input', line);
    await alice.page.press('#chat-input', 'Enter');
    const chatShown = (text) =>
      [...document.querySelectorAll('#chat-log li')].some((li) => li.textContent === `alice: ${text}`);
    await bob.page.waitForFunction(chatShown, line, { timeout: 5_000 });
    await alice.page.waitForFunction(chatShown, line, { timeout: 5_000 });

    for (const p of [alice, bob]) assert.deepEqual(p.pageErrors, [], `${p.name}: no script errors`);
  } finally {
    await context.close().catch(() => {});
  }
});

test('a player walks to a gem lying in the lobby and picks it up with E', { timeout: 45_000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 960, height: 640 } });
  try {
    const carol = await openPlayer(context, 'carol');
    // The lobby spawns a gem every 5 s.
    await carol.page.waitForFunction(() => window.tessera.view.items.size > 0, null, { timeout: 15_000 });
    // Walk there like a bot would (the keys steer too coarsely for a test):
    // full speed, slower when close, then stop.
    const item = await carol.page.evaluate(async () => {
      const { client, view } = window.tessera;
      const target = view.nearestItem();
      const pause = (ms) => new Promise((r) => setTimeout(r, ms));
      let seq = 1_000_000;
      const deadline = performance.now() + 15_000;
      while (performance.now() < deadline) {
        const me = view.me;
        const dx = target.x - me.x;
        const dy = target.y - me.y;
        const d = Math.hypot(dx, dy);
        if (d < 8) break;
        const s = Math.max(d, 40);
        client.move(++seq, dx / s, dy / s);
        await pause(100);
      }
      client.move(++seq, 0, 0);
      while (view.me.seq !== seq && performance.now() < deadline) await pause(20);
      return target;
    });
    await carol.page.keyboard.press('e');
    await carol.page.waitForFunction((id) => !window.tessera.view.items.has(id), item.id, { timeout: 5_000 });
    const log = () => [...document.querySelectorAll('#chat-log li')].map((li) => li.textContent);
    await carol.page.waitForFunction(
      () => [...document.querySelectorAll('#chat-log li')].some((li) => li.textContent.startsWith('picked up')),
      null,
      { timeout: 5_000 },
    ).catch(async (err) => {
      throw new Error(`no "picked up" line: ${JSON.stringify(await carol.page.evaluate(log))}`, { cause: err });
    });
    const lines = await carol.page.evaluate(log);
    assert.ok(lines.some((l) => /you hold gem ×1/.test(l)), JSON.stringify(lines));
    assert.deepEqual(carol.pageErrors, [], 'no script errors');
  } finally {
    await context.close().catch(() => {});
  }
});

/** Open the demo page as `name` and wait until it stands in the lobby. */
async function openPlayer(context, name) {
  const page = await context.newPage();
  const player = { name, page, pageErrors: [] };
  page.on('pageerror', (err) => player.pageErrors.push(String(err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error') player.pageErrors.push(`console: ${msg.text()}`);
  });
  page.setDefaultTimeout(10_000);
  await page.goto(`${httpBase}/?name=${name}`, { timeout: 10_000 });
  try {
    await page.waitForFunction(() => document.body.dataset.state === 'joined', null, { timeout: 10_000 });
  } catch (err) {
    const state = await page.evaluate(() => ({
      state: document.body.dataset.state,
      status: document.getElementById('status-text')?.textContent,
      log: [...document.querySelectorAll('#chat-log li')].map((li) => li.textContent),
    }));
    throw new Error(`${name} did not join: ${JSON.stringify(state)}; page errors ${JSON.stringify(player.pageErrors)}`, { cause: err });
  }
  return player;
}

/** Read the server's stdout until it names both listening addresses. */
function listeningAddrs(child, timeoutMs) {
  return new Promise((resolvePromise, reject) => {
    const found = {};
    const keep = (line) => {
      serverLog.push(line);
      if (serverLog.length > 200) serverLog = serverLog.slice(-100);
    };
    const fail = (why) => {
      clearTimeout(timer);
      reject(new Error(`${why}\n--- server output ---\n${serverLog.join('\n')}`));
    };
    const timer = setTimeout(() => fail(`server named no listening addresses within ${timeoutMs} ms`), timeoutMs);
    createInterface({ input: child.stderr }).on('line', keep);
    createInterface({ input: child.stdout }).on('line', (raw) => {
      keep(raw);
      // Colour codes aside, the line is exactly "<kind> listening on <host:port>".
      const m = /^(ws|http) listening on (\S+:\d+)\s*$/.exec(raw.replace(/\x1b\[[0-9;]*m/g, ''));
      if (!m) return;
      found[m[1]] = m[2];
      if (found.ws && found.http) {
        clearTimeout(timer);
        resolvePromise(found);
      }
    });
    child.once('error', (err) => fail(`cannot start ${serverBin}: ${err.message}`));
    child.once('exit', (code, signal) => fail(`server exited early (code ${code}, signal ${signal})`));
  });
}

async function stopServer() {
  if (!server || server.exitCode !== null || server.signalCode !== null) return;
  const exited = new Promise((r) => server.once('exit', r));
  server.kill('SIGTERM');
  // A graceful shutdown drains sessions; do not wait for ever.
  if (await Promise.race([exited.then(() => true), sleep(5_000).then(() => false)])) return;
  server.kill('SIGKILL');
  await Promise.race([exited, sleep(2_000)]);
}
