// What the example agents and ask.mjs share: the server address, the
// WebSocket implementation, and a clean exit on Ctrl-C.
import { createRequire } from 'node:module';

// Node 22+ has a global WebSocket; on Node 20 use `ws`, installed with the SDK
// (clients/js/node_modules, see scripts/install-deps).
const requireFromSdk = createRequire(new URL('../../../clients/js/package.json', import.meta.url));
export const WebSocket = globalThis.WebSocket ?? requireFromSdk('ws');

export const url = process.env.SYNAPSE_URL || 'ws://127.0.0.1:4000/cortex';

export function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`FAILED: set ${name} (see examples/agents/README.md)`);
    process.exit(2);
  }
  return v;
}

// Resolves after `ms`, or rejects with the signal's reason when the run is cancelled first.
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener('abort', () => { clearTimeout(t); reject(signal.reason); }, { once: true });
  });
}

// Serves until SIGINT / SIGTERM, then leaves the agent topic and exits 0.
export async function serveUntilStopped(worker, handler) {
  worker.on('registered', ({ workerId, agentId, capacity }) =>
    console.log(`registered as worker ${workerId} for agent ${agentId} (capacity ${capacity})`));
  worker.on('unregistered', ({ reason }) => console.log(`unregistered (${reason}); reconnecting by itself`));
  worker.on('run_end', ({ runId, outcome, reason }) => console.log(`run ${runId}: ${outcome}${reason ? ` (${reason})` : ''}`));
  worker.on('error', (e) => console.error(`error: ${e.reason}: ${e.message}`));
  const stop = async () => {
    await worker.stop().catch(() => {});
    process.exit(0);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    await worker.serve(handler);
  } catch (e) {
    console.error(`FAILED: ${e.reason || 'error'}: ${e.message}`);
    process.exit(1);
  }
}
