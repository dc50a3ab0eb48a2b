// examples/agents/README.md, JavaScript part, does what it says: its
// commands are read from the blocks marked `<!-- agents-js: NAME -->` and
// run as written, with three substitutions only: the server is this test's
// (started with the configuration the README's `make run` line names, the
// default limits, on a free port: SYNAPSE_URL points the scripts at it),
// `./data` is that server's temporary data directory, and `<worker key>` /
// `<user key>` are the keys the README's own `keys create` lines printed.
// The agents run as separate Node processes, the queries too.
//
// Skipped, saying so, against a binary without the worker protocol.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { SynapseServer, waitFor } from '../test-support/helpers.mjs';
import { binary } from '../../../tests/harness/server.mjs';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const readme = readFileSync(join(repo, 'examples/agents/README.md'), 'utf8');

function blocks() {
  const out = {};
  for (const m of readme.matchAll(/<!-- agents-js: ([\w-]+) -->\n```sh\n([\s\S]*?)\n```/g)) out[m[1]] = m[2].split('\n').filter((l) => l.trim());
  return out;
}
const B = blocks();

let server;
let skip = false;
const agents = [];

function sh(cmd, { env = {}, timeoutMs = 30000 } = {}) {
  return new Promise((resolve) => {
    const p = spawn('bash', ['-c', cmd], { cwd: repo, env: { ...process.env, SYNAPSE_URL: server.wsUrl, ...env } });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c) => { stdout += c; });
    p.stderr.on('data', (c) => { stderr += c; });
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('exit', (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
  });
}

const local = (line) => line.replaceAll('build/release/synapse', binary()).replaceAll('./data', server.dataDir);

// The README's keys block: the worker key's line first, then the user key's.
async function makeKeys(name) {
  const lines = B[`keys-${name}`];
  assert.equal(lines.length, 2, `keys-${name} has two commands`);
  assert.match(lines[0], /--worker/);
  const keys = [];
  for (const line of lines) {
    const r = await sh(local(line));
    assert.equal(r.code, 0, `${line}\n${r.stderr}`);
    keys.push(r.stdout.trim().split('\n').pop());
  }
  assert.match(keys[0], /^syn_/);
  return { worker: keys[0], user: keys[1] };
}

// Starts the README's agent command in its own process group and waits for it to register.
async function startAgent(name, workerKey) {
  const [line] = B[`serve-${name}`];
  const cmd = local(line).replaceAll('<worker key>', workerKey);
  const p = spawn('bash', ['-c', cmd], { cwd: repo, detached: true, env: { ...process.env, SYNAPSE_URL: server.wsUrl } });
  const agent = { p, out: '', err: '' };
  agents.push(agent);
  p.stdout.on('data', (c) => { agent.out += c; });
  p.stderr.on('data', (c) => { agent.err += c; });
  await waitFor(() => /registered as worker/.test(agent.out) || p.exitCode !== null, { timeoutMs: 15000, what: `${name} to register` });
  assert.match(agent.out, /registered as worker \S+ for agent /, `stdout:\n${agent.out}\nstderr:\n${agent.err}`);
  return agent;
}

before(async () => {
  const [serverLine] = B.server || [];
  const m = serverLine && /^SYNAPSE_CONFIG=(\S+) make run$/.exec(serverLine);
  assert.ok(m, 'the server block is `SYNAPSE_CONFIG=<file> make run`');
  try {
    server = await new SynapseServer({ relaxed: false, flags: { '--config': join(repo, m[1]) } }).start();
  } catch (err) {
    skip = `the server refuses ${m[1]} (${String(err.message).split('\n').filter(Boolean).slice(-1)[0]})`;
    return;
  }
  const probe = await sh(`${binary()} keys create --name probe --worker --agent probe --data-dir ${server.dataDir}`);
  if (probe.code !== 0) skip = 'this synapse binary has no `keys create --worker` (the server side of section 10 is not merged)';
});
after(async () => {
  for (const a of agents) {
    if (a.p.exitCode === null) {
      try { process.kill(-a.p.pid, 'SIGTERM'); } catch { /* gone */ }
    }
  }
  if (server) await server.cleanup();
});

test('the echo agent of the README registers and streams the question back', async (t) => {
  if (skip) return t.skip(skip);
  const keys = await makeKeys('echo');
  await startAgent('echo', keys.worker);
  const [ask] = B['ask-echo'];
  const r = await sh(ask.replaceAll('<user key>', keys.user));
  assert.equal(r.code, 0, `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  assert.equal(r.stdout.trim(), JSON.parse(/ask\.mjs (".*")$/.exec(ask)[1]));
  assert.match(r.stderr, /\[thought\] echoing \d+ words for echo/);
});

test('the retrieval agent of the README answers from memory.search, token by token', async (t) => {
  if (skip) return t.skip(skip);
  const keys = await makeKeys('librarian');
  const agent = await startAgent('librarian', keys.worker);
  const [remember, question] = B['ask-librarian'];
  const stored = await sh(remember.replaceAll('<user key>', keys.user));
  assert.equal(stored.code, 0, stored.stderr);
  assert.match(stored.stdout, /remembered as /);
  const r = await sh(question.replaceAll('<user key>', keys.user));
  assert.equal(r.code, 0, `stdout:\n${r.stdout}\nstderr:\n${r.stderr}\nagent:\n${agent.out}${agent.err}`);
  assert.match(r.stdout, /From what you told me: The ferry to Nolsoy leaves at seven from the west pier/);
  assert.match(r.stderr, /\[thought\] found 1 memories/);
  assert.match(agent.out, /: result/);
});
