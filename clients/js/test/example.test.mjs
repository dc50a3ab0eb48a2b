// examples/websocket/client.js runs against a server with the default
// (not relaxed) limits, like `make run`, and its exit code tells the truth.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { SynapseServer } from '../test-support/helpers.mjs';
import { freePort } from '../../../tests/harness/server.mjs';

const example = fileURLToPath(new URL('../../../examples/websocket/client.js', import.meta.url));
let server;
let key;

before(async () => {
  server = await new SynapseServer({ relaxed: false }).start();
  key = server.createKey('example-user');
});
after(() => server && server.cleanup());

function run(env) {
  return new Promise((resolve) => {
    execFile(process.execPath, [example], { env: { ...process.env, ...env }, timeout: 60000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr });
    });
  });
}

test('the example exits 0 after a streamed query, an interrupted countdown and a publish', async () => {
  const r = await run({ SYNAPSE_URL: server.wsUrl, SYNAPSE_API_KEY: key });
  assert.equal(r.code, 0, `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  assert.match(r.stdout, /as agent example-user/);
  assert.match(r.stdout, /thought 1 \[/);
  assert.match(r.stdout, /countdown ended: interrupted/);
  assert.match(r.stdout, /received greeting #\d+ from example-user/);
  assert.match(r.stdout, /all good/);
});

test('the example exits non-zero with a bad key or no server', async () => {
  const badKey = await run({ SYNAPSE_URL: server.wsUrl, SYNAPSE_API_KEY: 'syn_bad_key' });
  assert.notEqual(badKey.code, 0);
  assert.match(badKey.stderr, /FAILED: unauthorized/);
  const noKey = await run({ SYNAPSE_URL: server.wsUrl, SYNAPSE_API_KEY: '' });
  assert.notEqual(noKey.code, 0);
  // A port where nothing listens.
  const down = await run({ SYNAPSE_URL: `ws://127.0.0.1:${await freePort()}/cortex`, SYNAPSE_API_KEY: key });
  assert.notEqual(down.code, 0);
  assert.match(down.stderr, /FAILED/);
});
