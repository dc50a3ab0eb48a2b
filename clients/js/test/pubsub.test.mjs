// Pub/sub through the SDK: subscribe, publish, unsubscribe, presence.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { SynapseServer, Clients, waitFor } from '../test-support/helpers.mjs';

let server;
let keyA;
let keyB;
const clients = new Clients();

before(async () => {
  server = await new SynapseServer().start();
  keyA = server.createKey('ann');
  keyB = server.createKey('bob');
});
afterEach(() => clients.closeAll());
after(() => server && server.cleanup());

test('subscribe receives what others publish, in order, with _meta; unsubscribe stops it', async () => {
  const sub = await clients.connect(server.wsUrl, { apiKey: keyA });
  const pub = await clients.connect(server.wsUrl, { apiKey: keyB });
  const witness = await clients.connect(server.wsUrl, { apiKey: keyB });
  const topic = 'room:lobby';

  const got = [];
  const unsubscribe = sub.subscribe(topic, (m) => got.push(m));
  const joined = await unsubscribe.ready;
  assert.equal(typeof joined.offset, 'number');
  assert.equal(typeof joined.epoch, 'string');
  const seen = [];
  await witness.subscribe(topic, (m) => seen.push(m)).ready;

  const offsets = [];
  for (let i = 0; i < 5; i++) offsets.push(await pub.publish(topic, 'chat', { i, text: `hello ${i}` }));
  assert.deepEqual(offsets, offsets.map((_, k) => offsets[0] + k), 'offsets increase by one');

  await waitFor(() => got.length === 5, { what: 'five messages' });
  assert.deepEqual(got.map((m) => m.payload), [0, 1, 2, 3, 4].map((i) => ({ i, text: `hello ${i}` })));
  assert.ok(got.every((m) => m.topic === topic && m.event === 'chat' && m.meta.from === 'bob'));
  assert.deepEqual(got.map((m) => m.meta.offset), offsets);
  assert.ok(got.every((m) => m.meta.epoch === joined.epoch && typeof m.meta.ts === 'number'));

  await unsubscribe();
  for (let i = 5; i < 8; i++) await pub.publish(topic, 'chat', { i });
  // The witness receiving them proves they were delivered to members.
  await waitFor(() => seen.length === 8, { what: 'the witness to get all eight' });
  await sub.ping();
  assert.equal(got.length, 5, 'nothing arrives after unsubscribe');
  assert.equal(sub.position(topic), null);
});

test('the publisher does not receive its own message; two subscriptions share one join', async () => {
  const a = await clients.connect(server.wsUrl, { apiKey: keyA });
  const b = await clients.connect(server.wsUrl, { apiKey: keyB });
  const topic = 'room:shared';
  const first = [];
  const second = [];
  const own = [];
  const un1 = a.subscribe(topic, (m) => first.push(m.payload.n));
  const un2 = a.subscribe(topic, (m) => second.push(m.payload.n));
  await un1.ready;
  await un2.ready;
  await b.subscribe(topic, (m) => own.push(m)).ready;

  await b.publish(topic, 'n', { n: 1 });
  await waitFor(() => first.length === 1 && second.length === 1, { what: 'both callbacks' });
  await un1();
  await b.publish(topic, 'n', { n: 2 });
  await waitFor(() => second.length === 2, { what: 'the remaining callback' });
  assert.deepEqual(first, [1]);
  assert.deepEqual(second, [1, 2]);
  await a.publish(topic, 'n', { n: 3 });
  await waitFor(() => own.length === 1, { what: 'b to get a\'s message' });
  assert.equal(own[0].meta.from, 'ann');
  await a.ping();
  assert.deepEqual(second, [1, 2], 'a does not hear its own publish');
});

test('publish errors carry the server reason', async () => {
  const a = await clients.connect(server.wsUrl, { apiKey: keyA });
  await assert.rejects(a.publish('room:x', 'phx_custom', {}), (e) => e.reason === 'reserved_event');
  await assert.rejects(a.publish('room:x', 'msg', { _meta: { offset: 1 } }), (e) => e.reason === 'invalid_payload');
  await assert.rejects(a.publish('bad topic!', 'msg', {}), (e) => e.reason === 'invalid_topic');
  assert.equal(typeof (await a.publish('room:x', 'msg', { ok: true })), 'number');
});

test('presence: members see each other join and leave, one meta per connection', async () => {
  const topic = 'room:presence';
  const ann = await clients.connect(server.wsUrl, { apiKey: keyA });
  const bob1 = await clients.connect(server.wsUrl, { apiKey: keyB });
  const bob2 = await clients.connect(server.wsUrl, { apiKey: keyB });
  const syncs = [];
  await ann.subscribe(topic, () => {}, {
    presence: true, meta: { name: 'Ann', device: 'laptop' }, onPresence: (list) => syncs.push(list),
  }).ready;
  const ids = () => ann.presence(topic).map((p) => p.id).sort();
  await waitFor(() => ids().join() === 'ann', { what: 'ann to see herself' });

  const unBob1 = bob1.subscribe(topic, () => {}, { presence: true, meta: { device: 'phone' } });
  await unBob1.ready;
  const unBob2 = bob2.subscribe(topic, () => {}, { presence: true, meta: { device: 'tablet' } });
  await unBob2.ready;
  await waitFor(() => {
    const bob = ann.presence(topic).find((p) => p.id === 'bob');
    return bob && bob.metas.length === 2;
  }, { what: 'bob with two metas' });
  const bob = ann.presence(topic).find((p) => p.id === 'bob');
  assert.deepEqual(bob.metas.map((m) => m.device).sort(), ['phone', 'tablet']);
  assert.ok(bob.metas.every((m) => typeof m.phx_ref === 'string' && typeof m.online_at === 'number'));
  const annEntry = ann.presence(topic).find((p) => p.id === 'ann');
  assert.equal(annEntry.metas[0].name, 'Ann');
  // bob sees ann too.
  await waitFor(() => bob1.presence(topic).some((p) => p.id === 'ann'), { what: 'bob to see ann' });
  assert.ok(syncs.length > 0, 'onPresence was called');

  await unBob1();
  await waitFor(() => ann.presence(topic).find((p) => p.id === 'bob')?.metas.length === 1, { what: 'one bob meta to leave' });
  assert.equal(ann.presence(topic).find((p) => p.id === 'bob').metas[0].device, 'tablet');
  await bob2.disconnect();
  await waitFor(() => ids().join() === 'ann', { what: 'bob to leave entirely' });
  assert.deepEqual(syncs.at(-1).map((p) => p.id), ['ann']);
  assert.throws(() => bob1.presence(topic), (e) => e.reason === 'not_subscribed');
});

test('subscribe and publish may come before connect(); they go out once the socket opens', async () => {
  const early = clients.make(server.wsUrl, { apiKey: keyA });
  const got = [];
  const un = early.subscribe('room:early', (m) => got.push(m.payload.n));
  const publisher = clients.make(server.wsUrl, { apiKey: keyB });
  const published = publisher.publish('room:early', 'n', { n: 0 });
  await early.connect();
  await un.ready;
  await publisher.connect();
  assert.equal(typeof (await published), 'number');
  await publisher.publish('room:early', 'n', { n: 1 });
  await waitFor(() => got.includes(1), { what: 'the message' });
  // n: 0 may have been published before the subscriber's join; n: 1 came after it.
  assert.deepEqual(got.filter((n) => n === 1), [1]);
});
