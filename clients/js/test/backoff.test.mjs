// Reconnect backoff: exponential with full jitter, capped at 30 s, and the
// function the SDK hands to phoenix. No server needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { MimoSynapse, backoffDelay, jwtClaims } from '../src/index.js';

test('full jitter: uniformly in [0, min(30 s, base * 2^(n-1)))', () => {
  const base = 250;
  for (let n = 1; n <= 12; n++) {
    const ceiling = Math.min(30000, base * 2 ** (n - 1));
    assert.equal(backoffDelay(n, { random: () => 0 }), 0);
    assert.equal(backoffDelay(n, { random: () => 0.999999 }), Math.floor(0.999999 * ceiling));
    assert.equal(backoffDelay(n, { random: () => 0.5 }), Math.floor(ceiling / 2));
  }
  assert.equal(backoffDelay(1000, { random: () => 0.999999 }), 29999, 'capped, no overflow');
  assert.equal(backoffDelay(7, { baseMs: 100, maxMs: 2000, random: () => 0.999999 }), 1999);
});

test('delays are random and grow with the attempt', () => {
  const sample = (n) => Array.from({ length: 400 }, () => backoffDelay(n));
  const early = sample(1);
  const late = sample(10);
  assert.ok(early.every((d) => d >= 0 && d < 250));
  assert.ok(late.every((d) => d >= 0 && d < 30000));
  assert.ok(new Set(late).size > 100, 'jittered, not fixed');
  const mean = (a) => a.reduce((x, y) => x + y, 0) / a.length;
  assert.ok(mean(late) > 10000 && mean(late) < 20000, `mean of full jitter under a 30 s cap ~15 s, got ${mean(late)}`);
});

test('the SDK gives phoenix the backoff and a params function', () => {
  const c = new MimoSynapse('ws://127.0.0.1:9/cortex', { apiKey: 'k', transport: WebSocket, reconnectBaseMs: 100, reconnectMaxMs: 1000 });
  const socket = c._makeSocket();
  const delays = Array.from({ length: 200 }, (_, i) => socket.reconnectAfterMs(1 + (i % 20)));
  assert.ok(delays.every((d) => d >= 0 && d < 1000));
  assert.ok(delays.some((d) => d > 500));
  assert.equal(typeof socket.params, 'function');
  assert.deepEqual(socket.params(), { api_key: 'k' });
  assert.equal(socket.endPointURL(), 'ws://127.0.0.1:9/cortex/websocket?api_key=k&vsn=2.0.0');
});

test('urls are normalized to the /cortex endpoint', () => {
  const make = (u) => new MimoSynapse(u, { apiKey: 'k', transport: WebSocket }).url;
  assert.equal(make('ws://h:4000/cortex'), 'ws://h:4000/cortex');
  assert.equal(make('ws://h:4000/cortex/websocket'), 'ws://h:4000/cortex');
  assert.equal(make('ws://h:4000'), 'ws://h:4000/cortex');
  assert.equal(make('wss://h/'), 'wss://h/cortex');
});

test('options are checked', () => {
  assert.throws(() => new MimoSynapse('ws://h', { transport: WebSocket }), /apiKey, token or getToken/);
  assert.throws(() => new MimoSynapse('ws://h', { apiKey: 'k', token: 't', transport: WebSocket }), /not both/);
  const hadWs = globalThis.WebSocket;
  try {
    globalThis.WebSocket = undefined;
    assert.throws(() => new MimoSynapse('ws://h', { apiKey: 'k' }), /transport/);
  } finally {
    globalThis.WebSocket = hadWs;
  }
  const sub = jwtClaims('x.' + Buffer.from(JSON.stringify({ sub: 'ägent', exp: 5 })).toString('base64url') + '.y');
  assert.deepEqual(sub, { sub: 'ägent', exp: 5 });
  assert.equal(jwtClaims('garbage'), null);
});
