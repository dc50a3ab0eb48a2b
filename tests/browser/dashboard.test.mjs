// The dashboard in a real browser (Debian's chromium, driven by
// playwright-core): sign in with the admin key, see a test client's
// connection and its published message appear, run a query, run a slow
// tool and interrupt it. Hostile strings from tests/corpus/hostile.json are
// published and used as presence metadata: they must show as text, never
// as markup. Screenshots go to build/test-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { SynapseServer } from '../harness/server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
const artifacts = join(repo, 'build', 'test-artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const hostile = JSON.parse(readFileSync(join(repo, 'tests', 'corpus', 'hostile.json'), 'utf8'));
// Markup that would run or render if it were ever parsed as HTML.
const XSS = [...hostile.xss.slice(0, 8), '<img src=x onerror="window.__xss=1">', '</li><b id="injected">bold</b>'];

let server;
let browser;
let page;
const sockets = [];

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  server = await new SynapseServer().start();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 1400 } });
  page.on('pageerror', (e) => console.error('page error:', e.message));
});

after(async () => {
  for (const s of sockets) s.terminate();
  if (browser) await browser.close();
  if (server) await server.cleanup();
});

// A minimal V2 client for the test's own connection.
function client(url) {
  const ws = new WebSocket(url);
  sockets.push(ws);
  let ref = 0;
  const waiting = new Map();
  ws.on('message', (data) => {
    const [, r, , event, payload] = JSON.parse(data.toString());
    if (event === 'phx_reply' && waiting.has(r)) { waiting.get(r)(payload); waiting.delete(r); }
  });
  const opened = new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  const send = (joinRef, topic, event, payload) => new Promise((res) => {
    const r = String(++ref);
    waiting.set(r, res);
    ws.send(JSON.stringify([joinRef, r, topic, event, payload]));
  });
  return { opened, send };
}

const shot = (name) => page.screenshot({ path: join(artifacts, `dashboard-${name}.png`), fullPage: true });

test('the dashboard signs in, shows a client and its message as text, runs and interrupts a query', { timeout: 60000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: scripts/install-deps installs Debian's chromium`);
  await page.goto(`${server.httpUrl}/dashboard`);
  await page.fill('#credential', 'syn_wrong_key');
  await page.click('#signin-button');
  await page.waitForFunction(() => document.querySelector('#signin-error').textContent.length > 0);
  await page.fill('#credential', server.adminKey);
  await page.click('#signin-button');
  await page.waitForSelector('#status[data-state="live"]', { timeout: 10000 });
  await shot('1-signed-in');

  // A test client joins with hostile presence metadata and publishes hostile text.
  const key = server.createKey('browser-client', '--agent', 'browser-client');
  const c = client(`ws://127.0.0.1:${server.port}/cortex/websocket?vsn=2.0.0&api_key=${key}`);
  await c.opened;
  const joined = await c.send('1', 'room:dash', 'phx_join', { presence: true, meta: { name: XSS[XSS.length - 2] } });
  assert.equal(joined.status, 'ok');
  for (const text of XSS) assert.equal((await c.send('1', 'room:dash', 'said', { text })).status, 'ok');

  await page.waitForFunction(() => [...document.querySelectorAll('#connections tbody tr')]
    .some((tr) => tr.textContent.includes('browser-client')), null, { timeout: 10000 });
  await page.waitForSelector('#topics tr[data-topic="room:dash"]', { timeout: 10000 });
  await page.click('#topics tr[data-topic="room:dash"]');
  await page.waitForFunction((needle) => document.querySelector('#messages').textContent.includes(needle),
    JSON.stringify(XSS[XSS.length - 1]).slice(1, -1), { timeout: 10000 });
  await page.waitForFunction(() => document.querySelector('#presence').textContent.includes('onerror'), null,
    { timeout: 10000 });
  await shot('2-client-and-message');

  // Text, never markup: no element came from the data, nothing ran.
  const injected = await page.evaluate(() => ({
    xss: window.__xss === 1,
    elements: document.querySelectorAll('#messages *:not(li), #presence *:not(li), #injected, img, svg, iframe').length,
    text: document.querySelector('#messages').textContent,
  }));
  assert.equal(injected.xss, false);
  assert.equal(injected.elements, 0);
  for (const s of XSS) assert.ok(injected.text.includes(JSON.stringify(s).slice(1, -1)), s);

  // The query playground: a query streams and ends with a result...
  await page.fill('#query', 'how do I deploy?');
  await page.click('#run');
  await page.waitForSelector('#result[data-outcome]', { timeout: 10000 });
  assert.equal(await page.getAttribute('#result', 'data-outcome'), 'result');
  const thoughts = await page.$$eval('#thoughts li', (lis) => lis.length);
  assert.ok(thoughts > 0, 'thoughts were shown as they streamed');
  await shot('3-query-result');

  // ...and a slow run is interrupted from the page.
  await page.fill('#query', '!countdown 100');
  await page.click('#run');
  await page.waitForSelector('#thoughts li', { timeout: 10000 });
  await page.click('#interrupt');
  await page.waitForSelector('#result[data-outcome="interrupted"]', { timeout: 10000 });
  await shot('4-interrupted');
});
