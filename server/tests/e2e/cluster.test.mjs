// End to end: the ops console in Debian's chromium (driven by
// playwright-core) against a real local cluster: redis-server (the
// directory), three tessera-server shards in cluster mode, the console
// started with --redis, and a loadbot swarm spread over the shards, half of
// it on a shard other than its room's owner (--redis, --remote-share).
//
// As an operator would use it: the cluster page shows the three shards
// with moving numbers and the tunnel matrix; the directory table shows them
// ready with their leases; the rooms page lists the swarm's rooms and the
// inspector shows their members moving; a kick from the page disconnects a
// player; a migrate from the page moves a room and the events page shows
// it; a viewer's token shows no actions and is refused by the API; a drain
// from the page empties a shard, whose players go on on the others; a
// killed shard turns dead. Screenshots go to server/tests/e2e/artifacts/
// (gitignored).
//
// Env: see harness.mjs. Run: bash scripts/e2e.sh (with the other browser tests).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  adminConfig, exited, kickFromPage, launchBrowser, loadbotBin, opsBin, pattern, run, serverBin, shot, signIn, spawnChild, start,
  startRedis, stopAll, tab,
} from './harness.mjs';

const OPERATOR = 'e2e-cluster-operator-token-0123';
const VIEWER = 'e2e-cluster-viewer-token-01234567';
const SECRET = 'e2e-cluster-secret-0123456789abcdef';
const PREFIX = 'e2e';
const IDS = ['e2e-a', 'e2e-b', 'e2e-c'];
const BOTS = 9;

let workDir;
let browser;
let consoleBase;
let redisUrl;
const shards = {}; // id -> { child, ws, http, peer }
const url = (id) => `http://${shards[id].http}`;

function startShard(id, config) {
  const data = join(workDir, id);
  mkdirSync(data, { recursive: true });
  return start(serverBin, ['--config', config, '--ws-addr', '127.0.0.1:0', '--http-addr', '127.0.0.1:0'],
    pattern(/^(ws|http|peer) listening on (\S+:\d+)\s*$/, ['ws', 'http', 'peer']), {
      cwd: workDir,
      env: {
        TESSERA_CLUSTER__REDIS: redisUrl,
        TESSERA_CLUSTER__SECRET: SECRET,
        TESSERA_CLUSTER__SHARD_ID: id,
        TESSERA_CLUSTER__KEY_PREFIX: PREFIX,
        TESSERA_CLUSTER__PEER_ADDR: '127.0.0.1:0',
        TESSERA_STORE__EMBEDDED__DIR: join(data, 'data'),
      },
    });
}

/** The shards the directory lists as ready, by `tessera-ops shards ls`. */
async function readyShards() {
  const { out } = await run(opsBin, ['shards', 'ls', '--redis', redisUrl, '--key-prefix', PREFIX]);
  return out.split('\n').filter((l) => / ready /.test(l)).map((l) => IDS.find((id) => l.includes(id))).filter(Boolean).sort();
}

before(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'tessera-cluster-e2e-'));
  const config = adminConfig(workDir, OPERATOR, VIEWER);
  redisUrl = await startRedis(workDir);
  for (const id of IDS) shards[id] = await startShard(id, config);
  const c = await start(opsBin, ['console', '--listen', '127.0.0.1:0', '--redis', redisUrl, '--key-prefix', PREFIX, '--refresh-ms', '500'],
    pattern(/^(console) listening on (\S+:\d+)\s*$/, ['console']), { cwd: workDir });
  consoleBase = `http://${c.console}`;
  // Wait until every shard is ready in the directory (the loadbot reads
  // the owners there), then a swarm over all of them for the whole run.
  const deadline = Date.now() + 30_000;
  while ((await readyShards()).length < IDS.length) {
    if (Date.now() > deadline) throw new Error(`shards not ready: ${await readyShards()}`);
    await sleep(200);
  }
  spawnChild(loadbotBin, [...IDS.flatMap((id) => ['--url', `ws://${shards[id].ws}`]),
    '--redis', redisUrl, '--cluster-prefix', PREFIX, '--remote-share', '0.5', '--maps', 'lobby,arena', '--rooms', '2',
    '--bots', String(BOTS), '--ramp', '500ms', '--duration', '300s', '--move-hz', '5', '--progress', 'off'], { cwd: workDir });
  browser = await launchBrowser();
}, { timeout: 120_000 });

after(async () => {
  await Promise.race([browser?.close().catch(() => {}), sleep(5_000)]);
  await stopAll();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
}, { timeout: 60_000 });

let operator;
let page;

