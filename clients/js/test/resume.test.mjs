// Runs outlive their connection (docs/protocol.md §9 "Runs"; issue 13 item
// 6): when the link drops mid-stream the SDK re-attaches every run it
// follows from the last seq it delivered, so the application sees one
// stream with no gap and no duplicate. A run ends `disconnected` only when it
// cannot be re-attached. A second device follows a run with attach(run_id).
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { SynapseServer, Clients, waitFor, startProxy, nextEvent, within } from '../test-support/helpers.mjs';

let server;
let key;
const clients = new Clients();
const cleanups = [];

before(async () => {
  server = await new SynapseServer().start();
  key = server.createKey('resumer');
});
afterEach(async () => {
  await clients.closeAll();
  while (cleanups.length) await cleanups.pop()();
});
after(() => server && server.cleanup());

async function viaProxy(srv = server, k = key, opts = {}) {
  const proxy = await startProxy(srv.port);
  cleanups.push(() => proxy.close());
  const c = await clients.connect(proxy.url, { apiKey: k, ...opts });
  await c.whoami(); // the cortex channel is joined
  return { proxy, c };
}

// Records every event of a run with its seq, and checks the stream is
// exactly 1, 2, 3, ... with nothing twice.
function recorder() {
  const events = [];
  const opts = {
    onToken: (delta, p) => events.push({ kind: 'token', seq: p.seq, delta, snapshot: !!p.snapshot }),
    onThought: (t, p) => events.push({ kind: 'thought', seq: p.seq, thought: t, snapshot: !!p.snapshot }),
    onProgress: (p) => events.push({ kind: 'progress', seq: p.seq, progress: p.progress, snapshot: !!p.snapshot }),
    onResult: (data, p) => events.push({ kind: 'result', seq: p.seq, data }),
    onError: (e) => events.push({ kind: 'error', seq: e.details && e.details.seq, reason: e.reason }),
    onInterrupted: (reason, p) => events.push({ kind: 'interrupted', seq: p.seq, reason }),
  };
  return { events, opts };
}

function assertExactlyOnce(events, { from = 1 } = {}) {
  const seqs = events.map((e) => e.seq);
  const expected = Array.from({ length: seqs.length }, (_, i) => i + from);
  assert.deepEqual(seqs, expected, 'every event once, in seq order, none missing');
  const terminal = events.filter((e) => ['result', 'error', 'interrupted'].includes(e.kind));
  assert.equal(terminal.length, 1, 'exactly one terminal event');
  assert.equal(events[events.length - 1], terminal[0], 'the terminal event comes last');
}

const tokensText = (n, from = 1) => Array.from({ length: n - from + 1 }, (_, i) => `t${i + from} `).join('');

async function reconnected(c, proxy, cut = () => proxy.sever()) {
  const back = nextEvent(c, 'reconnect', 15000);
  cut();
  await within(15000, back, 'the reconnect');
}

test('a token stream cut mid-stream by the proxy resumes: every token exactly once, in order', async () => {
  const { proxy, c } = await viaProxy();
  const { events, opts } = recorder();
  const resumed = [];
  c.on('run_resumed', (e) => resumed.push(e));
  const h = c.tool('demo.tokens', { count: 150, interval_ms: 8 }, opts);
  await waitFor(() => events.length >= 20, { what: 'tokens to stream' });
  await reconnected(c, proxy);
  const out = await within(20000, h.done, 'the run to finish');
  assert.equal(out.status, 'success');
  assert.equal(out.runId, h.runId);
  assert.deepEqual(out.data, { tokens: 150 });
  assertExactlyOnce(events);
  assert.equal(events.filter((e) => e.kind === 'token').map((e) => e.delta).join(''), tokensText(150));
  assert.equal(resumed.length, 1);
  assert.equal(resumed[0].runId, h.runId);
  assert.ok(resumed[0].afterSeq >= 20, 'the re-attach asked only for what followed the last seq seen');
});

test('a countdown survives three cuts: every progress update once, then its result', async () => {
  const { proxy, c } = await viaProxy();
  const { events, opts } = recorder();
  const h = c.tool('demo.countdown', { steps: 120, interval_ms: 15 }, opts);
  for (let cut = 1; cut <= 3; cut++) {
    const n = events.length;
    await waitFor(() => events.length >= n + 10, { timeoutMs: 10000, what: `progress before cut ${cut}` });
    await reconnected(c, proxy);
  }
  const out = await within(20000, h.done, 'the countdown to finish');
  assert.equal(out.status, 'success');
  assertExactlyOnce(events);
  const progress = events.filter((e) => e.kind === 'progress').map((e) => e.progress);
  assert.equal(progress.length, 120);
  assert.deepEqual(progress, [...progress].sort((a, b) => a - b), 'progress in order');
});

