// The SDK's resume across a cluster (issue 13 items 6 and 7; docs/protocol.md
// §9 "Runs", cluster mode): a client whose link to node A is cut reconnects
// through the same address to node B (a proxy retargeted, as a load balancer
// would), re-attaches there, and its run, still executing on A, goes on with
// every event exactly once. A run whose executing node dies ends with the
// server's `node_lost` on the node that follows it.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { SynapseServer, Clients, waitFor, startProxy, nextEvent, within } from '../test-support/helpers.mjs';
import { freePort } from '../../../tests/harness/server.mjs';

const clients = new Clients();
const cleanups = [];
let redis;
let dataDir;
let nodes = [];
let key;

function ping(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
    s.on('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')); });
    s.on('error', () => resolve(false));
  });
}

before(async () => {
  const port = await freePort();
  redis = spawn('/usr/bin/redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' });
  await waitFor(() => ping(port), { what: 'redis-server to answer PING' });
  dataDir = mkdtempSync(join(tmpdir(), 'synapse-js-cluster-runs-'));
  for (const name of ['a', 'b']) {
    const flags = { '--redis': `redis://127.0.0.1:${port}`, '--node-id': name, '--node-ttl-ms': '3000' };
    nodes.push(await new SynapseServer({ dataDir, flags }).start());
  }
  key = nodes[0].createKey('roamer');
});
afterEach(async () => {
  await clients.closeAll();
  while (cleanups.length) await cleanups.pop()();
});
after(async () => {
  for (const n of nodes) await n.stop();
  nodes = [];
  if (redis && redis.exitCode === null) redis.kill('SIGKILL');
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test('reconnected to another node, the SDK re-attaches there: every token once, in order', async () => {
  const [a, b] = nodes;
  const proxy = await startProxy(a.port);
  cleanups.push(() => proxy.close());
  const c = await clients.connect(proxy.url, { apiKey: key });
  await c.whoami();
  const seqs = [];
  const deltas = [];
  const resumed = nextEvent(c, 'run_resumed', 20000);
  const h = c.tool('demo.tokens', { count: 200, interval_ms: 8 }, { onToken: (d, p) => { deltas.push(d); seqs.push(p.seq); } });
  await waitFor(() => deltas.length >= 30, { what: 'tokens from node A' });
  proxy.retarget(b.port);
  const back = nextEvent(c, 'reconnect', 15000);
  proxy.sever();
  await within(15000, back, 'the reconnect (to node B)');
  const r = await resumed;
  assert.equal(r.runId, h.runId);
  const out = await within(20000, h.done, 'the run');
  assert.equal(out.status, 'success');
  assert.deepEqual(out.data, { tokens: 200 });
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), 'every token once, in order');
  assert.equal(deltas.join(''), Array.from({ length: 200 }, (_, i) => `t${i + 1} `).join(''));
});

test('a run whose executing node dies ends node_lost on the node the SDK re-attached to', async () => {
  const [a, b] = nodes;
  const proxy = await startProxy(a.port);
  cleanups.push(() => proxy.close());
  const c = await clients.connect(proxy.url, { apiKey: key });
  await c.whoami();
  const deltas = [];
  const resumed = nextEvent(c, 'run_resumed', 20000);
  const h = c.tool('demo.tokens', { count: 100000, interval_ms: 10 }, { onToken: (d) => deltas.push(d) });
  await waitFor(() => deltas.length >= 10, { what: 'tokens from node A' });
  proxy.retarget(b.port);
  proxy.sever();
  await resumed;
  const n = deltas.length;
  await waitFor(() => deltas.length >= n + 5, { what: 'tokens relayed through node B' });
  await a.kill();
  await assert.rejects(within(15000, h.done, 'the run to end'), (e) => e.reason === 'node_lost');
  assert.equal(c.connected, true, 'the connection to node B is untouched');
});
