// Synapse dashboard. No dependencies, nothing fetched from elsewhere: the
// server embeds this file. Everything a client or the server sends is shown
// with textContent (never innerHTML), so hostile topic names, agent ids and
// payloads stay text.
//
// Credential: the admin's API key or token. A key is exchanged at once for a
// short token (POST /api/token) so that no key ever appears in a WebSocket
// URL; the token signs the admin API requests and the socket.

const $ = (id) => document.getElementById(id);
const HISTORY_S = 300;

const state = {
  token: null,
  agent: 'admin',
  last: null,          // previous stats sample
  series: [],          // {t, inRate, outRate, delRate}
  topic: null,         // chosen topic
  run: null,           // {ref} of the playground's run
  timer: null,
  socket: null,
};

// --- helpers -----------------------------------------------------------------

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value == null ? '' : String(value);
  if (cls) el.className = cls;
  return el;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    if (c instanceof Node) {
      const td = document.createElement('td');
      td.appendChild(c);
      tr.appendChild(td);
    } else {
      tr.appendChild(text('td', c));
    }
  }
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function setStatus(s, label) {
  const el = $('status');
  el.dataset.state = s;
  el.textContent = label;
}

function bytes(n) {
  if (n > 1 << 30) return (n / (1 << 30)).toFixed(2) + ' GiB';
  if (n > 1 << 20) return (n / (1 << 20)).toFixed(1) + ' MiB';
  return Math.round(n / 1024) + ' KiB';
}

function micros(us) {
  if (!us) return '0';
  return us >= 1000 ? (us / 1000).toFixed(us >= 10000 ? 0 : 1) + ' ms' : us + ' µs';
}

function jwtSub(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '==='.slice((part.length + 3) % 4))).sub;
  } catch {
    return null;
  }
}

async function api(path, options = {}) {
  const res = await fetch(path, {
    ...options,
    headers: { Authorization: 'Bearer ' + state.token, 'Content-Type': 'application/json' },
    cache: 'no-store',
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${res.status} ${body.error || ''}: ${body.reason || ''}`);
  return body;
}

// --- sign in -----------------------------------------------------------------

async function signIn(credential) {
  let token = credential;
  if (credential.split('.').length !== 3) {
    const res = await fetch('/api/token', {
      method: 'POST',
      headers: { Authorization: 'Bearer ' + credential, 'Content-Type': 'application/json' },
      body: JSON.stringify({ ttl_s: 3600 }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.reason || `sign-in refused (${res.status})`);
    token = body.token;
  }
  state.token = token;
  state.agent = jwtSub(token) || 'admin';
  await api('/api/admin/stats');  // proves the credential is the admin's
}

// --- a small Phoenix Channels V2 client ---------------------------------------

class V2Socket {
  constructor(token) {
    this.ref = 0;
    this.pending = new Map();   // ref -> resolve
    this.handlers = new Map();  // topic -> fn(event, payload)
    this.joinRefs = new Map();
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${scheme}//${location.host}/cortex/websocket?vsn=2.0.0&token=${encodeURIComponent(token)}`;
    this.opened = new Promise((resolve, reject) => {
      this.ws = new WebSocket(url);
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error('WebSocket refused'));
    });
    this.ws.onmessage = (e) => this.onFrame(e.data);
    this.ws.onclose = (e) => {
      setStatus('error', `socket closed (${e.code})`);
      for (const r of this.pending.values()) r({ status: 'error', response: { reason: 'closed' } });
      this.pending.clear();
    };
    this.heartbeat = setInterval(() => this.push('phoenix', 'heartbeat', {}), 30000);
  }

  onFrame(data) {
    let frame;
    try { frame = JSON.parse(data); } catch { return; }
    if (!Array.isArray(frame) || frame.length !== 5) return;
    const [, ref, topic, event, payload] = frame;
    if (event === 'phx_reply' && this.pending.has(ref)) {
      const resolve = this.pending.get(ref);
      this.pending.delete(ref);
      resolve(payload);
      return;
    }
    const h = this.handlers.get(topic);
    if (h) h(event, payload);
  }

  push(topic, event, payload) {
    const ref = String(++this.ref);
    const joinRef = this.joinRefs.get(topic) ?? null;
    return new Promise((resolve) => {
      this.pending.set(ref, resolve);
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify([joinRef, ref, topic, event, payload]));
    });
  }

  async join(topic, onEvent) {
    await this.opened;
    const ref = String(++this.ref);
    this.joinRefs.set(topic, ref);
    this.handlers.set(topic, onEvent);
    return new Promise((resolve) => {
      this.pending.set(ref, resolve);
      this.ws.send(JSON.stringify([ref, ref, topic, 'phx_join', {}]));
    });
  }

  close() {
    clearInterval(this.heartbeat);
    this.ws.close(1000);
  }
}

