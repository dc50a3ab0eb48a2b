// The cortex channel through the SDK: streamed queries, tools with progress,
// interrupts, errors and how the SDK learns its agent id.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { SynapseServer, Clients, waitFor } from '../test-support/helpers.mjs';

let server;
let key;
const clients = new Clients();

before(async () => {
  server = await new SynapseServer().start();
  key = server.createKey('cortex-agent');
});
afterEach(() => clients.closeAll());
after(() => server && server.cleanup());

// Every frame the phoenix socket receives, to check the server side too
// (the SDK itself drops anything after a terminal event).
function spy(client) {
  const frames = [];
  client._socket.onMessage((m) => frames.push(m));
  return frames;
}

test('a query streams its thoughts in seq order, then one result', async () => {
  const c = await clients.connect(server.wsUrl, { apiKey: key });
  const stored = [];
  for (const content of ['Kestrel migration is scheduled for the blue cluster', 'The blue cluster runs kestrel nodes']) {
    const r = await c.tool('memory.store', { content, importance: 0.8 }).done;
    assert.equal(r.status, 'success');
    assert.equal(typeof r.data.id, 'number');
    stored.push(r.data.id);
  }

  const log = [];
  const h = c.query('kestrel blue cluster', {
    limit: 5,
    onThought: (thought, push) => log.push({ kind: 'thought', seq: push.seq, type: thought.type, ref: push.ref }),
    onResult: (data) => log.push({ kind: 'result', data }),
    onError: (err) => log.push({ kind: 'error', err }),
  });
  assert.match(h.ref, /\S/);
  const outcome = await h.done;
  assert.equal(outcome.status, 'success');
  assert.equal(outcome.ref, h.ref);

  const thoughts = log.filter((e) => e.kind === 'thought');
  assert.ok(thoughts.length >= 2, `expected several thoughts, got ${thoughts.length}`);
  assert.deepEqual(thoughts.map((t) => t.seq), thoughts.map((_, i) => i + 1), 'seq runs 1, 2, 3, ...');
  assert.ok(thoughts.every((t) => t.ref === h.ref));
  assert.ok(thoughts.every((t) => typeof t.type === 'string'));
  assert.equal(log.at(-1).kind, 'result', 'the result comes last');
  assert.equal(log.filter((e) => e.kind !== 'thought').length, 1, 'exactly one terminal callback');

  const ids = outcome.data.results.map((r) => r.id);
  assert.ok(stored.every((id) => ids.includes(id)), `the stored memories are recalled: ${JSON.stringify(ids)}`);
  assert.deepEqual(log.at(-1).data, outcome.data);
});

test('interrupting demo.countdown ends it interrupted, and nothing follows', async () => {
  const c = await clients.connect(server.wsUrl, { apiKey: key });
  const frames = spy(c);
  const progress = [];
  let interruptedCalls = 0;
  const h = c.tool('demo.countdown', { steps: 200, interval_ms: 25 }, {
    onProgress: (p) => progress.push(p.progress),
    onInterrupted: () => { interruptedCalls += 1; },
  });
  await waitFor(() => progress.length >= 2, { what: 'two progress updates' });
  assert.equal(await h.interrupt('user_cancel'), true);
  const outcome = await h.done;
  assert.deepEqual(outcome, { status: 'interrupted', ref: h.ref, runId: h.runId, reason: 'user_cancel' });
  assert.equal(interruptedCalls, 1);

  // A round trip after the terminal event, plus several countdown intervals:
  // a countdown still running would have pushed by then.
  await c.ping();
  const seen = progress.length;
  await new Promise((r) => setTimeout(r, 250));
  await c.ping();
  const mine = frames.filter((f) => f.payload && f.payload.ref === h.ref && f.event !== 'phx_reply');
  const last = mine.at(-1);
  assert.equal(last.event, 'interrupted', 'the interrupted push is the last one for the ref');
  assert.equal(mine.filter((f) => f.event === 'interrupted').length, 1);
  assert.equal(progress.length, seen, 'no progress callback after the interrupt');
  assert.ok(progress.length < 200);
  // interrupt of a run that is over: not_found.
  await assert.rejects(c.interrupt(h.ref), (e) => e.reason === 'not_found');
});