test('the cluster page shows the three shards with moving numbers and the tunnel matrix', { timeout: 90_000 }, async () => {
  operator = await signIn(browser, consoleBase, OPERATOR, { width: 1400, height: 1000, timeout: 20_000 });
  page = operator.page;
  assert.match(await page.textContent('#who'), /olga \(operator\)/);
  await page.waitForSelector('#cluster-views', { state: 'visible' });
  // The swarm is on the shards: sessions add up to the bots.
  await page.waitForFunction((n) => [...document.querySelectorAll('#shards td.sessions')]
    .reduce((sum, td) => sum + Number(td.textContent), 0) >= n, BOTS, { timeout: 30_000 });
  for (const id of IDS) {
    const row = `#shards tr[data-shard="${url(id)}"]`;
    await page.waitForSelector(`${row} td.state-ready`);
    const first = await page.$eval(`${row} td.msgs-in`, (td) => td.textContent);
    await page.waitForFunction(([sel, before]) => {
      const now = document.querySelector(`${sel} td.msgs-in`)?.textContent;
      return Number(now) > 0 && now !== before;
    }, [row, first], { timeout: 20_000 });
  }
  for (const from of IDS) {
    for (const to of IDS.filter((id) => id !== from)) {
      const cell = `#tunnels td.tunnel[data-from="${from}"][data-to="${to}"]`;
      // Connected, a measured RTT, and rates from the second reading on
      // (the heartbeats alone move bytes every second).
      await page.waitForFunction((sel) => {
        const td = document.querySelector(sel);
        return td && td.classList.contains('state-connected')
          && /^\d+\.\d\d ms$/.test(td.querySelector('.rtt').textContent)
          && /^out \d/.test(td.querySelector('.out').textContent)
          && /^in \d/.test(td.querySelector('.in').textContent)
          && /^\d+ streams$/.test(td.querySelector('.streams').textContent)
          && /^tunnel \d+\.\d+$/.test(td.querySelector('.version').textContent);
      }, cell, { timeout: 30_000 });
    }
  }
  assert.equal(await page.$$eval('#tunnels td.self', (tds) => tds.length), IDS.length, 'the diagonal is empty');
  await shot(page, 'cluster-shards');
});

test('the directory table shows the three shards ready with their leases', { timeout: 60_000 }, async () => {
  for (const id of IDS) {
    await page.waitForFunction((id) => {
      const row = document.querySelector(`#directory tr[data-id="${id}"]`);
      return row && row.querySelector('td.state-ready') && /^\d+$/.test(row.querySelector('td.leases').textContent);
    }, id);
  }
  // The swarm's two rooms are leased, whichever shard holds them.
  await page.waitForFunction(() => [...document.querySelectorAll('#directory td.leases')]
    .reduce((n, td) => n + Number(td.textContent), 0) >= 2, null, { timeout: 30_000 });
  await shot(page, 'cluster-directory');
});

/** The owner's row of a room on the rooms page: [shard url, owner id]. */
async function ownerRow(room) {
  await page.waitForSelector(`#rooms tr[data-room="${room}"]`, { timeout: 30_000 });
  return page.$eval(`#rooms tr[data-room="${room}"]`, (tr) => [tr.dataset.shard, tr.children[5].textContent]);
}

test('the rooms page lists the swarm\'s rooms with their owners and the inspector shows members moving', { timeout: 90_000 }, async () => {
  await tab(page, 'rooms');
  for (const room of ['lobby', 'arena']) await ownerRow(room);
  // Remote members: some bots play from a shard other than the owner.
  await page.waitForFunction(() => [...document.querySelectorAll('#rooms tbody tr')]
    .reduce((n, tr) => n + Number(tr.children[4].textContent), 0) >= 1, null, { timeout: 30_000 });
  await shot(page, 'cluster-rooms');
  await page.click('#rooms tr[data-room="lobby"] button.inspect');
  await page.waitForSelector('#inspector-members tbody tr');
  const positions = () => page.$$eval('#inspector-members tbody tr',
    (rows) => rows.map((r) => r.querySelector('.pos-x').textContent + ',' + r.querySelector('.pos-y').textContent));
  const before = await positions();
  await page.waitForFunction((b) => {
    const now = [...document.querySelectorAll('#inspector-members tbody tr')]
      .map((r) => r.querySelector('.pos-x').textContent + ',' + r.querySelector('.pos-y').textContent);
    return now.length > 0 && now.join() !== b.join();
  }, before, { timeout: 20_000 });
  assert.ok((await page.$$('#inspector-map circle')).length >= 1, 'the members are drawn on the map');
  await shot(page, 'cluster-inspector');
});

test('a kick from the page disconnects a player whose socket is on the third shard', { timeout: 60_000 }, async () => {
  // The demo page of shard c: its socket is on c, its room wherever.
  const log = await kickFromPage(browser, page, url('e2e-c'), 'cluster-players-kick');
  assert.match(log, /2006/, log);
  assert.match(log, /removed by an operator/, log);
});

