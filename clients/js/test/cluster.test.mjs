// A cluster node (serve --redis) that loses Redis keeps delivering locally:
// the SDK hands those unnumbered messages (_meta.local) to subscribers and
// reports offset 0 for the publish, as docs/protocol.md §9 says.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { SynapseServer, Clients, waitFor } from '../test-support/helpers.mjs';
import { freePort } from '../../../tests/harness/server.mjs';

const clients = new Clients();
let redis;
let server;
after(async () => {
  await clients.closeAll();
  if (server) await server.cleanup();
  if (redis && redis.exitCode === null) redis.kill('SIGKILL');
});

function ping(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
    s.on('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')); });
    s.on('error', () => resolve(false));
  });
}

test('local delivery while Redis is down reaches SDK subscribers, with offset 0 for the publish', async () => {
  const port = await freePort();
  redis = spawn('/usr/bin/redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' });
  await waitFor(() => ping(port), { what: 'redis-server to answer PING' });
  server = await new SynapseServer({ flags: { '--redis': `redis://127.0.0.1:${port}`, '--node-id': 'js' } }).start();

  const sub = await clients.connect(server.wsUrl, { apiKey: server.adminKey });
  const pub = await clients.connect(server.wsUrl, { apiKey: server.adminKey });
  const got = [];
  await sub.subscribe('room:js-cluster', (m) => got.push(m)).ready;
  const numbered = await pub.publish('room:js-cluster', 'm', { n: 1 });
  assert.ok(numbered >= 1);
  await waitFor(() => got.length === 1, { what: 'the numbered message' });

  redis.kill('SIGKILL');
  await waitFor(async () => (await server.http('GET', '/health/ready')).status === 503, { what: 'ready 503' });
  assert.equal(await pub.publish('room:js-cluster', 'm', { n: 2 }), 0);
  await waitFor(() => got.length === 2, { what: 'the local message' });
  assert.deepEqual(got[1].payload, { n: 2 });
  assert.equal(got[1].meta.local, true);
  assert.equal(got[1].meta.offset, undefined);
  assert.equal(got[0].meta.offset, numbered);
});
