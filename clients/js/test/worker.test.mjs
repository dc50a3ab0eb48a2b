// AgentWorker (issue 12 item 8; docs/protocol.md section 10) through the real
// server: a worker serving its agent, a client querying it, tokens streaming
// in order, interrupts reaching the handler's AbortSignal, tools called back
// into Synapse, and the worker registering again by itself after its link
// drops or the server restarts.
//
// The tests need a server with the worker protocol (`keys create --worker`);
// against a binary without it they are skipped, saying so.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SynapseServer, Clients, waitFor, startProxy, nextEvent, within, WebSocket } from '../test-support/helpers.mjs';
import { AgentWorker, SynapseError } from '../src/index.js';

let server;
let confDir;
let userKey; // queries agent `helper`
let workerKey; // serves agent `helper`
let skip = false;
const clients = new Clients();
const cleanups = [];

// Every query and tool of every agent goes to workers; tools no worker
// declared (memory.*) run as before.
const CONFIG = '[cortex]\nbackend = "workers"\n';

async function startServer(port = 0) {
  const s = new SynapseServer({ flags: { '--config': join(confDir, 'synapse.toml') }, port });
  return s.start();
}

before(async () => {
  confDir = mkdtempSync(join(tmpdir(), 'synapse-worker-conf-'));
  writeFileSync(join(confDir, 'synapse.toml'), CONFIG);
  try {
    server = await startServer();
  } catch (err) {
    skip = `the server refuses the worker configuration (${String(err.message).split('\n').slice(-3).join(' ')})`;
    return;
  }
  try {
    workerKey = server.createKey('helper-worker', '--worker', '--agent', 'helper');
  } catch {
    skip = 'this synapse binary has no `keys create --worker` (the server side of section 10 is not merged)';
    return;
  }
  userKey = server.createKey('helper-user', '--agent', 'helper');
});
afterEach(async () => {
  await clients.closeAll();
  while (cleanups.length) await cleanups.pop()();
});
after(async () => {
  if (server) await server.cleanup();
  if (confDir) rmSync(confDir, { recursive: true, force: true });
});

function maybe(name, fn) {
  test(name, async (t) => {
    if (skip) {
      t.skip(skip);
      return;
    }
    await fn(t);
  });
}

async function worker(url, opts, handler) {
  const w = new AgentWorker(url, { apiKey: workerKey, agentId: 'helper', transport: WebSocket, ...opts });
  w.errors = [];
  w.on('error', (e) => w.errors.push(e));
  cleanups.push(() => w.stop().catch(() => {}));
  await w.serve(handler);
  return w;
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const t = setTimeout(resolve, ms);
  if (signal) signal.addEventListener('abort', () => { clearTimeout(t); reject(signal.reason); }, { once: true });
});

maybe('a worker serves a query: its thought and tokens reach the client in order, then its result', async () => {
  const w = await worker(server.wsUrl, {}, async function* echo(run) {
    yield { thought: `echoing ${run.q.length} characters` };
    for (const word of run.q.split(' ')) yield `${word} `;
    return { echoed: run.q, kind: run.kind, caller: run.caller };
  });
  assert.equal(w.registered, true);
  assert.ok(w.workerId);
  const c = await clients.connect(server.wsUrl, { apiKey: userKey });
  const events = [];
  const q = 'the quick brown fox jumps over the lazy dog';
  const out = await within(10000, c.query(q, {
    onThought: (t, p) => events.push({ kind: 'thought', seq: p.seq, t }),
    onToken: (d, p) => events.push({ kind: 'token', seq: p.seq, d }),
  }).done, 'the query');
  assert.equal(out.status, 'success');
  assert.deepEqual(out.data.echoed, q);
  assert.equal(out.data.kind, 'query');
  assert.equal(out.data.caller.agent_id, 'helper');
  assert.deepEqual(events.map((e) => e.seq), events.map((_, i) => i + 1), 'every event once, in seq order');
  assert.equal(events[0].kind, 'thought');
  assert.equal(events[0].t.content, `echoing ${q.length} characters`, 'a string thought arrives as {type, content}');
  assert.equal(events.slice(1).map((e) => e.d).join(''), `${q.split(' ').join(' ')} `);
});

