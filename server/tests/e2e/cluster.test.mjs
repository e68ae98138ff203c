// End to end: the ops console's cluster views in Debian's chromium (driven
// by playwright-core) against a real local cluster: redis-server (the
// directory) and two tessera-server shards in cluster mode, the console
// started with --redis, and a loadbot swarm spread over both shards by
// room owner (--redis). The tunnel matrix shows both sides of the pair
// with RTT, bytes/s and streams; the directory table shows both shards
// ready with their lease counts; a killed shard turns dead in the shard
// and directory tables and its tunnel stops being "connected"; the events
// page lists the directory's events and filters them by kind and shard.
// Screenshots go to server/tests/e2e/artifacts/ (gitignored).
//
// Env: TESSERA_SERVER_BIN, OPS_BIN, LOADBOT_BIN (default <repo>/target/debug/...),
//      CHROMIUM (default /usr/bin/chromium), TESSERA_REDIS_SERVER (default redis-server).
// Run: bash scripts/e2e.sh (with the other browser tests).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..', '..');
const bin = (name, env) => process.env[env] || join(repo, 'target', 'debug', name);
const serverBin = bin('tessera-server', 'TESSERA_SERVER_BIN');
const opsBin = bin('tessera-ops', 'OPS_BIN');
const loadbotBin = bin('loadbot', 'LOADBOT_BIN');
const redisBin = process.env.TESSERA_REDIS_SERVER || 'redis-server';
const chromiumBin = process.env.CHROMIUM || '/usr/bin/chromium';
const artifacts = join(here, 'artifacts');
const TOKEN = 'e2e-cluster-admin-token-0123';
const SECRET = 'e2e-cluster-secret-0123456789abcdef';
const PREFIX = 'e2e';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

// Children get no TESSERA_* variable from the caller: only what is set here.
const cleanEnv = () => Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TESSERA_')));

const children = [];
let workDir;
let browser;
let consoleBase;
const shards = {}; // id -> { child, ws, http }

