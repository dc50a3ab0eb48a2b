// Synapse as an MCP server, driven by the official MCP TypeScript SDK
// (`Client` + `StreamableHTTPClientTransport`, @modelcontextprotocol/sdk)
// against the real binary's /mcp endpoint: sessions, the tool list with its
// schemas, memory.store then memory.search, progress notifications,
// cancellation through an AbortSignal, and the refusals (bad key, foreign
// Origin, unknown session, a deleted session). And the official command
// line, @modelcontextprotocol/inspector-cli, run headless.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SynapseServer, waitFor } from '../harness/server.mjs';

let server;
let key;
const clients = [];

before(async () => {
  server = await new SynapseServer({ flags: { '--allowed-origins': 'http://good.example' } }).start();
  key = server.createKey('mcp-sdk');
});
after(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => {})));
  if (server) await server.cleanup();
});

function transport(credential, { headers = {}, sessionId } = {}) {
  return new StreamableHTTPClientTransport(new URL(server.httpUrl + '/mcp'), {
    requestInit: { headers: { Authorization: `Bearer ${credential}`, ...headers } },
    sessionId,
  });
}

async function connect(credential = key, opts = {}) {
  const client = new Client({ name: 'synapse-test', version: '1.0.0' });
  const t = transport(credential, opts);
  await client.connect(t);
  clients.push(client);
  return { client, transport: t };
}

function textJson(result) {
  assert.equal(result.content[0].type, 'text');
  return JSON.parse(result.content[0].text);
}

test('initialize issues a session and negotiates protocol 2025-06-18', async () => {
  const { client, transport: t } = await connect();
  assert.match(t.sessionId, /^[0-9a-f]{32}$/);
  assert.equal(client.getServerVersion().name, 'synapse');
  assert.ok(client.getServerCapabilities().tools, 'the server declares tools');
  assert.equal(t.protocolVersion, '2025-06-18');
  assert.deepEqual(await client.ping(), {});
  // The client opened its GET stream (for notifications/tools/list_changed).
  await waitFor(async () => {
    const m = await server.http('GET', '/metrics');
    return /^synapse_mcp_streams [1-9]/m.test(m.body);
  }, { what: 'the GET stream to open' });
  assert.deepEqual(client.getServerCapabilities().tools, { listChanged: true });
});

test('listTools shows memory.* with their input schemas', async () => {
  const { client } = await connect();
  const { tools } = await client.listTools();
  const byName = new Map(tools.map((t) => [t.name, t]));
  for (const name of ['memory.store', 'memory.search', 'memory.forget', 'memory.stats', 'demo.countdown']) {
    assert.ok(byName.has(name), `${name} is listed`);
    assert.equal(byName.get(name).inputSchema.type, 'object');
  }
  const store = byName.get('memory.store');
  assert.deepEqual(store.inputSchema.required, ['content']);
  assert.equal(store.inputSchema.properties.content.type, 'string');
  assert.ok(store.description.length > 0);
  assert.ok(!byName.has('debug.crash'), 'the WebSocket-only fault injection tool is not offered');
});

test('callTool memory.store then memory.search round-trips', async () => {
  const { client } = await connect();
  const stored = await client.callTool({
    name: 'memory.store',
    arguments: { content: 'the heron nests by the quarry lake', tags: ['birds'] },
  });
  assert.ok(!stored.isError);
  const { id } = textJson(stored);
  assert.ok(Number.isInteger(id) && id > 0);
  assert.equal(stored.structuredContent.id, id);

  const found = await client.callTool({ name: 'memory.search', arguments: { query: 'heron quarry' } });
  assert.ok(!found.isError);
  const { results } = textJson(found);
  assert.ok(results.some((r) => r.id === id && r.content.includes('heron')), JSON.stringify(results));
});

test('invalid arguments are a JSON-RPC error -32602, an unknown tool too', async () => {
  const { client } = await connect();
  await assert.rejects(client.callTool({ name: 'memory.store', arguments: { content: 42 } }), (e) => {
    assert.equal(e.code, -32602);
    assert.match(e.message, /inputSchema/);
    return true;
  });
  await assert.rejects(client.callTool({ name: 'no.such_tool', arguments: {} }), (e) => e.code === -32602);
});

test('a tool_error is a result with isError true', async () => {
  const { client } = await connect();
  // Forgetting a memory nobody stored is memory.forget's own failure.
  const r = await client.callTool({ name: 'memory.forget', arguments: { id: 987654321 } });
  assert.equal(r.isError, true);
  assert.equal(r.content[0].type, 'text');
  assert.match(r.content[0].text, /no memory 987654321/);
});

test('a progress-streaming tool delivers onprogress notifications, then its result', async () => {
  const { client } = await connect();
  const seen = [];
  const result = await client.callTool(
    { name: 'demo.countdown', arguments: { steps: 4, interval_ms: 50 } },
    undefined,
    { onprogress: (p) => seen.push(p) },
  );
  assert.deepEqual(textJson(result), { completed: 4 });
  assert.deepEqual(seen.map((p) => p.progress), [1, 2, 3, 4]);
  assert.ok(seen.every((p) => p.total === 4));
  assert.equal(seen[0].message, '1 of 4');
});