test('a run kept going while the link was down: the missed events come first, then the live ones', async () => {
  const { proxy, c } = await viaProxy();
  const { events, opts } = recorder();
  const h = c.tool('demo.tokens', { count: 100, interval_ms: 10 }, opts);
  await waitFor(() => events.length >= 10, { what: 'tokens to stream' });
  // Down for ~400 ms: the server streams about 40 tokens into the run's log meanwhile.
  proxy.block(true);
  const closed = nextEvent(c, 'close');
  proxy.sever();
  await closed;
  const seenWhileDown = events.length;
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(events.length, seenWhileDown, 'nothing arrives while the link is down');
  const back = nextEvent(c, 'reconnect', 15000);
  proxy.block(false);
  await within(15000, back, 'the reconnect');
  assert.equal((await within(20000, h.done, 'the run')).status, 'success');
  assertExactlyOnce(events);
  assert.equal(events.filter((e) => e.kind === 'token').map((e) => e.delta).join(''), tokensText(100));
});

test('a query whose processing reply was lost is found by its ref after the reconnect and completes', async () => {
  const { proxy, c } = await viaProxy();
  await c.tool('memory.store', { content: 'the lighthouse keeper logs the tides' }).done;
  proxy.hold(); // the server's answers, the processing reply included, stay in the proxy
  const { events, opts } = recorder();
  const h = c.query('lighthouse tides', opts);
  await waitFor(() => c._socket.conn && c._socket.conn.bufferedAmount === 0, { what: 'the query to be sent' });
  await new Promise((r) => setTimeout(r, 200)); // it reached the server and ran
  assert.equal(h.runId, null, 'no reply read yet');
  await reconnected(c, proxy);
  const out = await within(10000, h.done, 'the query to end');
  assert.equal(out.status, 'success');
  assert.ok(h.runId, 'the run id was learnt from runs {}');
  assert.ok(out.data.results.some((r) => /lighthouse/.test(r.content)));
  assertExactlyOnce(events);
  assert.ok(events.filter((e) => e.kind === 'thought').length >= 1);
});

test('a run ends disconnected when it cannot be re-attached: the server restarted and no longer knows it', async () => {
  const own = await new SynapseServer().start();
  cleanups.push(() => own.cleanup());
  const k = own.createKey('restarted');
  const { proxy, c } = await viaProxy(own, k);
  const { events, opts } = recorder();
  const h = c.tool('demo.tokens', { count: 2000, interval_ms: 10 }, opts);
  await waitFor(() => events.length >= 5, { what: 'tokens to stream' });
  await own.kill(); // runs live in the node's memory
  await own.start();
  await assert.rejects(within(20000, h.done, 'the run to end'), (e) => {
    assert.equal(e.reason, 'disconnected');
    assert.equal(e.details.cause, 'unknown_run');
    assert.equal(e.runId, h.runId);
    return true;
  });
  assert.equal(events[events.length - 1].kind, 'error');
  assert.equal(events.filter((e) => e.kind === 'error').length, 1);
  // The connection itself is back and works.
  await waitFor(() => c.connected, { timeoutMs: 15000, what: 'the reconnect' });
  assert.equal((await c.tool('demo.countdown', { steps: 2, interval_ms: 1 }).done).status, 'success');
  assert.ok(proxy.accepted >= 2);
});

test('a run nobody re-attached within detach_grace_s ends interrupted (detached), and the SDK reports that', async () => {
  const own = await new SynapseServer({ flags: { '--detach-grace-s': '1' } }).start();
  cleanups.push(() => own.cleanup());
  const k = own.createKey('slowpoke');
  const { proxy, c } = await viaProxy(own, k);
  const { events, opts } = recorder();
  const h = c.tool('demo.tokens', { count: 5000, interval_ms: 10 }, opts);
  await waitFor(() => events.length >= 5, { what: 'tokens to stream' });
  proxy.block(true);
  const closed = nextEvent(c, 'close');
  proxy.sever();
  await closed;
  await new Promise((r) => setTimeout(r, 1800)); // past the 1 s grace
  proxy.block(false);
  const out = await within(20000, h.done, 'the run to end');
  assert.deepEqual([out.status, out.reason], ['interrupted', 'detached']);
  // The tokens streamed during the grace arrive before the terminal event.
  assertExactlyOnce(events);
  assert.ok(events.filter((e) => e.kind === 'token').length > events.length / 2);
});

