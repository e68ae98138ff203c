// End to end: the ops console in Debian's chromium (driven by
// playwright-core) against a real shard with a loadbot swarm walking in the
// lobby: the cluster page's numbers move, the rooms page lists the swarm's
// room, the inspector shows members moving, a kick from the page
// disconnects a player, a room restart shows in the events, and a viewer's
// token shows no actions and is refused by the API. Screenshots of each
// page go to server/tests/e2e/artifacts/ (gitignored).
//
// Env: TESSERA_SERVER_BIN, OPS_BIN, LOADBOT_BIN (default <repo>/target/debug/...),
//      CHROMIUM (default /usr/bin/chromium).
// Run: scripts/e2e.sh, or node --test server/tests/e2e/console.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  adminConfig, kickFromPage, launchBrowser, loadbotBin, opsBin, pattern, serverBin, shot, signIn as openConsole, spawnChild, start, stopAll, tab,
} from './harness.mjs';

const OPERATOR = 'e2e-operator-token-0123456';
const VIEWER = 'e2e-viewer-token-01234567';

let workDir;
let browser;
let httpBase;
let consoleBase;

before(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'tessera-console-e2e-'));
  const config = adminConfig(workDir, OPERATOR, VIEWER);
  const addrs = await start(serverBin, ['--config', config, '--ws-addr', '127.0.0.1:0', '--http-addr', '127.0.0.1:0'],
    pattern(/^(ws|http) listening on (\S+:\d+)\s*$/, ['ws', 'http']), { cwd: workDir });
  httpBase = `http://${addrs.http}`;
  const consoleAddr = await start(opsBin, ['console', '--listen', '127.0.0.1:0', '--shard', addrs.http, '--refresh-ms', '500'],
    pattern(/^(console) listening on (\S+:\d+)\s*$/, ['console']), { cwd: workDir });
  consoleBase = `http://${consoleAddr.console}`;
  // A swarm walking in the lobby for the whole run: moving numbers.
  spawnChild(loadbotBin, ['--url', `ws://${addrs.ws}`, '--bots', '6', '--maps', 'lobby', '--ramp', '500ms',
    '--duration', '300s', '--move-hz', '5', '--progress', 'off'],
  { cwd: workDir });
  browser = await launchBrowser();
}, { timeout: 60_000 });

after(async () => {
  await Promise.race([browser?.close().catch(() => {}), sleep(5_000)]);
  await stopAll();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
}, { timeout: 40_000 });

/** The console signed in with `token`, once it shows a ready shard. */
async function signIn(token) {
  const session = await openConsole(browser, consoleBase, token);
  await session.page.waitForSelector('#shards tbody tr td.state-ready');
  return session;
}

let operator;

test('the cluster page shows the shard with moving numbers', { timeout: 60_000 }, async () => {
  operator = await signIn(OPERATOR);
  const { page } = operator;
  assert.match(await page.textContent('#who'), /olga \(operator\)/);
  await page.waitForFunction(() => Number(document.querySelector('#shards td.sessions')?.textContent) >= 6, null, { timeout: 30_000 });
  const first = Number(await page.textContent('#shards td.msgs-in'));
  await page.waitForFunction((before) => {
    const now = Number(document.querySelector('#shards td.msgs-in')?.textContent);
    return now > 0 && now !== before;
  }, first, { timeout: 20_000 });
  await page.waitForSelector('#chart-in polyline');
  await shot(page, 'console-cluster');
  assert.deepEqual(operator.errors, []);
});

test('the rooms page lists the swarm\'s room and the inspector shows members moving', { timeout: 60_000 }, async () => {
  const { page } = operator;
  await tab(page, 'rooms');
  await page.waitForFunction(() => Number(document.querySelector('#rooms tr[data-room="lobby"] td.members')?.textContent) >= 6);
  await shot(page, 'console-rooms');
  await page.click('#rooms tr[data-room="lobby"] button.inspect');
  await page.waitForSelector('#inspector-members tbody tr');
  const before = await page.$$eval('#inspector-members tbody tr', (rows) => rows.map((r) => r.querySelector('.pos-x').textContent + ',' + r.querySelector('.pos-y').textContent));
  await page.waitForFunction((b) => {
    const now = [...document.querySelectorAll('#inspector-members tbody tr')].map((r) => r.querySelector('.pos-x').textContent + ',' + r.querySelector('.pos-y').textContent);
    return now.length > 0 && now.join() !== b.join();
  }, before, { timeout: 20_000 });
  assert.ok((await page.$$('#inspector-map circle')).length >= 6, 'the members are drawn on the map');
  await shot(page, 'console-inspector');
});

test('a kick from the page disconnects that player', { timeout: 60_000 }, async () => {
  const { page } = operator;
  const log = await kickFromPage(browser, page, httpBase, 'console-players-kick');
  assert.match(log, /2006/, log);
  assert.match(log, /removed by an operator/, log);
});

test('a room restart from the page shows in the events', { timeout: 60_000 }, async () => {
  const { page } = operator;
  await tab(page, 'rooms');
  page.once('dialog', (d) => d.accept());
  await page.click('#rooms tr[data-room="lobby"] button.restart');
  await page.waitForFunction(() => /restarting/.test(document.getElementById('flash').textContent));
  await tab(page, 'events');
  await page.waitForSelector('#events tbody tr[data-kind="room_restarted"]', { timeout: 20_000 });
  await page.fill('#events-filter', 'restart_room');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#events tbody tr')];
    return rows.length >= 1 && rows.every((r) => r.dataset.kind === 'admin_action') && /olga/.test(rows[0].textContent);
  });
  await page.fill('#events-filter', '');
  await shot(page, 'console-events');
});

test('a viewer sees no actions and the API refuses its action', { timeout: 60_000 }, async () => {
  const viewer = await signIn(VIEWER);
  const { page } = viewer;
  try {
    assert.match(await page.textContent('#who'), /victor \(viewer\)/);
    assert.equal(await page.isVisible('#announce-btn'), false);
    await tab(page, 'rooms');
    await page.waitForSelector('#rooms tr[data-room="lobby"]');
    for (const sel of ['button.restart', 'button.migrate']) {
      const buttons = await page.$$(sel);
      assert.ok(buttons.length > 0, `${sel} exists`);
      for (const b of buttons) assert.equal(await b.isVisible(), false, `${sel} hidden for a viewer`);
    }
    assert.equal(await page.isVisible('button.inspect'), true, 'reading is allowed');
    await tab(page, 'players');
    assert.equal(await page.isVisible('#ban-btn'), false);
    const status = await page.evaluate(async ([token, shard]) => {
      const res = await fetch('/api/rooms/restart', {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
        body: JSON.stringify({ shard, room: 'lobby' }),
      });
      return res.status;
    }, [VIEWER, httpBase]);
    assert.equal(status, 403);
    await tab(page, 'rooms');
    await shot(page, 'console-viewer');
    assert.deepEqual(viewer.errors, []);
  } finally {
    await viewer.context.close();
  }
});
