// connect() rejects with the server's own refusal (its error code, reason
// text, HTTP status and Retry-After) instead of retrying in silence.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { SynapseServer, Clients, within } from '../test-support/helpers.mjs';

let server;
const clients = new Clients();

before(async () => {
  // One new connection per minute per address: the second connect is a 429.
  server = await new SynapseServer({ flags: { '--ip-new-per-min': '1' } }).start();
});
afterEach(() => clients.closeAll());
after(() => server && server.cleanup());

test('a refused key rejects connect() with 401 and the server\'s reason, and does not retry', async () => {
  const c = clients.make(server.wsUrl, { apiKey: 'syn_nope_notakey' });
  const refusedBefore = server.log.filter((l) => l.includes('status=401')).length;
  const err = await within(5000, c.connect().then(() => null, (e) => e));
  assert.ok(err, 'connect() must reject');
  assert.equal(err.status, 401);
  assert.equal(err.reason, 'unauthorized');
  assert.ok(err.message && err.message !== 'unauthorized', `the server's reason text, got ${err.message}`);
  // No retry loop: one refused attempt, then nothing more.
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(server.log.filter((l) => l.includes('status=401')).length - refusedBefore, 1);
  assert.equal(c.state, 'idle');
});

test('a connection-rate refusal rejects with 429, its reason code and Retry-After', async () => {
  const first = clients.make(server.wsUrl, { apiKey: server.adminKey });
  await first.connect().catch(() => {}); // spends this minute's one new connection (or was already spent)
  const c = clients.make(server.wsUrl, { apiKey: server.adminKey });
  const err = await within(5000, c.connect().then(() => null, (e) => e));
  assert.ok(err, 'connect() must reject');
  assert.equal(err.status, 429);
  assert.equal(err.reason, 'connection_rate_exceeded');
  assert.ok(err.retryAfterS > 0, `Retry-After in seconds, got ${err.retryAfterS}`);
  assert.equal(err.retryAfterMs, Math.round(err.retryAfterS * 1000));
});
