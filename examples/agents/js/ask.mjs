#!/usr/bin/env node
// Queries an agent through the JavaScript SDK and prints its answer as the
// tokens arrive (thoughts go to stderr as `[thought] ...`).
//
//   SYNAPSE_API_KEY=syn_... node examples/agents/js/ask.mjs "your question"
//   SYNAPSE_API_KEY=syn_... node examples/agents/js/ask.mjs --remember "a fact to store"
//
// The key's agent (`keys create --agent echo`) is the agent asked. Exit code
// 0 when the run ended with a result, 1 otherwise.
import { MimoSynapse } from '../../../clients/js/src/index.js';
import { WebSocket, url, need } from './common.mjs';

const args = process.argv.slice(2);
const remember = args[0] === '--remember';
const text = (remember ? args.slice(1) : args).join(' ');
if (!text) {
  console.error('usage: ask.mjs "question" | ask.mjs --remember "fact"');
  process.exit(2);
}

const synapse = new MimoSynapse(url, { apiKey: need('SYNAPSE_API_KEY'), transport: WebSocket });
try {
  await synapse.connect();
  if (remember) {
    const { data } = await synapse.tool('memory.store', { content: text }).done;
    console.log(`remembered as ${data.id}`);
  } else {
    const run = synapse.query(text, {
      onThought: (t) => console.error(`[thought] ${t.content}`),
      onToken: (delta) => process.stdout.write(delta),
    });
    const { data } = await run.done;
    process.stdout.write('\n');
    console.error(`[result] ${JSON.stringify(data)}`);
  }
} catch (e) {
  process.stdout.write('\n');
  console.error(`FAILED: ${e.reason || 'error'}: ${e.message}`);
  process.exitCode = 1;
} finally {
  await synapse.disconnect();
}
