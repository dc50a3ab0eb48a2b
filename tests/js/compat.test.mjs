// The official `phoenix` JavaScript client, used directly, works unchanged
// against Synapse: connect, join, heartbeats, pushes and replies, broadcasts,
// the cortex channel, leave, and its own automatic reconnect and rejoin.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { SynapseServer, waitFor } from '../harness/server.mjs';
import { connect, join, push, disconnect } from './phx.mjs';

let server;
let keyA;
let keyB;
const sockets = [];
async function open(params, opts) {
  const s = await connect(server, params, opts);
  sockets.push(s);
  return s;
}

before(async () => {
  server = await new SynapseServer().start();
  keyA = server.createKey('compat-a');
  keyB = server.createKey('compat-b');
});
afterEach(async () => {
  await Promise.all(sockets.splice(0).map(disconnect));
});
after(() => server && server.cleanup());

test('connects over ws with params {api_key} and joins a pub/sub and a cortex topic', async () => {
  const socket = await open({ api_key: keyA });
  assert.equal(socket.connectionState(), 'open');
  assert.match(socket.endPointURL(), /\/cortex\/websocket\?api_key=.*&vsn=2\.0\.0$/);

  const room = socket.channel('room:compat', {});
  const r = await join(room);
  assert.equal(r.status, 'ok');
  assert.equal(typeof r.response.offset, 'number');
  assert.equal(typeof r.response.epoch, 'string');
  assert.equal(room.state, 'joined');

  const cortex = socket.channel('cortex:compat-a', {});
  const c = await join(cortex);
  assert.equal(c.status, 'ok');
  assert.equal(c.response.agent_id, 'compat-a');
  assert.equal(typeof c.response.session, 'string');

  const other = await join(socket.channel('cortex:compat-b', {}));
  assert.equal(other.status, 'error');
  assert.equal(other.response.reason, 'forbidden');
});

test('heartbeats sent every heartbeatIntervalMs are answered; the socket stays up', async () => {
  const socket = await open({ api_key: keyA }, { heartbeatIntervalMs: 100 });
  const replies = [];
  const closes = [];
  socket.onClose((e) => closes.push(e));
  socket.onMessage((m) => {
    if (m.topic === 'phoenix' && m.event === 'phx_reply') replies.push(m);
  });
  await waitFor(() => replies.length >= 5, { timeoutMs: 10000, what: 'five heartbeat replies' });
  assert.ok(replies.every((m) => m.payload.status === 'ok' && typeof m.ref === 'string'));
  assert.equal(new Set(replies.map((m) => m.ref)).size, replies.length, 'one reply per heartbeat');
  // phoenix closes the socket when a heartbeat goes unanswered for one interval.
  assert.deepEqual(closes, []);
  assert.equal(socket.connectionState(), 'open');
  const rtt = await new Promise((resolve) => socket.ping(resolve));
  assert.ok(rtt >= 0);
});

test('pushes get replies; other members receive the broadcast with _meta, the sender does not', async () => {
  const a = await open({ api_key: keyA });
  const b = await open({ api_key: keyB });
  const chA = a.channel('room:chat', {});
  const chB = b.channel('room:chat', {});
  assert.equal((await join(chA)).status, 'ok');
  assert.equal((await join(chB)).status, 'ok');
  const atA = [];
  const atB = [];
  chA.on('shout', (p) => atA.push(p));
  chB.on('shout', (p) => atB.push(p));

  const r1 = await push(chA, 'shout', { text: 'one' });
  const r2 = await push(chA, 'shout', { text: 'two' });
  assert.equal(r1.status, 'ok');
  assert.equal(r2.response.offset, r1.response.offset + 1);
  await waitFor(() => atB.length === 2, { what: 'b to receive both' });
  assert.deepEqual(atB.map((p) => p.text), ['one', 'two']);
  assert.equal(atB[0]._meta.from, 'compat-a');
  assert.equal(atB[0]._meta.offset, r1.response.offset);
  assert.equal(typeof atB[0]._meta.epoch, 'string');
  assert.equal(typeof atB[0]._meta.ts, 'number');

  // b answers; a gets it, and a's own messages never came back to it.
  await push(chB, 'shout', { text: 'back' });
  await waitFor(() => atA.length === 1, { what: 'a to receive b\'s reply' });
  assert.equal(atA[0].text, 'back');

  const reserved = await push(chA, 'phx_custom', {});
  assert.equal(reserved.status, 'error');
  assert.equal(reserved.response.reason, 'reserved_event');
  const forged = await push(chA, 'shout', { _meta: { from: 'someone' } });
  assert.equal(forged.response.reason, 'invalid_payload');

  // leave: ok, then nothing more for that channel.
  const left = await new Promise((resolve) => chB.leave().receive('ok', () => resolve('ok')).receive('timeout', () => resolve('timeout')));
  assert.equal(left, 'ok');
  await push(chA, 'shout', { text: 'after leave' });
  await push(chA, 'shout', { text: 'after leave 2' });
  const witness = await open({ api_key: keyB });
  const chW = witness.channel('room:chat', {});
  await join(chW);
  const atW = [];
  chW.on('shout', (p) => atW.push(p));
  await push(chA, 'shout', { text: 'barrier' });
  await waitFor(() => atW.length === 1, { what: 'the witness' });
  assert.equal(atB.length, 2, 'nothing after leave');
});

