// A query or tool running when the link drops is re-attached after the
// reconnect (resume.test.mjs checks the stream event by event); it ends with
// error `disconnected` only when it cannot be: disconnect(), revoked
// credentials, a run started while the link is down. The client works again
// after reconnecting.
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

test('a running tool is not lost when the link drops: it is re-attached and ends with its result', async () => {
  const { proxy, c } = await viaProxy();
  const progress = [];
  const errors = [];
  let results = 0;
  const h = c.tool('demo.countdown', { steps: 60, interval_ms: 25 }, {
    onProgress: (p) => progress.push(p.progress),
    onError: (e) => errors.push(e),
    onResult: () => { results += 1; },
  });
  await waitFor(() => progress.length >= 2, { what: 'the countdown to be running' });
  const back = nextEvent(c, 'reconnect', 15000);
  proxy.sever();
  await within(15000, back, 'the reconnect');
  const out = await within(15000, h.done, 'the tool to end');
  assert.equal(out.status, 'success');
  assert.equal(errors.length, 0);
  assert.equal(results, 1);
  assert.equal(progress.length, 60, 'every progress update once across the cut');
  assert.equal(new Set(progress).size, 60);

  // A new run works too, and the old one stays ended.
  const n = progress.length;
  const again = await c.tool('demo.countdown', { steps: 2, interval_ms: 1 }).done;
  assert.equal(again.status, 'success');
  assert.equal(progress.length, n, 'no progress for the ended run');
});

test('a query whose result has not arrived when the link drops is completed after the reconnect', async () => {
  const { proxy, c } = await viaProxy();
  proxy.hold(); // the server's answers stay in the proxy
  const thoughts = [];
  const h = c.query('what is held back', { onThought: (t, p) => thoughts.push(p.seq) });
  // Wait until the query has left the client (the proxy forwards client -> server).
  await waitFor(() => c._socket.conn && c._socket.conn.bufferedAmount === 0, { what: 'the query to be sent' });
  await new Promise((r) => setTimeout(r, 100));
  proxy.sever();
  const out = await within(15000, h.done, 'the query to end');
  assert.equal(out.status, 'success');
  assert.ok(thoughts.length >= 1);
  assert.deepEqual(thoughts, thoughts.map((_, i) => i + 1), 'each thought once, in order');
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

test('a silent link (no bytes back, no TCP close) is caught by heartbeats: it reconnects and the run goes on', async () => {
  const proxy = await startProxy(server.port);
  cleanups.push(() => proxy.close());
  const c = await clients.connect(proxy.url, { apiKey: key, heartbeatIntervalMs: 300 });
  await c.whoami();
  const progress = [];
  const h = c.tool('demo.countdown', { steps: 160, interval_ms: 25 }, { onProgress: (p) => progress.push(p.seq) });
  await waitFor(() => progress.length >= 1, { what: 'the countdown to run' });
  const closed = nextEvent(c, 'close', 10000);
  const back = nextEvent(c, 'reconnect', 15000);
  proxy.hold(); // the server's frames, heartbeat replies included, stop arriving
  const ev = await closed;
  assert.ok(ev, 'a close event for the dead connection');
  await within(15000, back, 'the reconnect');
  assert.equal(c.state, 'open');
  const out = await within(15000, h.done, 'the run to end');
  assert.equal(out.status, 'success');
  assert.deepEqual(progress, progress.map((_, i) => i + 1), 'every progress update once, in order');
  assert.equal(progress.length, 160);
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