test('a tool reports progress in order, then its result', async () => {
  const c = await clients.connect(server.wsUrl, { apiKey: key });
  const updates = [];
  let resultAt = -1;
  const h = c.tool('demo.countdown', { steps: 5, interval_ms: 10 }, {
    onProgress: (p) => updates.push(p),
    onResult: () => { resultAt = updates.length; },
  });
  const outcome = await h.done;
  assert.equal(outcome.status, 'success');
  assert.deepEqual(updates.map((u) => u.progress), [1, 2, 3, 4, 5]);
  assert.ok(updates.every((u) => u.ref === h.ref));
  assert.equal(resultAt, 5, 'the result comes after all five progress updates');
});

test('tools() lists the built-in tools with their schemas', async () => {
  const c = await clients.connect(server.wsUrl, { apiKey: key });
  const tools = await c.tools();
  const names = tools.map((t) => t.name);
  for (const n of ['memory.store', 'memory.search', 'memory.forget', 'memory.stats', 'demo.countdown']) {
    assert.ok(names.includes(n), `${n} in ${names}`);
  }
  const countdown = tools.find((t) => t.name === 'demo.countdown');
  assert.deepEqual(countdown.input_schema.required.sort(), ['interval_ms', 'steps']);
});

test('refused runs reject done with the server reason; the server timeout arrives as error timeout', async () => {
  const c = await clients.connect(server.wsUrl, { apiKey: key });
  let onError = null;
  await assert.rejects(c.tool('no.such.tool', {}, { onError: (e) => { onError = e; } }).done,
    (e) => e.name === 'SynapseError' && e.reason === 'unknown_tool');
  assert.equal(onError.reason, 'unknown_tool');
  await assert.rejects(c.tool('demo.countdown', { steps: 'many' }).done,
    (e) => e.reason === 'invalid_args' && Array.isArray(e.errors) && e.errors.length > 0);
  await assert.rejects(c.query('').done, (e) => e.reason === 'invalid_payload');
  const t0 = Date.now();
  await assert.rejects(c.tool('demo.countdown', { steps: 100, interval_ms: 50 }, { timeoutMs: 200 }).done,
    (e) => e.reason === 'timeout');
  assert.ok(Date.now() - t0 < 4000, 'the server timeout ended it, not the SDK backstop');
});

test('the agent id: from the key name, from --agent, from a token, or given', async () => {
  const named = await clients.connect(server.wsUrl, { apiKey: key });
  assert.equal(await named.whoami(), 'cortex-agent');
  assert.equal(named.agentId, 'cortex-agent');

  const otherKey = server.createKey('robot-key', '--agent', 'robot-7');
  const agentKey = await clients.connect(server.wsUrl, { apiKey: otherKey });
  assert.equal(await agentKey.whoami(), 'robot-7');

  const { token } = await server.token(server.adminKey, { agent_id: 'tok-agent', ttl_s: 600 });
  const viaToken = await clients.connect(server.wsUrl, { token });
  assert.equal(await viaToken.whoami(), 'tok-agent');
  assert.equal((await viaToken.query('anything').done).status, 'success');

  // A wrong agentId is refused by the server, and the query says so.
  const wrong = await clients.connect(server.wsUrl, { apiKey: key, agentId: 'someone-else' });
  await assert.rejects(wrong.query('x').done, (e) => e.reason === 'forbidden');

  // Without HTTP (fetch fails), the refusal of a probe join names the agent.
  const noHttp = await clients.connect(server.wsUrl, {
    apiKey: otherKey, fetch: async () => { throw new Error('no http here'); },
  });
  assert.equal(await noHttp.whoami(), 'robot-7');
});

test('connect() rejects on bad credentials and a query before connect fails fast', async () => {
  const bad = clients.make(server.wsUrl, { apiKey: 'syn_nope_nope' });
  await assert.rejects(bad.connect(), (e) => e.reason === 'unauthorized');
  assert.equal(bad.state, 'idle');
  await assert.rejects(bad.query('x').done, (e) => e.reason === 'disconnected');
});
