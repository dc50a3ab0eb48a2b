// Token refresh: short tokens (3 s) and an early warning (--token-warning-s 2)
// so a whole expiry cycle fits in a few seconds.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { SynapseServer, Clients, waitFor, startProxy, nextEvent, within } from '../test-support/helpers.mjs';

let server;
const clients = new Clients();
const cleanups = [];

before(async () => {
  server = await new SynapseServer({ flags: { '--token-warning-s': '2' } }).start();
});
afterEach(async () => {
  await clients.closeAll();
  while (cleanups.length) await cleanups.pop()();
});
after(() => server && server.cleanup());

const AGENT = 'tok-user';
let minted = 0;
async function shortToken() {
  minted += 1;
  return (await server.token(server.adminKey, { agent_id: AGENT, ttl_s: 3 })).token;
}
const expOf = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()).exp * 1000;

test('getToken on token_expiring keeps the connection alive past the first token\'s expiry', async () => {
  const first = await shortToken();
  let calls = 0;
  const c = clients.make(server.wsUrl, {
    token: first,
    getToken: async () => { calls += 1; return shortToken(); },
    refreshMarginMs: 0, // no SDK timer: only the server's token_expiring drives it
  });
  const closes = [];
  c.on('close', (e) => closes.push(e));
  const warnings = [];
  c.on('token_expiring', (w) => warnings.push(w));
  await c.connect();
  const firstExp = expOf(first);

  await waitFor(() => Date.now() > firstExp + 1500, { timeoutMs: 10000, what: 'the first token to be long expired' });
  assert.deepEqual(closes, [], 'the socket never closed');
  assert.equal(c.state, 'open');
  assert.ok(warnings.length >= 1, 'the server warned');
  assert.ok(calls >= 1, 'getToken was called');
  assert.notEqual(c.token, first);
  assert.equal((await c.query('still here').done).status, 'success');
});

test('without a refresh the server closes with 4001 at expiry (the control)', async () => {
  const token = await shortToken();
  const c = clients.make(server.wsUrl, { token, selfRefresh: false });
  await c.connect();
  const ev = await nextEvent(c, 'close', 10000);
  assert.equal(ev.code, 4001);
  assert.ok(Date.now() >= expOf(token) - 1000);
});

test('with only a token, the SDK slides the session with refresh {}', async () => {
  const token = await shortToken();
  const c = clients.make(server.wsUrl, { token });
  const closes = [];
  c.on('close', (e) => closes.push(e));
  const refreshed = [];
  c.on('token_refreshed', (r) => refreshed.push(r));
  await c.connect();
  await waitFor(() => Date.now() > expOf(token) + 1000, { timeoutMs: 10000, what: 'expiry to pass' });
  assert.deepEqual(closes, []);
  assert.ok(refreshed.length >= 1);
  assert.notEqual(c.token, token, 'the server minted a new token');
  assert.ok(expOf(c.token) > expOf(token) + 60000, 'with the server default TTL');
  assert.equal(await c.whoami(), AGENT);
});

test('a reconnect after the first token expired uses the refreshed token', async () => {
  const proxy = await startProxy(server.port);
  cleanups.push(() => proxy.close());
  // Only getToken: the SDK fetches the first token itself.
  const c = clients.make(proxy.url, { getToken: shortToken });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  await c.connect();
  const first = c.token;
  assert.ok(first);
  await waitFor(() => Date.now() > expOf(first) + 500, { timeoutMs: 10000, what: 'the first token to expire' });
  assert.equal(c.state, 'open');

  const back = nextEvent(c, 'reconnect', 15000);
  proxy.sever();
  await within(10000, back, 'the reconnect');
  assert.ok(expOf(c.token) > Date.now(), 'connected with a live token');
  assert.ok(!errors.some((e) => /401/.test(e.message)), `no refused upgrade: ${errors.map((e) => e.message)}`);
  assert.equal((await c.query('after reconnect').done).status, 'success');
});