// --- live numbers ---------------------------------------------------------------

function renderStats(s) {
  const prev = state.last;
  state.last = s;
  $('n-connections').textContent = s.connections_open;
  $('n-slow').textContent = s.slow_consumer_closes_total;
  $('n-rss').textContent = bytes(s.process.rss_bytes);
  $('n-runs').textContent = s.runs_active;
  $('n-fanout').textContent = `${micros(s.fanout_latency.p50_us)} / ${micros(s.fanout_latency.p99_us)}`;
  if (prev) {
    const dt = Math.max(0.001, (s.ts_ms - prev.ts_ms) / 1000);
    const rate = (k) => Math.max(0, (s[k] - prev[k]) / dt);
    const point = { t: s.ts_ms, inRate: rate('frames_in_total'), outRate: rate('frames_out_total'),
                    delRate: rate('deliveries_total') };
    $('n-joins').textContent = rate('joins_total').toFixed(1);
    $('n-in').textContent = point.inRate.toFixed(1);
    $('n-out').textContent = point.outRate.toFixed(1);
    $('n-deliveries').textContent = point.delRate.toFixed(1);
    state.series.push(point);
    while (state.series.length && state.series[0].t < s.ts_ms - HISTORY_S * 1000) state.series.shift();
    drawChart();
  }
  const refusals = Object.entries(s.refusals).filter(([, n]) => n > 0);
  for (const [k, n] of Object.entries(s.rate_limited)) if (n > 0) refusals.push([`rate_limited (${k})`, n]);
  fill($('refusals').tBodies[0], refusals.length ? refusals.map(([k, n]) => row([k, n])) : [row(['none', 0])]);
}

function drawChart() {
  const c = $('chart');
  const g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  const pts = state.series;
  if (pts.length < 2) return;
  const max = Math.max(1, ...pts.map((p) => Math.max(p.inRate, p.outRate, p.delRate)));
  const now = pts[pts.length - 1].t;
  const x = (t) => c.width - ((now - t) / (HISTORY_S * 1000)) * c.width;
  const y = (v) => c.height - 10 - (v / max) * (c.height - 20);
  for (const [key, color] of [['inRate', '#2a6fdb'], ['outRate', '#1e9e5a'], ['delRate', '#c2571a']]) {
    g.strokeStyle = color;
    g.beginPath();
    pts.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p[key])) : g.moveTo(x(p.t), y(p[key]))));
    g.stroke();
  }
  g.fillStyle = '#5a6170';
  g.fillText(`max ${max.toFixed(1)}/s`, 4, 12);
}

function renderConnections(list) {
  fill($('connections').tBodies[0], list.connections.map((c) => {
    const kick = text('button', 'disconnect');
    kick.addEventListener('click', () => api('/api/admin/disconnect', {
      method: 'POST', body: JSON.stringify({ connection_id: c.id }) }).catch(showError));
    const tr = row([c.id, c.agent_id, c.key_id, c.peer, c.topics.join(', '), kick]);
    tr.dataset.connection = String(c.id);
    return tr;
  }));
}

function renderTopics(list) {
  fill($('topics').tBodies[0], list.topics.map((t) => {
    const tr = row([t.topic, t.members, t.presences, t.last_offset]);
    tr.className = 'clickable' + (t.topic === state.topic ? ' selected' : '');
    tr.dataset.topic = t.topic;
    tr.addEventListener('click', () => { state.topic = t.topic; refreshTopic(); });
    return tr;
  }));
}