test('a second device follows a run with attach(run_id): a snapshot as the first token, then the live tokens', async () => {
  const a = await clients.connect(server.wsUrl, { apiKey: key });
  const b = await clients.connect(server.wsUrl, { apiKey: key });
  const first = recorder();
  const h = a.tool('demo.tokens', { count: 120, interval_ms: 8 }, first.opts);
  await waitFor(() => first.events.length >= 30, { what: 'tokens on the first device' });
  const second = recorder();
  const h2 = b.attach(h.runId, second.opts);
  assert.equal(h2.runId, h.runId);
  const [o1, o2] = await within(20000, Promise.all([h.done, h2.done]), 'both devices to see the end');
  assert.equal(o1.status, 'success');
  assert.equal(o2.status, 'success');
  assert.equal(o2.ref, h.ref, 'the attached handle learns the run\'s ref');
  assertExactlyOnce(first.events);
  const snap = second.events[0];
  assert.equal(snap.kind, 'token');
  assert.equal(snap.snapshot, true);
  assert.ok(snap.seq >= 30);
  assert.equal(snap.delta, tokensText(snap.seq), 'the snapshot is every token so far, folded into one text');
  assertExactlyOnce(second.events.slice(1), { from: snap.seq + 1 });
  const text = second.events.filter((e) => e.kind === 'token').map((e) => e.delta).join('');
  assert.equal(text, tokensText(120), 'the second device ends with the same text');
});

test('attach with onSnapshot gets the snapshot as it is; with afterSeq exactly the events after it', async () => {
  const a = await clients.connect(server.wsUrl, { apiKey: key });
  const h = a.tool('demo.tokens', { count: 40, interval_ms: 5 });
  const out = await h.done;
  assert.equal(out.status, 'success');
  // The run ended: its log is kept (run_retention_s) and stays attachable.
  const b = await clients.connect(server.wsUrl, { apiKey: key });
  const snaps = [];
  const tokens = [];
  const viaSnap = await b.attach(h.runId, { onSnapshot: (s) => snaps.push(s), onToken: (d) => tokens.push(d) }).done;
  assert.equal(viaSnap.status, 'success');
  assert.equal(snaps.length, 1);
  assert.equal(snaps[0].text, tokensText(40));
  assert.equal(snaps[0].seq, 40);
  assert.equal(snaps[0].status, 'result');
  assert.deepEqual(tokens, [], 'with onSnapshot the text is not replayed as a token');
  const c = await clients.connect(server.wsUrl, { apiKey: key });
  const { events, opts } = recorder();
  const tail = await c.attach(h.runId, { afterSeq: 35, ...opts }).done;
  assert.equal(tail.status, 'success');
  assert.deepEqual(events.map((e) => e.seq), [36, 37, 38, 39, 40, 41]);
  assert.equal(events.filter((e) => e.kind === 'token').map((e) => e.delta).join(''), tokensText(40, 36));
});

test('an attached run is resumed after a reconnect too, and can be interrupted from the second device', async () => {
  const a = await clients.connect(server.wsUrl, { apiKey: key });
  const first = recorder();
  const h = a.tool('demo.tokens', { count: 5000, interval_ms: 10 }, first.opts);
  await waitFor(() => first.events.length >= 5, { what: 'tokens to stream' });
  const { proxy, c: b } = await viaProxy();
  const second = recorder();
  const h2 = b.attach(h.runId, second.opts);
  await waitFor(() => second.events.length >= 10, { timeoutMs: 10000, what: 'the second device to follow' });
  await reconnected(b, proxy);
  const n = second.events.length;
  await waitFor(() => second.events.length >= n + 10, { timeoutMs: 10000, what: 'tokens after the reconnect' });
  assert.equal(await h2.interrupt('enough'), true);
  const [o1, o2] = await within(10000, Promise.all([h.done, h2.done]), 'both to end');
  assert.deepEqual([o1.status, o1.reason], ['interrupted', 'enough']);
  assert.deepEqual([o2.status, o2.reason], ['interrupted', 'enough']);
  assertExactlyOnce(first.events);
  assertExactlyOnce(second.events.slice(1), { from: second.events[0].seq + 1 });
});

test('attach to an unknown run rejects unknown_run; runs() lists the agent\'s runs', async () => {
  const c = await clients.connect(server.wsUrl, { apiKey: key });
  await assert.rejects(c.attach('no-such-run').done, (e) => e.reason === 'unknown_run');
  const h = c.tool('demo.countdown', { steps: 2, interval_ms: 1 });
  await h.done;
  const list = await c.runs();
  const mine = list.find((r) => r.run_id === h.runId);
  assert.ok(mine, 'the run is listed');
  assert.equal(mine.ref, h.ref);
  assert.equal(mine.status, 'result');
  assert.equal(mine.kind, 'tool');
});

test('resumeRuns: false keeps the old rule: a drop ends the run disconnected', async () => {
  const { proxy, c } = await viaProxy(server, key, { resumeRuns: false });
  const { events, opts } = recorder();
  const h = c.tool('demo.tokens', { count: 5000, interval_ms: 10 }, opts);
  await waitFor(() => events.length >= 3, { what: 'tokens to stream' });
  proxy.sever();
  await assert.rejects(within(5000, h.done, 'the run to end'), (e) => e.reason === 'disconnected');
  await waitFor(() => c.connected, { timeoutMs: 15000, what: 'the reconnect' });
  const n = events.length;
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(events.length, n, 'nothing more for the ended run');
});
