#!/usr/bin/env node
// The retrieval agent: serves agent `librarian`. For each query it searches
// the user's memories with Synapse's own `memory.search` (ctx.callTool acts
// as the run's caller, so it sees the memories of the user it serves), says
// what it found as a thought, and streams an answer built from them token
// by token.
//
//   SYNAPSE_WORKER_KEY=syn_... node examples/agents/js/retrieval.mjs
//
// (a key from `synapse keys create --worker --agent librarian`; see
// examples/agents/README.md). SYNAPSE_URL overrides ws://127.0.0.1:4000/cortex.
// A real agent would hand the memories to a model and stream its tokens;
// this one only quotes them, so it runs anywhere.
import { AgentWorker } from '../../../clients/js/src/index.js';
import { WebSocket, url, need, sleep, serveUntilStopped } from './common.mjs';

const worker = new AgentWorker(url, {
  apiKey: need('SYNAPSE_WORKER_KEY'),
  agentId: 'librarian',
  capacity: 4,
  transport: WebSocket,
});

// Splits text into word tokens that keep their spacing.
const words = (text) => text.match(/\S+\s*/g) || [];

await serveUntilStopped(worker, async function* librarian(run, ctx) {
  const found = await ctx.callTool('memory.search', { query: run.q, limit: 3 });
  const memories = found.results || [];
  yield { thought: { type: 'retrieval', content: `found ${memories.length} memories`, ids: memories.map((m) => m.id) } };
  const answer = memories.length === 0
    ? `I remember nothing about "${run.q}".`
    : `From what you told me: ${memories.map((m) => m.content.trim()).join(' Also: ')}`;
  for (const token of words(answer)) {
    await sleep(20, ctx.signal);
    yield token;
  }
  return { sources: memories.map((m) => m.id), partial: !!found.partial };
});