test('cancelling a call (AbortSignal) sends notifications/cancelled and the run ends interrupted', async () => {
  const { client } = await connect();
  const ac = new AbortController();
  let progressed = 0;
  const call = client.callTool(
    { name: 'demo.countdown', arguments: { steps: 200, interval_ms: 50 } },
    undefined,
    {
      signal: ac.signal,
      onprogress: () => {
        progressed += 1;
        if (progressed === 2) ac.abort('enough');
      },
    },
  );
  await assert.rejects(call);
  assert.equal(progressed, 2);
  // The server heard the cancellation: the run is over, as interrupted, long
  // before its 10 s of counting would have ended.
  const run = await waitFor(async () => {
    const r = await server.http('GET', '/api/admin/runs', undefined, server.adminKey);
    assert.equal(r.status, 200);
    return r.body.recent.find((x) => x.topic === 'mcp' && x.outcome === 'interrupted');
  }, { timeoutMs: 3000, what: 'the cancelled run to end' });
  assert.ok(run.duration_ms < 5000, JSON.stringify(run));
  // By the client's notifications/cancelled (with the abort's reason), not
  // by a dropped stream.
  await waitFor(() => server.log.some((l) => l.includes('cancelled by the client (enough)')),
    { timeoutMs: 3000, what: 'the server to log the cancellation' });
  const running = await server.http('GET', '/api/admin/runs', undefined, server.adminKey);
  assert.ok(!running.body.running.some((x) => x.topic === 'mcp'), 'no MCP run left running');
  // The session goes on.
  assert.deepEqual(await client.ping(), {});
});

test('a bad key is refused with 401', async () => {
  const client = new Client({ name: 'synapse-test', version: '1.0.0' });
  await assert.rejects(client.connect(transport('syn_nope_nope')), (e) => {
    assert.ok(e instanceof StreamableHTTPError, String(e));
    assert.equal(e.code, 401);
    return true;
  });
});

test('a disallowed Origin is refused with 403, an allowed one gets CORS headers', async () => {
  const client = new Client({ name: 'synapse-test', version: '1.0.0' });
  await assert.rejects(client.connect(transport(key, { headers: { Origin: 'http://evil.example' } })), (e) => {
    assert.equal(e.code, 403);
    return true;
  });
  const { client: ok } = await connect(key, { headers: { Origin: 'http://good.example' } });
  assert.ok((await ok.listTools()).tools.length > 0);
});

test('an unknown session is answered 404', async () => {
  // A transport given a session id skips initialize (a reconnect).
  const client = new Client({ name: 'synapse-test', version: '1.0.0' });
  await client.connect(transport(key, { sessionId: '00000000000000000000000000000000' }));
  clients.push(client);
  await assert.rejects(client.listTools(), (e) => {
    assert.equal(e.code, 404);
    return true;
  });
});

test('a session belongs to its key: another key gets 404 for it', async () => {
  const { transport: t } = await connect();
  const other = server.createKey('mcp-sdk-other');
  const client = new Client({ name: 'synapse-test', version: '1.0.0' });
  await client.connect(transport(other, { sessionId: t.sessionId }));
  clients.push(client);
  await assert.rejects(client.listTools(), (e) => e.code === 404);
});

test('DELETE ends a session; its id is unknown afterwards', async () => {
  const { client, transport: t } = await connect();
  const id = t.sessionId;
  await t.terminateSession();
  assert.equal(t.sessionId, undefined);
  const again = new Client({ name: 'synapse-test', version: '1.0.0' });
  await again.connect(transport(key, { sessionId: id }));
  clients.push(again);
  await assert.rejects(again.listTools(), (e) => e.code === 404);
  await client.close();
});

// The inspector's command line (`inspector-cli URL --method ...`). Version 1
// reads its own package.json through a path it checks against the working
// directory, so it is run from its build directory.
async function inspector(...args) {
  const require = createRequire(import.meta.url);
  const pkg = require.resolve('@modelcontextprotocol/inspector-cli/package.json');
  const build = join(dirname(pkg), 'build');
  const { stdout } = await promisify(execFile)(process.execPath, [join(build, 'index.js'), server.httpUrl + '/mcp',
    '--transport', 'http', '--header', `Authorization: Bearer ${key}`, ...args], { cwd: build, timeout: 20000 });
  return JSON.parse(stdout);
}

test('the MCP inspector CLI lists the tools and calls memory.store, then memory.search', async () => {
  const { tools } = await inspector('--method', 'tools/list');
  assert.ok(tools.some((t) => t.name === 'memory.search' && t.inputSchema.required.includes('query')));
  const stored = await inspector('--method', 'tools/call', '--tool-name', 'memory.store',
    '--tool-arg', 'content=the inspector was here');
  const { id } = JSON.parse(stored.content[0].text);
  const found = await inspector('--method', 'tools/call', '--tool-name', 'memory.search',
    '--tool-arg', 'query=inspector');
  assert.ok(found.structuredContent.results.some((r) => r.id === id));
});
