#!/usr/bin/env node
// A tour of Synapse through the JavaScript SDK (clients/js), against a server
// started with `make run` (127.0.0.1:4000):
//
//   build/release/synapse keys create --name demo --data-dir ./data   # prints a key
//   SYNAPSE_API_KEY=syn_... node examples/websocket/client.js
//
// SYNAPSE_URL overrides the address (default ws://127.0.0.1:4000/cortex).
// It stores two memories, runs a query with streamed thoughts, interrupts a
// demo.countdown, and publishes to a topic it subscribed to from a second
// connection. Exit code 0 when all of that worked, 1 otherwise.
//
// In your own project: `npm install @mimo/synapse ws`, then
//   import { MimoSynapse } from '@mimo/synapse'; import WebSocket from 'ws';
import { createRequire } from 'node:module';
import { MimoSynapse } from '../../clients/js/src/index.js';

// Node 22+ has a global WebSocket; on Node 20 use `ws`, installed with the SDK
// (clients/js/node_modules, see scripts/install-deps).
const requireFromSdk = createRequire(new URL('../../clients/js/package.json', import.meta.url));
const WebSocket = globalThis.WebSocket ?? requireFromSdk('ws');

const url = process.env.SYNAPSE_URL || 'ws://127.0.0.1:4000/cortex';
const apiKey = process.env.SYNAPSE_API_KEY;
const STEP_TIMEOUT_MS = 15000;

function fail(message) {
  console.error(`FAILED: ${message}`);
  process.exitCode = 1;
}

function within(ms, promise, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
  ]);
}

async function main() {
  if (!apiKey) {
    fail('set SYNAPSE_API_KEY (create one with: build/release/synapse keys create --name demo --data-dir ./data)');
    return;
  }
  const client = new MimoSynapse(url, { apiKey, transport: WebSocket });
  const publisher = new MimoSynapse(url, { apiKey, transport: WebSocket });
  client.on('reconnect', () => console.log('(reconnected)'));
  try {
    await within(STEP_TIMEOUT_MS, client.connect(), 'connect');
    console.log(`connected to ${client.url} as agent ${await client.whoami()}`);

    // 1. Two memories, then a query that streams its thoughts.
    for (const content of ['Synapse speaks the Phoenix Channels V2 protocol',
      'The Phoenix protocol multiplexes channels over one WebSocket']) {
      const stored = await within(STEP_TIMEOUT_MS, client.tool('memory.store', { content, tags: ['demo'] }).done, 'memory.store');
      console.log(`stored memory #${stored.data.id}: ${content}`);
    }
    let thoughts = 0;
    const query = client.query('phoenix protocol', {
      limit: 3,
      onThought: (thought, { seq }) => { thoughts += 1; console.log(`  thought ${seq} [${thought.type}] ${thought.content}`); },
    });
    const answer = await within(STEP_TIMEOUT_MS, query.done, 'query');
    const results = answer.data.results || [];
    console.log(`query answered in ${answer.latency_ms} ms with ${results.length} result(s)`);
    for (const r of results) console.log(`  ${r.score.toFixed(3)}  ${r.content}`);
    if (thoughts === 0) fail('the query streamed no thoughts');
    if (results.length === 0) fail('the query found none of the stored memories');

    // 2. A long countdown, interrupted after its first progress updates.
    let ticks = 0;
    const countdown = client.tool('demo.countdown', { steps: 100, interval_ms: 100 }, {
      onProgress: (p) => {
        ticks += 1;
        console.log(`  countdown ${p.progress}/${p.total ?? 100}`);
        if (ticks === 3) countdown.interrupt('seen enough');
      },
    });
    const stopped = await within(STEP_TIMEOUT_MS, countdown.done, 'countdown');
    console.log(`countdown ended: ${stopped.status} (${stopped.reason ?? ''})`);
    if (stopped.status !== 'interrupted') fail(`the countdown ended ${stopped.status}, not interrupted`);

    // 3. A subscription, and a publish from a second connection.
    const topic = 'demo:lobby';
    let received;
    const gotMessage = new Promise((resolve) => { received = resolve; });
    const unsubscribe = client.subscribe(topic, (msg) => {
      console.log(`received ${msg.event} #${msg.meta.offset} from ${msg.meta.from}: ${JSON.stringify(msg.payload)}`);
      received(msg);
    });
    await within(STEP_TIMEOUT_MS, unsubscribe.ready, 'subscribe');
    await within(STEP_TIMEOUT_MS, publisher.connect(), 'publisher connect');
    const offset = await within(STEP_TIMEOUT_MS, publisher.publish(topic, 'greeting', { text: 'hello from the example' }), 'publish');
    console.log(`published at offset ${offset}`);
    const msg = await within(STEP_TIMEOUT_MS, gotMessage, 'the published message');
    if (msg.payload.text !== 'hello from the example' || msg.meta.offset !== offset) fail('the message arrived changed');
    await unsubscribe();
  } catch (err) {
    fail(`${err.reason ? `${err.reason}: ` : ''}${err.message}`);
  } finally {
    await Promise.all([client.disconnect(), publisher.disconnect()]);
  }
  if (!process.exitCode) console.log('all good');
}

main().catch((err) => {
  fail(err && err.stack ? err.stack : String(err));
});
