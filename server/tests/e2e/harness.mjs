// What the browser tests share: where the binaries are, starting a child
// and reading the addresses it prints, loopback ports, a signed-in console
// page, screenshots, and stopping every child at the end.
//
// Env: TESSERA_SERVER_BIN, OPS_BIN, LOADBOT_BIN (default <repo>/target/debug/...),
//      CHROMIUM (default /usr/bin/chromium), TESSERA_REDIS_SERVER (default redis-server).

import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, '..', '..', '..');
const bin = (name, env) => process.env[env] || join(repo, 'target', 'debug', name);
export const serverBin = bin('tessera-server', 'TESSERA_SERVER_BIN');
export const opsBin = bin('tessera-ops', 'OPS_BIN');
export const loadbotBin = bin('loadbot', 'LOADBOT_BIN');
export const redisBin = process.env.TESSERA_REDIS_SERVER || 'redis-server';
export const artifacts = join(here, 'artifacts');
const chromiumBin = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** The caller's environment without TESSERA_*: the server reads those as
 * configuration and refuses unknown names (TESSERA_SERVER_BIN among them). */
export const cleanEnv = () => Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TESSERA_')));

/** Every child started here, stopped by `stopAll`. */
const children = [];

/** A regex whose first capture names what the line gives (its second) and
 * the names that must all have been seen. */
export function pattern(re, need) {
  re.need = need;
  return re;
}

/** Start a binary in `cwd`; resolve with `{ child, ...captures }` once every
 * name `pattern` needs was printed on its stdout, reject if it exits first. */
export function start(path, args, pat, { cwd, env = {}, timeoutMs = 30_000 } = {}) {
  const child = spawn(path, args, { cwd, env: { ...cleanEnv(), RUST_LOG: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const log = [];
  child.log = log;
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${path}: no ${pat} within ${timeoutMs} ms\n${log.join('\n')}`)), timeoutMs);
    createInterface({ input: child.stderr }).on('line', (l) => log.push(l));
    const found = {};
    createInterface({ input: child.stdout }).on('line', (raw) => {
      const line = raw.replace(/\x1b\[[0-9;]*m/g, '');
      log.push(line);
      const m = pat.exec(line);
      if (m) {
        found[m[1]] = m[2];
        if (pat.need.every((k) => found[k])) {
          clearTimeout(timer);
          resolvePromise({ child, ...found });
        }
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${path} exited ${code}\n${log.join('\n')}`));
    });
  });
}

/** Spawn a child that prints nothing we wait for (the loadbot); it is
 * stopped by `stopAll` like the others. */
export function spawnChild(path, args, { cwd, env = {} } = {}) {
  const child = spawn(path, args, { cwd, env: { ...cleanEnv(), ...env }, stdio: 'ignore' });
  children.push(child);
  return child;
}

/** Run a binary to its end (bounded); resolve with its stdout and exit code. */
export function run(path, args, timeoutMs = 20_000) {
  return new Promise((res, rej) => {
    const p = spawn(path, args, { env: cleanEnv() });
    let out = '';
    const timer = setTimeout(() => { p.kill('SIGKILL'); rej(new Error(`${path} ${args.join(' ')}: no exit within ${timeoutMs} ms`)); }, timeoutMs);
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('exit', (code) => { clearTimeout(timer); res({ code, out }); });
  });
}

/** A loopback port nothing listens on now. */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

export async function waitForPort(port, timeoutMs = 10_000) {
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

/** Debian's redis-server on a free loopback port, persisting nothing;
 * resolves with its URL (database 0). */
export async function startRedis(cwd) {
  const port = await freePort();
  const redis = spawn(redisBin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', cwd],
    { cwd, stdio: 'ignore' });
  children.push(redis);
  await waitForPort(port);
  return `redis://127.0.0.1:${port}/0`;
}

export function launchBrowser() {
  mkdirSync(artifacts, { recursive: true });
  return chromium.launch({ executablePath: chromiumBin, args: CHROMIUM_ARGS, timeout: 20_000 });
}

/** A new page of the console at `base`, signed in with `token`; page
 * errors are collected in `errors`. */
export async function signIn(browser, base, token, { width = 1280, height = 900, timeout = 15_000 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(base);
  await page.fill('#token', token);
  await page.click('#login-btn');
  await page.waitForSelector('#app:not([hidden])');
  return { context, page, errors };
}

export const shot = (page, name) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
export const tab = (page, name) => page.click(`nav button[data-tab="${name}"]`);

/** A shard config file in `dir` with two admin tokens: an operator named
 * "olga" and a viewer named "victor"; resolves to its path. */
export function adminConfig(dir, operator, viewer) {
  const path = join(dir, 'shard.toml');
  writeFileSync(path, `
[admin]
[[admin.tokens]]
token = "${operator}"
role = "operator"
name = "olga"

[[admin.tokens]]
token = "${viewer}"
role = "viewer"
name = "victor"
`);
  return path;
}

/** A player opens the demo page at `demoBase` (so its socket is on that
 * shard), an operator's console `page` finds it on the players page and
 * kicks it; resolves with the player's chat log once its page says closed.
 * `shotName` names the screenshot of the console after the kick. */
export async function kickFromPage(browser, page, demoBase, shotName) {
  const victimContext = await browser.newContext();
  try {
    const victim = await victimContext.newPage();
    await victim.goto(`${demoBase}/?name=victim`);
    await victim.waitForFunction(() => document.body.dataset.state === 'joined', null, { timeout: 20_000 });
    await tab(page, 'players');
    await page.fill('#player-q', 'victim');
    await page.click('#player-search');
    await page.waitForSelector('#players tbody tr button.kick');
    page.once('dialog', (d) => d.accept('e2e kick'));
    await page.click('#players tbody tr button.kick');
    try {
      await page.waitForFunction(() => /kicked/.test(document.getElementById('flash').textContent));
    } catch (e) {
      // What the console said instead (each shard's answer, or the
      // refusal) is what tells a slow shard from a wrong answer.
      throw new Error(`${e.message}; the flash read: ${await page.textContent('#flash')}`);
    }
    await victim.waitForFunction(() => document.body.dataset.state === 'closed', null, { timeout: 15_000 });
    await shot(page, shotName);
    await shot(victim, `${shotName}-demo`);
    return await victim.$$eval('#chat-log li', (lis) => lis.map((li) => li.textContent).join('\n'));
  } finally {
    await victimContext.close();
  }
}

/** Whether a child has exited (by code or signal). */
export const exited = (child) => child.exitCode !== null || child.signalCode !== null;

/** SIGTERM every child still running, newest first (SIGKILL after 5 s). */
export async function stopAll() {
  for (const child of children.splice(0).reverse()) {
    if (!exited(child)) {
      child.kill('SIGTERM');
      await Promise.race([new Promise((r) => child.once('exit', r)), sleep(5_000)]);
      if (!exited(child)) child.kill('SIGKILL');
    }
  }
}
