#!/usr/bin/env node
// The echo agent: serves agent `echo` as an agent worker and answers every
// query by streaming its words back, one token every 50 ms, after one
// thought. An interrupt from the client stops it mid-sentence (ctx.signal).
//
//   SYNAPSE_WORKER_KEY=syn_... node examples/agents/js/echo.mjs
//
// (a key from `synapse keys create --worker --agent echo`; see
// examples/agents/README.md). SYNAPSE_URL overrides ws://127.0.0.1:4000/cortex.
//
// In your own project: `npm install @mimo/synapse ws`, then
//   import { AgentWorker } from '@mimo/synapse';
import { AgentWorker } from '../../../clients/js/src/index.js';
import { WebSocket, url, need, sleep, serveUntilStopped } from './common.mjs';

const worker = new AgentWorker(url, {
  apiKey: need('SYNAPSE_WORKER_KEY'),
  agentId: 'echo',
  capacity: 8, // runs served at once
  transport: WebSocket,
});

await serveUntilStopped(worker, async function* echo(run, ctx) {
  // run: {runId, kind: 'query', q, caller: {tenant, agent_id}, deadlineMs}
  yield { thought: `echoing ${run.q.split(/\s+/).length} words for ${run.caller.agent_id}` };
  for (const word of run.q.split(/\s+/)) {
    await sleep(50, ctx.signal); // rejects when the client interrupts: the run stops here
    yield `${word} `;
  }
  return { echoed: run.q };
});
