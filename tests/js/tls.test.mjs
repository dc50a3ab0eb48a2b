// The official `phoenix` JavaScript client over wss://: a server with a
// certificate made here (openssl command line), the client's `ws` transport
// trusting it. Join, push with replies, broadcasts both ways, heartbeats.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as pathJoin } from 'node:path';
import { SynapseServer, waitFor } from '../harness/server.mjs';
import { Socket, WebSocket } from './phx.mjs';
import { join, push, disconnect } from './phx.mjs';

let server;
let dir;
let ca;

before(async () => {
  dir = mkdtempSync(pathJoin(tmpdir(), 'synapse-js-tls-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', pathJoin(dir, 'key.pem'), '-out', pathJoin(dir, 'cert.pem'), '-days', '2',
    '-subj', '/CN=synapse-js-tls', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  ca = readFileSync(pathJoin(dir, 'cert.pem'));
  server = await new SynapseServer({
    flags: { '--tls-cert': pathJoin(dir, 'cert.pem'), '--tls-key': pathJoin(dir, 'key.pem') },
  }).start();
});
after(async () => {
  if (server) await server.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// phoenix constructs the transport with (url, protocols); the CA goes in here.
class TrustingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { ca });
  }
}

function connectTls(params, opts = {}) {
  const socket = new Socket(`wss://127.0.0.1:${server.port}/cortex`, {
    transport: TrustingWebSocket, params, timeout: 10000, ...opts,
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('phoenix socket did not open over wss')), 10000);
    const openRef = socket.onOpen(() => { clearTimeout(timer); socket.off([openRef, errRef]); resolve(socket); });
    const errRef = socket.onError((e) => {
      clearTimeout(timer);
      socket.off([openRef, errRef]);
      socket.disconnect();
      reject(new Error(`phoenix socket error over wss: ${e && e.message}`));
    });
    socket.connect();
  });
}

test('the phoenix client joins, pushes and receives broadcasts over wss://', async () => {
  const key = server.createKey('tls-js');
  const a = await connectTls({ api_key: key }, { heartbeatIntervalMs: 200 });
  const b = await connectTls({ api_key: key });
  try {
    assert.match(a.endPointURL(), /^wss:\/\//);
    const chA = a.channel('room:tls-js', {});
    const chB = b.channel('room:tls-js', {});
    assert.equal((await join(chA)).status, 'ok');
    assert.equal((await join(chB)).status, 'ok');
    const atA = [];
    const atB = [];
    chA.on('shout', (p) => atA.push(p));
    chB.on('shout', (p) => atB.push(p));
    const r = await push(chA, 'shout', { text: 'over tls', big: 'x'.repeat(50000) });
    assert.equal(r.status, 'ok');
    await push(chB, 'shout', { text: 'back' });
    await waitFor(() => atB.length === 1 && atA.length === 1, { what: 'both broadcasts' });
    assert.equal(atB[0].text, 'over tls');
    assert.equal(atB[0].big.length, 50000);
    assert.equal(atA[0].text, 'back');
    // Heartbeats every 200 ms keep being answered: the socket stays open.
    await new Promise((res) => setTimeout(res, 700));
    assert.equal(a.connectionState(), 'open');
  } finally {
    await disconnect(a);
    await disconnect(b);
  }
});
