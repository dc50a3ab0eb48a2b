// Presence with the official phoenix client and its Presence helper:
// joins and leaves show in Presence.list, several connections of one agent
// are several metas, and an abrupt TCP drop is a leave.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Presence } from 'phoenix';
import { SynapseServer, waitFor } from '../harness/server.mjs';
import { connect, join, push, disconnect } from './phx.mjs';

let server;
const keys = {};
const sockets = [];
async function open(agent, opts) {
  const s = await connect(server, { api_key: keys[agent] }, opts);
  sockets.push(s);
  return s;
}

before(async () => {
  server = await new SynapseServer().start();
  for (const a of ['ada', 'bea', 'cy']) keys[a] = server.createKey(a);
});
afterEach(async () => {
  await Promise.all(sockets.splice(0).map(disconnect));
});
after(() => server && server.cleanup());

// A member with a Presence helper attached before the join, as phoenix apps do.
async function member(socket, topic, meta) {
  const channel = socket.channel(topic, { presence: true, meta });
  const presence = new Presence(channel);
  const events = [];
  presence.onJoin((id, current, joined) => events.push({ kind: 'join', id, metas: joined.metas }));
  presence.onLeave((id, current, left) => events.push({ kind: 'leave', id, metas: left.metas, remaining: current.metas.length }));
  let syncs = 0;
  presence.onSync(() => { syncs += 1; });
  const r = await join(channel);
  assert.equal(r.status, 'ok', JSON.stringify(r));
  await waitFor(() => syncs > 0, { what: 'presence_state' });
  const list = () => presence.list((id, { metas }) => ({ id, metas }));
  return { channel, presence, events, list, ids: () => list().map((p) => p.id).sort() };
}

test('members see each other join and leave in Presence.list', async () => {
  const topic = 'room:presence-basic';
  const ada = await member(await open('ada'), topic, { status: 'online', name: 'Ada' });
  // presence_state is the last published state; a member's own join follows
  // in the next coalesced diff (within presence_interval).
  await waitFor(() => ada.ids().join() === 'ada', { what: 'ada to see herself' });

  const beaSocket = await open('bea');
  const bea = await member(beaSocket, topic, { status: 'busy' });
  assert.ok(bea.ids().includes('ada'), 'the newcomer gets the others in presence_state');
  await waitFor(() => bea.ids().join() === 'ada,bea', { what: 'bea to see both' });
  await waitFor(() => ada.ids().join() === 'ada,bea', { what: 'ada to see bea join' });
  const beaJoin = ada.events.find((e) => e.kind === 'join' && e.id === 'bea');
  assert.equal(beaJoin.metas[0].status, 'busy');
  assert.equal(typeof beaJoin.metas[0].phx_ref, 'string');
  assert.equal(typeof beaJoin.metas[0].online_at, 'number');
  assert.equal(bea.list().find((p) => p.id === 'ada').metas[0].name, 'Ada');

  // A clean leave of the channel.
  await new Promise((resolve) => bea.channel.leave().receive('ok', resolve));
  await waitFor(() => ada.ids().join() === 'ada', { what: 'ada to see bea leave' });
  assert.ok(ada.events.some((e) => e.kind === 'leave' && e.id === 'bea' && e.remaining === 0));

  // A member that joined without presence is tracked but gets no presence traffic.
  const cySocket = await open('cy');
  const quiet = cySocket.channel(topic, { meta: { silent: true } });
  const heard = [];
  quiet.on('presence_state', (p) => heard.push(p));
  quiet.on('presence_diff', (p) => heard.push(p));
  assert.equal((await join(quiet)).status, 'ok');
  await waitFor(() => ada.ids().includes('cy'), { what: 'ada to see cy' });
  await push(quiet, 'ping_msg', {}); // a round trip: anything queued before has arrived
  assert.deepEqual(heard, []);
});

test('several connections of one agent are several metas under one key', async () => {
  const topic = 'room:presence-multi';
  const watcher = await member(await open('ada'), topic, { role: 'watcher' });
  const tabs = [];
  for (const device of ['laptop', 'phone', 'tablet']) {
    const s = await open('bea');
    tabs.push({ s, m: await member(s, topic, { device }) });
  }
  const beaMetas = () => (watcher.list().find((p) => p.id === 'bea') || { metas: [] }).metas;
  await waitFor(() => beaMetas().length === 3, { what: 'three bea metas' });
  assert.deepEqual(beaMetas().map((m) => m.device).sort(), ['laptop', 'phone', 'tablet']);
  assert.equal(new Set(beaMetas().map((m) => m.phx_ref)).size, 3, 'one phx_ref per connection');
  assert.equal(watcher.list().length, 2, 'one entry per agent');

  // One connection goes: one meta leaves, bea stays.
  await disconnect(tabs[1].s);
  await waitFor(() => beaMetas().length === 2, { what: 'one bea meta to leave' });
  assert.deepEqual(beaMetas().map((m) => m.device).sort(), ['laptop', 'tablet']);
  const leave = watcher.events.find((e) => e.kind === 'leave' && e.id === 'bea');
  assert.equal(leave.metas[0].device, 'phone');
  assert.equal(leave.remaining, 2);
  assert.deepEqual(tabs[0].m.list().find((p) => p.id === 'bea').metas.map((m) => m.device).sort(), ['laptop', 'tablet']);
});

test('an abrupt TCP drop, without a close frame, produces a leave', async () => {
  const topic = 'room:presence-drop';
  const ada = await member(await open('ada'), topic, {});
  // No reconnect during the test: the drop must be seen as a leave, not hidden by a rejoin.
  const victim = await open('cy', { reconnectAfterMs: () => 60000 });
  await member(victim, topic, { device: 'doomed' });
  await waitFor(() => ada.ids().join() === 'ada,cy', { what: 'cy to join' });

  const closed = new Promise((resolve) => victim.onClose(resolve));
  victim.conn._socket.destroy(); // the ws package's net.Socket
  const ev = await closed;
  assert.equal(ev.code, 1006, 'closed without a close frame');
  const t0 = Date.now();
  await waitFor(() => ada.ids().join() === 'ada', { timeoutMs: 10000, what: 'the leave of the dropped member' });
  assert.ok(Date.now() - t0 < 10000);
  const leave = ada.events.find((e) => e.kind === 'leave' && e.id === 'cy');
  assert.equal(leave.metas[0].device, 'doomed');
});