maybe('a thousand tokens stream in order and exactly once', async () => {
  await worker(server.wsUrl, {}, async function* many() {
    for (let i = 1; i <= 1000; i++) yield `w${i} `;
    return { n: 1000 };
  });
  const c = await clients.connect(server.wsUrl, { apiKey: userKey });
  const deltas = [];
  const seqs = [];
  const out = await within(20000, c.query('many', { onToken: (d, p) => { deltas.push(d); seqs.push(p.seq); } }).done, 'the stream');
  assert.equal(out.status, 'success');
  assert.equal(deltas.length, 1000);
  assert.equal(deltas.join(''), Array.from({ length: 1000 }, (_, i) => `w${i + 1} `).join(''));
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1));
});

maybe('an interrupt reaches the handler as an AbortSignal; nothing it yields afterwards reaches the client', async (t) => {
  let abortedAt = null;
  let abortReason = null;
  let finallyRan = false;
  await worker(server.wsUrl, {}, async function* slow(run, ctx) {
    ctx.signal.addEventListener('abort', () => { abortedAt = Date.now(); abortReason = ctx.signal.reason; });
    try {
      for (let i = 1; i <= 10000; i++) {
        yield `t${i} `;
        await sleep(5);
      }
    } finally {
      finallyRan = true;
    }
    return null;
  });
  const c = await clients.connect(server.wsUrl, { apiKey: userKey });
  const tokens = [];
  const h = c.query('go on', { onToken: (d) => tokens.push(d) });
  await waitFor(() => tokens.length >= 10, { what: 'tokens' });
  const sentAt = Date.now();
  assert.equal(await h.interrupt('user_stop'), true);
  const out = await h.done;
  assert.deepEqual([out.status, out.reason], ['interrupted', 'user_stop']);
  await waitFor(() => abortedAt !== null, { timeoutMs: 2000, what: 'the handler\'s signal to fire' });
  assert.ok(abortedAt - sentAt < 1000, `the cancel reached the handler ${abortedAt - sentAt} ms after the interrupt`);
  t.diagnostic(`interrupt sent -> handler's signal fired: ${abortedAt - sentAt} ms`);
  assert.ok(abortReason instanceof SynapseError);
  assert.equal(typeof abortReason.cancelReason, 'string');
  await waitFor(() => finallyRan, { what: 'the generator to be closed' });
  const n = tokens.length;
  await sleep(100);
  assert.equal(tokens.length, n, 'no token after the interrupt');
});

maybe('a worker\'s token stream survives the client\'s link being cut: the client resumes it, every token once', async () => {
  await worker(server.wsUrl, {}, async function* stream(run, ctx) {
    for (let i = 1; i <= 300; i++) {
      yield `k${i} `;
      await sleep(4, ctx.signal);
    }
    return { n: 300 };
  });
  const proxy = await startProxy(server.port);
  cleanups.push(() => proxy.close());
  const c = await clients.connect(proxy.url, { apiKey: userKey });
  const seqs = [];
  const deltas = [];
  const h = c.query('stream', { onToken: (d, p) => { deltas.push(d); seqs.push(p.seq); } });
  await waitFor(() => deltas.length >= 30, { what: 'tokens' });
  const back = nextEvent(c, 'reconnect', 15000);
  proxy.sever();
  await within(15000, back, 'the reconnect');
  const out = await within(20000, h.done, 'the run');
  assert.deepEqual(out.data, { n: 300 });
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), 'every token once, in order');
  assert.equal(deltas.join(''), Array.from({ length: 300 }, (_, i) => `k${i + 1} `).join(''));
});

