// A query or tool running when the link drops ends with error `disconnected`
// instead of hanging, and the client works again after reconnecting.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { SynapseServer, Clients, waitFor, startProxy, nextEvent, within } from '../test-support/helpers.mjs';

let server;
let key;
const clients = new Clients();
const cleanups = [];

before(async () => {
  server = await new SynapseServer().start();
  key = server.createKey('flaky');
});
afterEach(async () => {
  await clients.closeAll();
  while (cleanups.length) await cleanups.pop()();
});
after(() => server && server.cleanup());

async function viaProxy() {
  const proxy = await startProxy(server.port);
  cleanups.push(() => proxy.close());
  const c = await clients.connect(proxy.url, { apiKey: key });
  await c.whoami(); // the cortex channel is joined
  return { proxy, c };
}

test('a running tool ends with error disconnected when the link drops', async () => {
  const { proxy, c } = await viaProxy();
  const progress = [];
  const errors = [];
  let results = 0;
  const h = c.tool('demo.countdown', { steps: 400, interval_ms: 25 }, {
    onProgress: (p) => progress.push(p.progress),
    onError: (e) => errors.push(e),
    onResult: () => { results += 1; },
  });
  await waitFor(() => progress.length >= 2, { what: 'the countdown to be running' });
  const cutAt = Date.now();
  proxy.sever();
  await assert.rejects(within(5000, h.done, 'the tool to end'), (e) => e.reason === 'disconnected' && e.ref === h.ref);
  assert.ok(Date.now() - cutAt < 5000);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].reason, 'disconnected');
  assert.equal(results, 0);

  // After the reconnect, a new run works and the old one stays ended.
  await nextEvent(c, 'reconnect', 15000).catch(() => {});
  await waitFor(() => c.connected, { timeoutMs: 15000, what: 'the reconnect' });
  const n = progress.length;
  const again = await c.tool('demo.countdown', { steps: 2, interval_ms: 1 }).done;
  assert.equal(again.status, 'success');
  assert.equal(progress.length, n, 'no progress for the dead run after reconnecting');
});

test('a query whose result has not arrived ends with error disconnected when the link drops', async () => {
  const { proxy, c } = await viaProxy();
  proxy.hold(); // the server's answers stay in the proxy
  const thoughts = [];
  const h = c.query('what is held back', { onThought: (t) => thoughts.push(t) });
  // Wait until the query has left the client (the proxy forwards client -> server).
  await waitFor(() => c._socket.conn && c._socket.conn.bufferedAmount === 0, { what: 'the query to be sent' });
  proxy.sever();
  await assert.rejects(within(5000, h.done, 'the query to end'), (e) => e.reason === 'disconnected');
  assert.equal(thoughts.length, 0);
});

test('runs started while reconnecting fail fast with disconnected', async () => {
  const { proxy, c } = await viaProxy();
  proxy.block(true);
  const closed = nextEvent(c, 'close');
  proxy.sever();
  await closed;
  assert.equal(c.state, 'reconnecting');
  await assert.rejects(within(2000, c.query('now?').done, 'the query to fail'), (e) => e.reason === 'disconnected');
  await assert.rejects(within(2000, c.tool('memory.stats', {}).done, 'the tool to fail'), (e) => e.reason === 'disconnected');
  proxy.block(false);
  await waitFor(() => c.connected, { timeoutMs: 15000, what: 'the reconnect' });
  assert.equal((await c.query('now').done).status, 'success');
});

test('disconnect() ends running runs with disconnected and stops reconnecting', async () => {
  const { proxy, c } = await viaProxy();
  const h = c.tool('demo.countdown', { steps: 400, interval_ms: 25 });
  const closes = [];
  c.on('close', (e) => closes.push(e));
  const accepted = proxy.accepted;
  await c.disconnect();
  await assert.rejects(h.done, (e) => e.reason === 'disconnected');
  assert.equal(c.state, 'closed');
  assert.deepEqual(closes.map((e) => e.code), [1000]);
  // The first reconnect attempt would come within 250 ms (the backoff's first step).
  await new Promise((r) => setTimeout(r, 800));
  assert.equal(proxy.accepted, accepted, 'no reconnect after disconnect()');
  assert.equal(c.state, 'closed');
});

test('a silent link (no bytes back, no TCP close) is caught by heartbeats: runs end disconnected, then it reconnects', async () => {
  const proxy = await startProxy(server.port);
  cleanups.push(() => proxy.close());
  const c = await clients.connect(proxy.url, { apiKey: key, heartbeatIntervalMs: 300 });
  await c.whoami();
  const progress = [];
  const h = c.tool('demo.countdown', { steps: 400, interval_ms: 25 }, { onProgress: (p) => progress.push(p) });
  await waitFor(() => progress.length >= 1, { what: 'the countdown to run' });
  const closed = nextEvent(c, 'close', 10000);
  const back = nextEvent(c, 'reconnect', 15000);
  proxy.hold(); // the server's frames, heartbeat replies included, stop arriving
  await assert.rejects(within(5000, h.done, 'the run to end'), (e) => e.reason === 'disconnected');
  const ev = await closed;
  assert.ok(ev, 'a close event for the dead connection');
  await within(15000, back, 'the reconnect');
  assert.equal(c.state, 'open');
  assert.equal((await c.query('alive again').done).status, 'success');
});

test('revoking the key closes with 4003 and the SDK stops reconnecting', async () => {
  const { execFileSync } = await import('node:child_process');
  const { binary } = await import('../../../tests/harness/server.mjs');
  const doomed = server.createKey('doomed');
  const proxy = await startProxy(server.port);
  cleanups.push(() => proxy.close());
  const c = await clients.connect(proxy.url, { apiKey: doomed, agentId: 'doomed' });
  const h = c.tool('demo.countdown', { steps: 400, interval_ms: 25 });
  const closed = nextEvent(c, 'close', 15000);
  const keyId = doomed.split('_')[1];
  execFileSync(binary(), ['keys', 'revoke', keyId, '--data-dir', server.dataDir]);
  const ev = await closed;
  assert.equal(ev.code, 4003);
  await assert.rejects(h.done, (e) => e.reason === 'disconnected');
  await waitFor(() => c.state === 'closed', { what: 'the client to give up' });
  assert.ok(c.errors.some((e) => e.reason === 'credentials_revoked'));
  const accepted = proxy.accepted;
  await new Promise((r) => setTimeout(r, 800));
  assert.equal(proxy.accepted, accepted, 'no reconnect attempt');
});
