// Start the real synapse binary for a JS test: a free port, a temporary data
// directory, and the admin key it prints on first start. The binary is
// $SYNAPSE_BIN, or build/release/synapse under the repository.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export const RELAXED = {
  '--messages-per-min': '0',
  '--queries-per-min': '0',
  '--ip-max-connections': '0',
  '--ip-max-sockets': '0',
  '--ip-new-per-min': '0',
  '--key-max-connections': '0',
  // Runs a test leaves going would hold every stop() for the 30 s default
  // drain (tests/integration/test_graceful_drain.py passes its own).
  '--drain-timeout-ms': '2000',
};

export function binary() {
  const p = process.env.SYNAPSE_BIN || join(repo, 'build', 'release', 'synapse');
  if (!existsSync(p)) throw new Error(`synapse binary not found at ${p}; run \`make build\` first`);
  return p;
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

export class SynapseServer {
  constructor({ flags = {}, relaxed = true, dataDir = null, port = 0 } = {}) {
    this.flags = { ...(relaxed ? RELAXED : {}), ...flags };
    this.ownDir = !dataDir;
    this.dataDir = dataDir || mkdtempSync(join(tmpdir(), 'synapse-js-'));
    this.port = port;
    this.proc = null;
    this.adminKey = null;
    this.log = [];
  }

  async start(timeoutMs = 10000) {
    if (!this.port) this.port = await freePort();
    const args = ['serve', '--bind', '127.0.0.1', '--port', String(this.port), '--data-dir', this.dataDir];
    for (const [k, v] of Object.entries(this.flags)) args.push(k, String(v));
    const proc = spawn(binary(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    await new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error('synapse did not start:\n' + this.log.slice(-30).join('\n'))), timeoutMs);
      let buf = '';
      const onData = (chunk) => {
        buf += chunk.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          this.log.push(line);
          if (line.startsWith('syn_') && !this.adminKey) this.adminKey = line.trim();
          if (line.startsWith('listening on ')) { clearTimeout(timer); res(); }
        }
      };
      proc.stdout.on('data', onData);
      proc.stderr.on('data', (c) => this.log.push(...c.toString().split('\n')));
      proc.on('exit', (code) => { clearTimeout(timer); rej(new Error(`synapse exited with ${code}:\n` + this.log.join('\n'))); });
    });
    return this;
  }

  async stop(signal = 'SIGTERM') {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null) return proc ? proc.exitCode : null;
    proc.removeAllListeners('exit');
    const done = new Promise((res) => proc.once('exit', (code) => res(code)));
    proc.kill(signal);
    const t = setTimeout(() => proc.kill('SIGKILL'), 15000);
    const code = await done;
    clearTimeout(t);
    return code;
  }

  kill() { return this.stop('SIGKILL'); }
  restart() { return this.start(); }

  async cleanup() {
    await this.stop();
    if (this.ownDir) rmSync(this.dataDir, { recursive: true, force: true });
  }

  get httpUrl() { return `http://127.0.0.1:${this.port}`; }
  get wsUrl() { return `ws://127.0.0.1:${this.port}/cortex/websocket`; }

  createKey(name, ...extra) {
    const out = execFileSync(binary(), ['keys', 'create', '--name', name, '--data-dir', this.dataDir, ...extra]).toString();
    return out.trim().split('\n').pop();
  }

  async http(method, path, body, key) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (key) headers.Authorization = `Bearer ${key}`;
    const r = await fetch(this.httpUrl + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    let parsed = text;
    try { parsed = JSON.parse(text); } catch { /* text */ }
    return { status: r.status, headers: r.headers, body: parsed };
  }

  async token(key, body = {}) {
    const r = await this.http('POST', '/api/token', body, key || this.adminKey);
    if (r.status !== 200) throw new Error(`/api/token answered ${r.status}: ${JSON.stringify(r.body)}`);
    return r.body;
  }
}

export async function waitFor(pred, { timeoutMs = 5000, intervalMs = 20, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