maybe('a run that times out on the server cancels the handler with reason timeout', async () => {
  let reason = null;
  await worker(server.wsUrl, {}, async function* slow(run, ctx) {
    await sleep(60000, ctx.signal).catch((e) => { reason = e.cancelReason; });
    return null;
  });
  const c = await clients.connect(server.wsUrl, { apiKey: userKey });
  await assert.rejects(within(10000, c.query('slow', { timeoutMs: 300 }).done, 'the timeout'), (e) => e.reason === 'timeout');
  await waitFor(() => reason !== null, { what: 'the handler to be cancelled' });
  assert.equal(reason, 'timeout');
});

maybe('ctx.callTool runs memory.search as the run\'s caller', async () => {
  const c = await clients.connect(server.wsUrl, { apiKey: userKey });
  await c.tool('memory.store', { content: 'The ferry to Nolsoy leaves at seven' }).done;
  await worker(server.wsUrl, {}, async function* retrieval(run, ctx) {
    const found = await ctx.callTool('memory.search', { query: run.q, limit: 3 });
    yield { thought: `found ${found.results.length}` };
    for (const r of found.results) yield `${r.content}\n`;
    return { sources: found.results.map((r) => r.id) };
  });
  const text = [];
  const out = await within(10000, c.query('ferry Nolsoy', { onToken: (d) => text.push(d) }).done, 'the query');
  assert.equal(out.status, 'success');
  assert.match(text.join(''), /ferry to Nolsoy leaves at seven/);
  assert.equal(out.data.sources.length, 1);
});

maybe('a declared tool is served by the worker; a handler that throws ends the run with its reason', async () => {
  const tools = [{ name: 'text.upper', description: 'Upper-cases text', input_schema: { type: 'object', properties: { text: { type: 'string' } } } }];
  await worker(server.wsUrl, { tools }, async function* handler(run) {
    if (run.kind === 'tool') {
      yield { progress: 1, total: 1 };
      return { text: String(run.args.text).toUpperCase(), name: run.name };
    }
    throw new SynapseError('no_answer', 'I have nothing to say about that');
  });
  const c = await clients.connect(server.wsUrl, { apiKey: userKey });
  const out = await c.tool('text.upper', { text: 'shout' }).done;
  assert.deepEqual(out.data, { text: 'SHOUT', name: 'text.upper' });
  await assert.rejects(c.query('anything').done, (e) => e.reason === 'no_answer' && /nothing to say/.test(e.message));
});

maybe('runs share a worker up to its capacity; each ends exactly once', async () => {
  let running = 0;
  let peak = 0;
  await worker(server.wsUrl, { capacity: 4 }, async function* busy(run) {
    running += 1;
    peak = Math.max(peak, running);
    try {
      for (let i = 0; i < 5; i++) {
        yield `${run.q}.${i} `;
        await sleep(10);
      }
    } finally {
      running -= 1;
    }
    return run.q;
  });
  const c = await clients.connect(server.wsUrl, { apiKey: userKey });
  const ends = new Map();
  const handles = Array.from({ length: 4 }, (_, i) => c.query(`q${i}`, {
    onResult: () => ends.set(i, (ends.get(i) || 0) + 1),
    onError: () => ends.set(i, (ends.get(i) || 0) + 1),
  }));
  const outs = await within(15000, Promise.all(handles.map((h) => h.done)), 'all runs');
  assert.deepEqual(outs.map((o) => o.data), ['q0', 'q1', 'q2', 'q3']);
  assert.deepEqual([...ends.values()], [1, 1, 1, 1]);
  assert.ok(peak >= 2, `runs overlapped (peak ${peak})`);
  assert.ok(peak <= 4);
});