async function refreshTopic() {
  if (!state.topic) return;
  $('topic-name').textContent = state.topic;
  const enc = encodeURIComponent(state.topic);
  const [detail, history] = await Promise.all([
    api(`/api/admin/topics/${enc}`),
    api(`/api/admin/topics/${enc}/history?limit=20`),
  ]);
  const presence = Object.entries(detail.presence || {}).map(([key, v]) =>
    text('li', `${key}: ${(v.metas || []).map((m) => JSON.stringify(m)).join(' ')}`));
  $('presence').replaceChildren(...presence);
  $('messages').replaceChildren(...history.messages.slice().reverse().map((m) =>
    text('li', `#${m.offset} ${m.event} ${JSON.stringify(m.payload)}`)));
}

async function tick() {
  try {
    const [stats, conns, topics] = await Promise.all([
      api('/api/admin/stats'), api('/api/admin/connections'), api('/api/admin/topics')]);
    renderStats(stats);
    renderConnections(conns);
    renderTopics(topics);
    await refreshTopic();
    if (state.socket && state.socket.ws.readyState === WebSocket.OPEN) setStatus('live', 'live');
  } catch (e) {
    showError(e);
  }
}

function showError(e) {
  setStatus('error', String(e.message || e));
}

// --- query playground --------------------------------------------------------------

function onCortex(event, payload) {
  if (!state.run || payload.ref !== state.run.ref) return;
  if (event === 'thought') {
    const t = payload.thought || {};
    $('thoughts').appendChild(text('li', `${t.type || 'thought'}: ${t.content ?? JSON.stringify(t)}`));
  } else if (event === 'progress') {
    $('thoughts').appendChild(text('li', `progress: ${JSON.stringify(payload.progress)}`));
  } else if (['result', 'error', 'interrupted'].includes(event)) {
    $('result').textContent = `${event}: ${JSON.stringify(payload, null, 2)}`;
    $('result').dataset.outcome = event;
    state.run = null;
    $('interrupt').disabled = true;
  }
}

async function runQuery(q) {
  const ref = 'dash' + Date.now().toString(36);
  state.run = { ref };
  $('thoughts').replaceChildren();
  $('result').textContent = '';
  delete $('result').dataset.outcome;
  $('interrupt').disabled = false;
  // "!countdown N" runs the slow demo tool: something long enough to interrupt.
  const m = /^!countdown\s*(\d+)?$/.exec(q.trim());
  const reply = m
    ? await state.socket.push(`cortex:${state.agent}`, 'tool',
      { tool: 'demo.countdown', args: { steps: Number(m[1] || 50), interval_ms: 200 }, ref })
    : await state.socket.push(`cortex:${state.agent}`, 'query', { q, ref });
  if (reply.status !== 'ok') {
    $('result').textContent = `refused: ${JSON.stringify(reply.response)}`;
    $('result').dataset.outcome = 'refused';
    state.run = null;
    $('interrupt').disabled = true;
  }
}

async function start() {
  $('signin').hidden = true;
  $('app').hidden = false;
  $('agent').textContent = state.agent;
  state.socket = new V2Socket(state.token);
  const joined = await state.socket.join(`cortex:${state.agent}`, onCortex);
  if (joined.status !== 'ok') showError(new Error('cortex join refused: ' + JSON.stringify(joined.response)));
  else setStatus('live', 'live');
  await tick();
  state.timer = setInterval(tick, 1000);
}

$('signin-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('signin-error').textContent = '';
  try {
    await signIn($('credential').value.trim());
    $('credential').value = '';
    await start();
  } catch (err) {
    $('signin-error').textContent = String(err.message || err);
  }
});

$('query-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const q = $('query').value;
  if (q.trim()) runQuery(q).catch(showError);
});

$('interrupt').addEventListener('click', () => {
  if (!state.run) return;
  state.socket.push(`cortex:${state.agent}`, 'interrupt', { ref: state.run.ref, reason: 'dashboard' });
});
