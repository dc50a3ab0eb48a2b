'use strict';
// Baseline for synapse-bench: the subset of the Synapse protocol (docs/protocol.md)
// that the load scenarios use, on the npm `ws` package, written the way one
// would write a small production pub/sub server in Node:
//
//   - GET /cortex/websocket upgraded to a WebSocket; any credentials accepted
//     (the api_key / token query parameter, if present, names the agent);
//   - Phoenix V2 JSON frames [join_ref, ref, topic, event, payload];
//   - `phoenix` topic: heartbeat -> phx_reply ok {};
//   - phx_join / phx_leave on pub/sub topics and on cortex:<agent>;
//   - publish: any non-reserved event on a joined pub/sub topic -> reply
//     {"offset": N}; the payload gets `_meta` {offset, epoch, from, ts}, is
//     serialized once and the same Buffer is sent to every other member;
//   - cortex `ping` -> {"pong": <unix ms>}.
//
// There is no query engine: the query_load scenario is Synapse-only.
//
// Usage: node server.js [--port N] [--host 127.0.0.1]
// Prints "listening on HOST:PORT" when ready; exits on SIGTERM/SIGINT.

const http = require('node:http');
const crypto = require('node:crypto');
const { WebSocketServer } = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '4100'));
const maxPayload = Number(arg('--max-message-bytes', String(1024 * 1024)));

// topic name -> { members: Set<Client>, offset: number, epoch: string }
const topics = new Map();
const TOPIC_RE = /^[A-Za-z0-9_\-.:@]{1,255}$/;

function topicState(name) {
  let t = topics.get(name);
  if (!t) {
    t = { members: new Set(), offset: 0, epoch: crypto.randomBytes(8).toString('hex') };
    topics.set(name, t);
  }
  return t;
}

function isReserved(event) {
  return event.startsWith('phx_') || event.startsWith('presence_') || event.startsWith('_');
}

class Client {
  constructor(ws, agent) {
    this.ws = ws;
    this.agent = agent;
    this.joined = new Map(); // topic -> join_ref
  }

  reply(joinRef, ref, topic, status, response) {
    this.ws.send(JSON.stringify([joinRef, ref, topic, 'phx_reply', { status, response }]));
  }

  error(joinRef, ref, topic, reason) {
    this.reply(joinRef, ref, topic, 'error', { reason });
  }

  leaveAll() {
    for (const name of this.joined.keys()) {
      const t = topics.get(name);
      if (!t) continue;
      t.members.delete(this);
      if (t.members.size === 0) topics.delete(name);
    }
    this.joined.clear();
  }

  onMessage(data, isBinary) {
    let frame;
    try {
      if (isBinary) throw new Error('binary');
      frame = JSON.parse(data);
      if (!Array.isArray(frame) || frame.length !== 5) throw new Error('not a 5-array');
    } catch (e) {
      this.ws.send(JSON.stringify([null, null, 'phoenix', 'phx_error',
        { reason: 'malformed_frame', message: String(e.message) }]));
      return;
    }
    const [joinRef, ref, topic, event, payload] = frame;
    if (typeof topic !== 'string' || typeof event !== 'string' ||
        payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
      this.ws.send(JSON.stringify([null, null, 'phoenix', 'phx_error',
        { reason: 'malformed_frame', message: 'wrong element types' }]));
      return;
    }

    if (topic === 'phoenix') {
      if (event === 'heartbeat') this.reply(joinRef, ref, topic, 'ok', {});
      else this.error(joinRef, ref, topic, 'unknown_event');
      return;
    }

    if (event === 'phx_join') return this.join(joinRef, ref, topic);
    if (!this.joined.has(topic)) return this.error(joinRef, ref, topic, 'unmatched_topic');
    if (event === 'phx_leave') {
      const t = topics.get(topic);
      if (t) {
        t.members.delete(this);
        if (t.members.size === 0) topics.delete(topic);
      }
      this.joined.delete(topic);
      return this.reply(joinRef, ref, topic, 'ok', {});
    }

    if (topic.startsWith('cortex:')) {
      if (event === 'ping') return this.reply(joinRef, ref, topic, 'ok', { pong: Date.now() });
      return this.error(joinRef, ref, topic, 'unknown_event');
    }

    if (isReserved(event)) return this.error(joinRef, ref, topic, 'reserved_event');
    if (Object.prototype.hasOwnProperty.call(payload, '_meta')) {
      return this.error(joinRef, ref, topic, 'invalid_payload');
    }
    this.publish(joinRef, ref, topic, event, payload);
  }

  join(joinRef, ref, topic) {
    if (!TOPIC_RE.test(topic) || !topic.includes(':')) return this.error(joinRef, ref, topic, 'invalid_topic');
    if (topic.startsWith('cortex:')) {
      this.joined.set(topic, joinRef);
      return this.reply(joinRef, ref, topic, 'ok',
        { agent_id: topic.slice(7), session: crypto.randomBytes(8).toString('hex') });
    }
    const t = topicState(topic);
    t.members.add(this);
    this.joined.set(topic, joinRef);
    this.reply(joinRef, ref, topic, 'ok', { offset: t.offset, epoch: t.epoch });
  }

  publish(joinRef, ref, topic, event, payload) {
    const t = topics.get(topic);
    const offset = ++t.offset;
    payload._meta = { offset, epoch: t.epoch, from: this.agent, ts: Date.now() };
    // Serialized once; the same Buffer goes to every other member.
    const out = Buffer.from(JSON.stringify([null, null, topic, event, payload]));
    for (const m of t.members) {
      if (m !== this) m.ws.send(out, { binary: false });
    }
    this.reply(joinRef, ref, topic, 'ok', { offset });
  }
}

const server = http.createServer((req, res) => {
  if (req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"status":"ok"}');
    return;
  }
  res.writeHead(404, { 'content-type': 'application/json' });
  res.end('{"error":"not_found"}');
});

const wss = new WebSocketServer({ noServer: true, maxPayload, clientTracking: false });

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== '/cortex/websocket') {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  const vsn = url.searchParams.get('vsn');
  if (vsn !== null && vsn !== '2.0.0') {
    socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  // Any credentials are accepted; the agent is the key's name part if it has one.
  const cred = url.searchParams.get('api_key') || url.searchParams.get('token') || 'anonymous';
  const agent = cred.length > 24 ? cred.slice(0, 24) : cred;
  wss.handleUpgrade(req, socket, head, (ws) => {
    const client = new Client(ws, agent);
    ws.on('message', (data, isBinary) => client.onMessage(data, isBinary));
    ws.on('close', () => client.leaveAll());
    ws.on('error', () => {});
  });
});

server.listen({ host, port, backlog: 4096 }, () => {
  const a = server.address();
  process.stdout.write(`listening on ${a.address}:${a.port}\n`);
});

function shutdown() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