test('a migrate from the page moves a room to the shard named, and the events page shows it', { timeout: 90_000 }, async () => {
  await tab(page, 'rooms');
  const [fromUrl, fromId] = await ownerRow('arena');
  const to = IDS.find((id) => id !== fromId);
  page.once('dialog', (d) => d.accept(to));
  await page.click(`#rooms tr[data-room="arena"][data-shard="${fromUrl}"] button.migrate`);
  await page.waitForFunction((re) => new RegExp(re).test(document.getElementById('flash').textContent),
    `migrate arena: moved from ${fromId} to ${to} at epoch \\d+`);
  // The room is listed by its new owner, with a higher epoch, and still has
  // its members (nobody was disconnected by the move).
  await page.waitForFunction(([u, id]) => {
    const tr = document.querySelector(`#rooms tr[data-room="arena"][data-shard="${u}"]`);
    return tr && tr.children[5].textContent === id && Number(tr.querySelector('td.members').textContent) >= 1;
  }, [url(to), to], { timeout: 30_000 });
  assert.equal(await page.$(`#rooms tr[data-room="arena"][data-shard="${fromUrl}"]`), null, 'the old owner no longer runs it');
  await shot(page, 'cluster-migrated');
  await tab(page, 'events');
  await page.waitForSelector('#events tbody tr[data-kind="room_moved"]', { timeout: 20_000 });
  await shot(page, 'cluster-events-moved');
});

test('a viewer sees no actions and the API refuses its drain', { timeout: 60_000 }, async () => {
  const viewer = await signIn(browser, consoleBase, VIEWER);
  try {
    const vp = viewer.page;
    assert.match(await vp.textContent('#who'), /victor \(viewer\)/);
    await vp.waitForSelector('#shards tbody tr td.state-ready');
    for (const sel of ['button.drain', '#announce-btn']) {
      for (const b of await vp.$$(sel)) assert.equal(await b.isVisible(), false, `${sel} hidden for a viewer`);
    }
    await tab(vp, 'rooms');
    await vp.waitForSelector('#rooms tr[data-room="lobby"]');
    for (const sel of ['button.restart', 'button.migrate']) {
      const buttons = await vp.$$(sel);
      assert.ok(buttons.length > 0, `${sel} exists`);
      for (const b of buttons) assert.equal(await b.isVisible(), false, `${sel} hidden for a viewer`);
    }
    const status = await vp.evaluate(async ([token, shard]) => {
      const res = await fetch('/api/shards/drain', {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
        body: JSON.stringify({ shard }),
      });
      return res.status;
    }, [VIEWER, url('e2e-c')]);
    assert.equal(status, 403);
    assert.equal(exited(shards['e2e-c'].child), false, 'the refused drain did nothing');
    await shot(vp, 'cluster-viewer');
    assert.deepEqual(viewer.errors, []);
  } finally {
    await viewer.context.close();
  }
});

test('a drain from the page empties the shard and its players go on elsewhere', { timeout: 90_000 }, async () => {
  await tab(page, 'cluster');
  const c = shards['e2e-c'];
  const exit = new Promise((r) => c.child.once('exit', (code, signal) => r({ code, signal })));
  page.once('dialog', (d) => d.accept());
  await page.click(`#shards tr[data-shard="${url('e2e-c')}"] button.drain`);
  await page.waitForFunction(() => /drain/.test(document.getElementById('flash').textContent));
  // Draining, then gone: the process exits 0 within the drain budget.
  assert.deepEqual(await Promise.race([exit, sleep(60_000).then(() => 'still running')]), { code: 0, signal: null });
  await page.waitForSelector(`#shards tr[data-shard="${url('e2e-c')}"] td.state-dead`, { timeout: 30_000 });
  // Every bot is back on the two other shards.
  await page.waitForFunction(([a, b, n]) => {
    const s = (u) => Number(document.querySelector(`#shards tr[data-shard="${u}"] td.sessions`)?.textContent);
    return s(a) + s(b) >= n;
  }, [url('e2e-a'), url('e2e-b'), BOTS], { timeout: 30_000 }).catch(async (e) => {
    throw new Error(`${e.message}: ${await page.$$eval('#shards tbody tr', (trs) => trs.map((tr) => `${tr.dataset.shard} ${tr.querySelector('td.sessions')?.textContent}`).join('; '))}`);
  });
  assert.deepEqual(await readyShards(), ['e2e-a', 'e2e-b']);
  await shot(page, 'cluster-drained');
});

test('a killed shard turns dead and its tunnel is no longer connected', { timeout: 60_000 }, async () => {
  shards['e2e-b'].child.kill('SIGKILL');
  await page.waitForSelector(`#shards tr[data-shard="${url('e2e-b')}"] td.state-dead`, { timeout: 30_000 });
  // Dead in the directory once its alive key expires (cluster.shard_ttl_ms).
  await page.waitForSelector('#directory tr[data-id="e2e-b"] td.state-dead', { timeout: 30_000 });
  await page.waitForFunction(() => {
    const td = document.querySelector('#tunnels td[data-from="e2e-a"][data-to="e2e-b"]');
    return !td || !td.classList.contains('state-connected');
  }, null, { timeout: 30_000 });
  await shot(page, 'cluster-shard-dead');
});

test('the events page lists the directory\'s events, filterable by kind and shard', { timeout: 60_000 }, async () => {
  await tab(page, 'events');
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
  assert.deepEqual(operator.errors, []);
});
