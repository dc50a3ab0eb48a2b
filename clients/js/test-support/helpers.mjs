// Shared pieces of the SDK tests: the repository's server launcher, a TCP
// proxy that can be severed, and a client factory that cleans up after itself.
import net from 'node:net';
import WebSocket from 'ws';
import { SynapseServer, waitFor } from '../../../tests/harness/server.mjs';
import { MimoSynapse } from '../src/index.js';

export { SynapseServer, waitFor, WebSocket, MimoSynapse };

/**
 * A TCP proxy on 127.0.0.1 in front of `targetPort`. sever() destroys every
 * open pair at once (no WebSocket close frame: the client sees the TCP
 * connection die); block() refuses new connections until unblocked.
 */
export async function startProxy(targetPort) {
  const pairs = new Set();
  let target = targetPort;
  let blocked = false;
  let accepted = 0;
  const server = net.createServer((client) => {
    if (blocked) {
      client.destroy();
      return;
    }
    accepted += 1;
    const upstream = net.connect(target, '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    const kill = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on('error', kill);
    upstream.on('error', kill);
    client.on('close', kill);
    upstream.on('close', kill);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((res, rej) => {
    server.once('error', rej);
    server.listen(0, '127.0.0.1', res);
  });
  const { port } = server.address();
  return {
    port,
    url: `ws://127.0.0.1:${port}/cortex`,
    get open() { return pairs.size; },
    get accepted() { return accepted; },
    sever() {
      const n = pairs.size;
      for (const p of [...pairs]) {
        p.client.destroy();
        p.upstream.destroy();
        pairs.delete(p);
      }
      return n;
    },
    block(on = true) { blocked = on; },
    // New connections go to `port` from now on (open pairs keep theirs), as
    // a load balancer sending a reconnecting client to another node would.
    retarget(port) { target = port; },
    // Stops forwarding server -> client bytes on the open pairs (they queue
    // in the proxy), as a stalled link would.
    hold() {
      for (const p of pairs) {
        p.upstream.unpipe(p.client);
        p.upstream.pause();
      }
    },
    close() {
      this.sever();
      return new Promise((res) => server.close(() => res()));
    },
  };
}

/** Tracks clients made in a test so that each ends disconnected. */
export class Clients {
  constructor() { this.all = []; }

  make(url, opts) {
    const c = new MimoSynapse(url, { transport: WebSocket, ...opts });
    // Errors are expected in several tests (refused reconnects); keep them.
    c.errors = [];
    c.on('error', (e) => c.errors.push(e));
    this.all.push(c);
    return c;
  }

  async connect(url, opts) {
    const c = this.make(url, opts);
    await c.connect();
    return c;
  }

  async closeAll() {
    await Promise.all(this.all.map((c) => c.disconnect().catch(() => {})));
    this.all = [];
  }
}

/** Resolves with the next emission of `event` on an SDK client. */
export function nextEvent(client, event, timeoutMs = 10000) {
  const p = new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for '${event}'`));
    }, timeoutMs);
    const off = client.on(event, (arg) => {
      clearTimeout(t);
      off();
      resolve(arg);
    });
  });
  // Awaiting it still throws; a test that failed earlier leaves no unhandled rejection.
  p.catch(() => {});
  return p;
}

/** Fails if `promise` does not settle within `ms`. */
export function within(ms, promise, what = 'operation') {
  let t;
  return Promise.race([
    promise.finally(() => clearTimeout(t)),
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`${what} did not finish within ${ms} ms`)), ms); }),
  ]);
}