maybe('the worker registers again after its link drops; the run it was serving ends agent_unavailable', async () => {
  const proxy = await startProxy(server.port);
  cleanups.push(() => proxy.close());
  let aborted = null;
  const w = await worker(proxy.url, {}, async function* handler(run, ctx) {
    if (run.q === 'long') {
      ctx.signal.addEventListener('abort', () => { aborted = ctx.signal.reason; });
      for (let i = 0; i < 100000 && !ctx.signal.aborted; i++) {
        yield `x${i} `;
        await sleep(10, ctx.signal).catch(() => {});
      }
      return null;
    }
    return { ok: run.q };
  });
  const c = await clients.connect(server.wsUrl, { apiKey: userKey });
  const tokens = [];
  const long = c.query('long', { onToken: (d) => tokens.push(d) });
  await waitFor(() => tokens.length >= 3, { what: 'the long run to stream' });
  const again = nextEvent(w, 'registered', 15000);
  proxy.sever();
  await assert.rejects(within(15000, long.done, 'the run to end'), (e) => e.reason === 'agent_unavailable');
  await waitFor(() => aborted !== null, { what: 'the handler to be cancelled' });
  assert.equal(aborted.cancelReason, 'disconnected');
  await within(15000, again, 're-registration');
  assert.equal(w.registered, true);
  const out = await within(10000, c.query('after').done, 'a query after the re-registration');
  assert.deepEqual(out.data, { ok: 'after' });
});

maybe('the worker registers again after the server restarts', async () => {
  const own = await startServer();
  cleanups.push(() => own.cleanup());
  const wk = own.createKey('restart-worker', '--worker', '--agent', 'helper');
  const uk = own.createKey('restart-user', '--agent', 'helper');
  const w = new AgentWorker(own.wsUrl, { apiKey: wk, agentId: 'helper', transport: WebSocket, reconnectMaxMs: 500 });
  cleanups.push(() => w.stop().catch(() => {}));
  await w.serve(async function* handler(run) { yield 'hi '; return { q: run.q }; });
  const registered = nextEvent(w, 'registered', 20000);
  await own.kill();
  await own.start();
  await within(20000, registered, 're-registration after the restart');
  const c = await clients.connect(own.wsUrl, { apiKey: uk });
  const out = await within(10000, c.query('still there?').done, 'the query');
  assert.deepEqual(out.data, { q: 'still there?' });
});

maybe('a worker made with --agent \'*\' serves every agent of its tenant on agent:*', async () => {
  const anyKey = server.createKey('any-worker', '--worker', '--agent', '*');
  const otherUser = server.createKey('other-user', '--agent', 'other');
  const w = new AgentWorker(server.wsUrl, { apiKey: anyKey, agentId: '*', capacity: 2, transport: WebSocket });
  cleanups.push(() => w.stop().catch(() => {}));
  const reply = await w.serve(async function* any(run) {
    yield `for ${run.caller.agent_id}`;
    return { agent: run.caller.agent_id };
  });
  assert.ok(reply.worker_id);
  assert.equal(w.topic, 'agent:*');
  const a = await clients.connect(server.wsUrl, { apiKey: userKey });
  const b = await clients.connect(server.wsUrl, { apiKey: otherUser });
  const [ra, rb] = await within(10000, Promise.all([a.query('x').done, b.query('y').done]), 'both queries');
  assert.deepEqual([ra.data, rb.data], [{ agent: 'helper' }, { agent: 'other' }]);
});

maybe('a key that is not a worker key cannot serve: serve() rejects with forbidden', async () => {
  const w = new AgentWorker(server.wsUrl, { apiKey: userKey, agentId: 'helper', transport: WebSocket });
  cleanups.push(() => w.stop().catch(() => {}));
  await assert.rejects(w.serve(async () => null), (e) => e.reason === 'forbidden');
  assert.equal(w.registered, false);
});

maybe('with no worker connected a query ends at once with agent_unavailable', async () => {
  const c = await clients.connect(server.wsUrl, { apiKey: userKey });
  const t0 = Date.now();
  await assert.rejects(c.query('anyone?').done, (e) => e.reason === 'agent_unavailable');
  assert.ok(Date.now() - t0 < 2000);
});