test('the cortex channel: query with thoughts then result, tools, ping, errors', async () => {
  const socket = await open({ api_key: keyA });
  const cortex = socket.channel('cortex:compat-a', {});
  assert.equal((await join(cortex)).status, 'ok');
  const events = [];
  for (const ev of ['thought', 'result', 'error', 'progress', 'interrupted']) cortex.on(ev, (p) => events.push({ ev, p }));

  const stored = await push(cortex, 'tool', { tool: 'memory.store', args: { content: 'phoenix compat works' } });
  assert.equal(stored.status, 'ok');
  assert.equal(stored.response.status, 'running');
  await waitFor(() => events.some((e) => e.ev === 'result' && e.p.ref === stored.response.ref), { what: 'the store result' });

  const q = await push(cortex, 'query', { q: 'phoenix compat', ref: 'compat-q1' });
  // The run model adds run_id to the reply (protocol section 9 "Runs"); the rest is unchanged.
  assert.match(q.response.run_id, /^run_/);
  assert.deepEqual({ ...q.response, run_id: undefined }, { ref: 'compat-q1', status: 'processing', run_id: undefined });
  await waitFor(() => events.some((e) => e.ev === 'result' && e.p.ref === 'compat-q1'), { what: 'the query result' });
  const mine = events.filter((e) => e.p.ref === 'compat-q1');
  assert.equal(mine.at(-1).ev, 'result');
  const seqs = mine.filter((e) => e.ev === 'thought').map((e) => e.p.seq);
  assert.ok(seqs.length >= 1);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1));
  assert.equal(mine.at(-1).p.status, 'success');
  assert.ok(mine.at(-1).p.data.results.some((r) => r.content === 'phoenix compat works'));

  const tools = await push(cortex, 'tools', {});
  assert.ok(tools.response.tools.some((t) => t.name === 'demo.countdown'));
  const ping = await push(cortex, 'ping', {});
  assert.ok(Math.abs(ping.response.pong - Date.now()) < 60000);
  const unknown = await push(cortex, 'nope', {});
  assert.equal(unknown.response.reason, 'unknown_event');
  const missing = await push(cortex, 'interrupt', { ref: 'no-such-run' });
  assert.equal(missing.response.reason, 'not_found');
  const dup = await push(cortex, 'tool', { tool: 'demo.countdown', args: { steps: 50, interval_ms: 20 }, ref: 'same' });
  assert.equal(dup.status, 'ok');
  const dup2 = await push(cortex, 'tool', { tool: 'demo.countdown', args: { steps: 1, interval_ms: 1 }, ref: 'same' });
  assert.equal(dup2.response.reason, 'duplicate_ref');
  const stop = await push(cortex, 'interrupt', { ref: 'same', reason: 'test' });
  assert.equal(stop.status, 'ok');
  await waitFor(() => events.some((e) => e.ev === 'interrupted' && e.p.ref === 'same'), { what: 'interrupted' });
});

test('token auth via params {token}, and a refused key never opens', async () => {
  const { token } = await server.token(keyA);
  const socket = await open({ token });
  const cortex = socket.channel('cortex:compat-a', {});
  assert.equal((await join(cortex)).status, 'ok');
  await assert.rejects(connect(server, { api_key: 'syn_not_a_key' }), /401/);
});

test('phoenix reconnects by itself after the TCP connection dies and rejoins its channels', async () => {
  const a = await open({ api_key: keyA }, { reconnectAfterMs: () => 50, rejoinAfterMs: () => 50 });
  const b = await open({ api_key: keyB });
  const chA = a.channel('room:rejoin', {});
  const chB = b.channel('room:rejoin', {});
  await join(chA);
  await join(chB);
  const got = [];
  chA.on('m', (p) => got.push(p.n));
  const firstJoinRef = chA.joinRef();
  let opens = 0;
  a.onOpen(() => { opens += 1; });

  a.conn._socket.destroy(); // the ws package's net.Socket: no close frame
  await waitFor(() => opens === 1 && chA.state === 'joined', { timeoutMs: 10000, what: 'reconnect and rejoin' });
  assert.notEqual(chA.joinRef(), firstJoinRef, 'a new join');
  await push(chB, 'm', { n: 1 });
  await waitFor(() => got.length === 1, { what: 'a message after the rejoin' });
  assert.deepEqual(got, [1]);
});