/** Start a binary; resolve with the captures of `pattern` on its stdout. */
function start(path, args, pattern, env = {}, timeoutMs = 30_000) {
  const child = spawn(path, args, { cwd: workDir, env: { ...cleanEnv(), RUST_LOG: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const log = [];
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${path}: no ${pattern} within ${timeoutMs} ms\n${log.join('\n')}`)), timeoutMs);
    createInterface({ input: child.stderr }).on('line', (l) => log.push(l));
    const found = {};
    createInterface({ input: child.stdout }).on('line', (raw) => {
      const line = raw.replace(/\x1b\[[0-9;]*m/g, '');
      log.push(line);
      const m = pattern.exec(line);
      if (m) {
        found[m[1]] = m[2];
        if (pattern.need.every((k) => found[k])) {
          clearTimeout(timer);
          resolvePromise({ child, ...found });
        }
      }
    });
    child.on('exit', (code) => reject(new Error(`${path} exited ${code}\n${log.join('\n')}`)));
  });
}

function pattern(re, need) {
  re.need = need;
  return re;
}

/** A loopback port nothing listens on now. */
function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

async function waitForPort(port, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((res) => {
      const s = connect(port, '127.0.0.1', () => { s.destroy(); res(true); });
      s.once('error', () => res(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await sleep(100);
  }
}

function startShard(id, redisUrl) {
  const data = join(workDir, id);
  mkdirSync(data, { recursive: true });
  return start(serverBin, ['--ws-addr', '127.0.0.1:0', '--http-addr', '127.0.0.1:0'],
    pattern(/^(ws|http|peer) listening on (\S+:\d+)\s*$/, ['ws', 'http', 'peer']), {
      TESSERA_CLUSTER__REDIS: redisUrl,
      TESSERA_CLUSTER__SECRET: SECRET,
      TESSERA_CLUSTER__SHARD_ID: id,
      TESSERA_CLUSTER__KEY_PREFIX: PREFIX,
      TESSERA_CLUSTER__PEER_ADDR: '127.0.0.1:0',
      TESSERA_ADMIN__TOKEN: TOKEN,
      TESSERA_STORE__EMBEDDED__DIR: join(data, 'data'),
    });
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  workDir = mkdtempSync(join(tmpdir(), 'tessera-ops-cluster-e2e-'));
  const port = await freePort();
  const redis = spawn(redisBin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', workDir],
    { cwd: workDir, stdio: 'ignore' });
  children.push(redis);
  await waitForPort(port);
  const redisUrl = `redis://127.0.0.1:${port}/0`;
  for (const id of ['e2e-a', 'e2e-b']) shards[id] = await startShard(id, redisUrl);
  const c = await start(opsBin, ['console', '--listen', '127.0.0.1:0', '--redis', redisUrl, '--key-prefix', PREFIX, '--refresh-ms', '500'],
    pattern(/^(console) listening on (\S+:\d+)\s*$/, ['console']));
  consoleBase = `http://${c.console}`;
  // Wait until both shards are ready in the directory (the loadbot reads
  // the owners there), then a swarm over both shards for the whole run.
  const deadline = Date.now() + 30_000;
  for (;;) {
    const out = await new Promise((res) => {
      const p = spawn(opsBin, ['shards', 'ls', '--redis', redisUrl, '--key-prefix', PREFIX], { env: cleanEnv() });
      let text = '';
      p.stdout.on('data', (d) => { text += d; });
      p.on('exit', () => res(text));
    });
    if ((out.match(/ ready /g) || []).length === 2) break;
    if (Date.now() > deadline) throw new Error(`shards not ready:\n${out}`);
    await sleep(200);
  }
  const bot = spawn(loadbotBin, ['--url', `ws://${shards['e2e-a'].ws}`, '--url', `ws://${shards['e2e-b'].ws}`,
    '--redis', redisUrl, '--cluster-prefix', PREFIX, '--maps', 'lobby,arena', '--rooms', '2', '--bots', '6',
    '--ramp', '500ms', '--duration', '300s', '--move-hz', '5', '--progress', 'off'], { cwd: workDir, env: cleanEnv(), stdio: 'ignore' });
  children.push(bot);
  browser = await chromium.launch({ executablePath: chromiumBin, args: CHROMIUM_ARGS, timeout: 20_000 });
}, { timeout: 90_000 });

after(async () => {
  await Promise.race([browser?.close().catch(() => {}), sleep(5_000)]);
  for (const child of children.reverse()) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await Promise.race([new Promise((r) => child.once('exit', r)), sleep(5_000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }
  if (workDir) rmSync(workDir, { recursive: true, force: true });
}, { timeout: 40_000 });

const shot = (page, name) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
let page;
const errors = [];

test('the tunnel matrix shows both sides of the pair with RTT, bytes/s and streams', { timeout: 60_000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(consoleBase);
  await page.fill('#token', TOKEN);
  await page.click('#login-btn');
  await page.waitForSelector('#app:not([hidden])');
  await page.waitForSelector('#cluster-views', { state: 'visible' });
  for (const [from, to] of [['e2e-a', 'e2e-b'], ['e2e-b', 'e2e-a']]) {
    const cell = `#tunnels td.tunnel[data-from="${from}"][data-to="${to}"]`;
    // Connected, a measured RTT, and rates from the second reading on
    // (the heartbeats alone move bytes every second).
    await page.waitForFunction((sel) => {
      const td = document.querySelector(sel);
      return td && td.classList.contains('state-connected')
        && /^\d+\.\d\d ms$/.test(td.querySelector('.rtt').textContent)
        && /^out \d/.test(td.querySelector('.out').textContent)
        && /^in \d/.test(td.querySelector('.in').textContent)
        && /^\d+ streams$/.test(td.querySelector('.streams').textContent);
    }, cell, { timeout: 30_000 });
  }
  assert.equal(await page.$$eval('#tunnels td.self', (tds) => tds.length), 2, 'the diagonal is empty');
  await shot(page, 'cluster-tunnels');
});

test('the directory table shows both shards ready with their leases', { timeout: 60_000 }, async () => {
  for (const id of ['e2e-a', 'e2e-b']) {
    await page.waitForFunction((id) => {
      const row = document.querySelector(`#directory tr[data-id="${id}"]`);
      return row && row.querySelector('td.state-ready') && /^\d+$/.test(row.querySelector('td.leases').textContent);
    }, id);
  }
  assert.match(await page.textContent('#directory-note'), /lease_ms = 3000/);
  // The swarm is on the shards: sessions add up to the 6 bots.
  await page.waitForFunction(() => [...document.querySelectorAll('#shards td.sessions')]
    .reduce((n, td) => n + Number(td.textContent), 0) >= 6, null, { timeout: 30_000 });
});

test('a killed shard turns dead and its tunnel is no longer connected', { timeout: 60_000 }, async () => {
  shards['e2e-b'].child.kill('SIGKILL');
  const httpB = `http://${shards['e2e-b'].http}`;
  await page.waitForFunction((url) => document.querySelector(`#shards tr[data-shard="${url}"] td.state-dead`), httpB, { timeout: 30_000 });
  // Dead in the directory once its alive key expires (cluster.shard_ttl_ms).
  await page.waitForSelector('#directory tr[data-id="e2e-b"] td.state-dead', { timeout: 30_000 });
  await page.waitForFunction(() => {
    const td = document.querySelector('#tunnels td[data-from="e2e-a"][data-to="e2e-b"]');
    return !td || !td.classList.contains('state-connected');
  }, null, { timeout: 30_000 });
  await shot(page, 'cluster-shard-dead');
});

test('the events page lists the directory\'s events, filterable by kind and shard', { timeout: 60_000 }, async () => {
  await page.click('nav button[data-tab="events"]');
  await page.waitForSelector('#events tbody tr[data-source="directory"][data-kind="shard_up"]');
  await page.waitForFunction(() => [...document.querySelectorAll('#events-kind option')].some((o) => o.value === 'shard_up'));
  await page.selectOption('#events-kind', 'shard_up');
  await page.waitForFunction(() => [...document.querySelectorAll('#events-shard option')].some((o) => o.value === 'e2e-a'));
  await page.selectOption('#events-shard', 'e2e-a');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#events tbody tr')];
    return rows.length >= 1 && rows.every((r) => r.dataset.kind === 'shard_up' && /e2e-a/.test(r.children[1].textContent));
  });
  await shot(page, 'cluster-events');
  assert.deepEqual(errors, []);
});
