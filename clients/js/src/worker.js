// AgentWorker: serve an agent of your own behind Synapse (docs/protocol.md
// section 10, the worker protocol). The worker joins `agent:<agent_id>` with
// its capacity and tools; Synapse pushes `run` for each query (or declared
// tool) of that agent's clients and `cancel` when a client interrupts; the
// worker streams `thought` / `token` / `progress` and ends with one `result`
// or `error`. Synapse stamps seq and relays each event to the client.
import { SynapseError, Emitter, jwtClaims } from './util.js';
import { MimoSynapse } from './index.js';

// A reason the server keeps as it is (section 10); anything else is sent as agent_error.
const REASON = /^[a-z0-9_]{1,64}$/;
// Join refusals no retry can fix.
const FATAL_JOIN = new Set(['forbidden', 'invalid_payload', 'invalid_topic', 'unauthorized']);

function abortError(reason, message) {
  const e = new SynapseError('cancelled', message || `the run was cancelled (${reason})`, { reason });
  e.name = 'AbortError';
  e.cancelReason = reason;
  return e;
}

/**
 * A worker process's connection to Synapse, serving one agent id (or `*`,
 * every agent of its tenant, with a worker key made with `--agent '*'`).
 *
 * The handler is called once per run with `(run, ctx)` and is an async
 * generator (or an async function that only returns). Each value it yields
 * is streamed to the client:
 *   - a string, or `{token: string}`: a `token` (a text delta);
 *   - `{thought: string | object}`: a `thought`;
 *   - `{progress: number, total?, message?}`: a `progress`.
 * What it returns is the run's `result` data; what it throws ends the run
 * with `error` (the error's `reason` when it is a plain snake_case code,
 * else `agent_error`, and its message). `ctx.signal` is an AbortSignal that
 * fires when the client interrupts, the run times out on the server, the
 * link to Synapse drops (the server has then ended the run with
 * `agent_unavailable`) or stop() is called; `signal.reason.cancelReason`
 * says which: the `cancel` push's reason (`interrupted`, `timeout`),
 * `disconnected` or `stopped`. After it fires nothing more is sent for the run and the
 * generator is closed at its next yield (its `finally` blocks run).
 * `ctx.callTool(name, args)` runs a Synapse tool (memory.*, MCP tools) as
 * the run's caller and resolves with its data.
 *
 * The connection reconnects by itself (the client SDK's backoff), and
 * phoenix rejoins the agent topic with the same capacity and tools: the
 * worker is registered again after a dropped link or a server restart.
 */
export class AgentWorker {
  /**
   * @param {string} url `ws://host:4000/cortex`
   * @param {import('../index.js').AgentWorkerOptions} options
   */
  constructor(url, options = {}) {
    const { agentId, capacity = 1, tools = [], maxBufferedBytes = 1 << 20, ...conn } = options || {};
    let agent = agentId;
    if (agent == null && typeof conn.token === 'string') {
      const c = jwtClaims(conn.token);
      if (c && typeof c.sub === 'string') agent = c.sub;
    }
    if (typeof agent !== 'string' || !agent) {
      throw new TypeError("AgentWorker: agentId is required (the --agent of the worker key, or '*')");
    }
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1000) {
      throw new TypeError('AgentWorker: capacity must be an integer from 1 to 1000');
    }
    if (!Array.isArray(tools)) throw new TypeError('AgentWorker: tools must be an array of {name, description?, input_schema?}');
    this.agentId = agent;
    this.capacity = capacity;
    this.tools = tools;
    this.topic = `agent:${agent}`;
    this._maxBuffered = maxBufferedBytes;
    // The connection, its credentials, reconnects and token refresh are the
    // client SDK's; a worker never joins cortex: (its key may not).
    this._client = new MimoSynapse(url, { ...conn, agentId: agent === '*' ? '_worker' : agent, resumeRuns: false });
    this._timeoutMs = conn.timeoutMs ?? 10000;
    this._events = new Emitter();
    this._client.on('close', (e) => {
      this._unregistered('disconnected');
      this._events.emit('close', e);
    });
    this._client.on('reconnect', (e) => this._events.emit('reconnect', e));
    this._client.on('error', (e) => this._events.emit('error', e));
    /** @type {Map<string, any>} runs being served, by run_id */
    this._runs = new Map();
    this._channel = null;
    this._handler = null;
    this._registered = false;
    this._workerId = null;
    this._stopped = false;
  }

  /** Whether the agent topic is joined now (runs can arrive). */
  get registered() { return this._registered; }

  /** The server's id for this worker's current join. */
  get workerId() { return this._workerId; }

  /** The runs being served now. */
  get active() { return this._runs.size; }

  /**
   * 'registered' ({workerId, agentId, capacity}) after each (re)join,
   * 'unregistered' ({reason}) when the link or the join is lost,
   * 'run' ({runId, kind, caller}), 'run_end' ({runId, outcome: 'result' |
   * 'error' | 'cancelled', reason?}), 'error' (SynapseError), 'close', 'reconnect'.
   * @returns {() => void} removes the listener
   */
  on(event, fn) { return this._events.on(event, fn); }

  off(event, fn) { this._events.off(event, fn); }

  /**
   * Connects, joins the agent topic and serves runs with `handler` until
   * stop(). Resolves with the join reply ({worker_id, agent_id, capacity})
   * once registered; rejects if the credentials or the join are refused
   * (`forbidden` for a key that is not a worker key, `invalid_payload` for a
   * bad tool declaration).
   * @param {import('../index.js').AgentHandler} handler
   * @returns {Promise<{worker_id: string, agent_id: string, capacity: number}>}
   */
  async serve(handler) {
    if (typeof handler !== 'function') throw new TypeError('serve: handler must be a function');
    if (this._handler) throw new SynapseError('already_serving', 'serve() was called already');
    this._handler = handler;
    this._stopped = false;
    try {
      await this._client.connect();
    } catch (err) {
      this._handler = null;
      throw err;
    }
    const socket = this._client._socket;
    const params = { capacity: this.capacity };
    if (this.tools.length) params.tools = this.tools;
    const ch = socket.channel(this.topic, () => params);
    this._channel = ch;
    ch.on('run', (p) => this._onRun(p));
    ch.on('cancel', (p) => this._onCancel(p));
    // The link dropped or the server crashed the channel: the server ends
    // this worker's runs (agent_unavailable, section 10 "Failure"), so the
    // handlers stop too. phoenix rejoins by itself.
    ch.onError(() => this._unregistered('disconnected'));
    return new Promise((resolve, reject) => {
      let first = true;
      ch.join(this._timeoutMs)
        .receive('ok', (resp) => {
          this._registered = true;
          this._workerId = resp && resp.worker_id ? resp.worker_id : null;
          this._events.emit('registered', { workerId: this._workerId, agentId: (resp && resp.agent_id) || this.agentId, capacity: (resp && resp.capacity) || this.capacity });
          if (first) resolve(resp || {});
          first = false;
        })
        .receive('error', (resp) => {
          const err = new SynapseError((resp && resp.reason) || 'join_failed', resp && resp.message, resp);
          this._events.emit('error', err);
          if (FATAL_JOIN.has(err.reason)) {
            // Retrying cannot fix it: stop, and say why.
            if (first) {
              first = false;
              this.stop().finally(() => reject(err));
            } else {
              this.stop();
            }
          }
          // Others (rate_limited, ...) are retried by phoenix's rejoin timer.
        });
    });
  }

  /**
   * Leaves the agent topic, cancels the runs being served (their signals
   * fire with reason `stopped`; the server ends them for their clients) and
   * closes the connection.
   * @returns {Promise<void>}
   */
  async stop() {
    this._stopped = true;
    this._abortAll('stopped');
    const ch = this._channel;
    this._channel = null;
    this._registered = false;
    if (ch) {
      await new Promise((resolve) => {
        ch.leave(this._timeoutMs).receive('ok', resolve).receive('timeout', resolve).receive('error', resolve);
      });
    }
    this._handler = null;
    await this._client.disconnect();
  }

  _unregistered(reason) {
    const was = this._registered;
    this._registered = false;
    this._abortAll(reason);
    if (was) this._events.emit('unregistered', { reason });
  }

  _abortAll(reason) {
    for (const st of [...this._runs.values()]) this._abort(st, reason);
  }

  _abort(st, reason, message) {
    if (st.aborted) return;
    st.aborted = true;
    this._runs.delete(st.runId);
    const err = abortError(reason, message);
    for (const call of [...st.calls]) {
      call.push.cancelTimeout();
      call.reject(err);
    }
    st.calls.clear();
    st.controller.abort(err);
    this._events.emit('run_end', { runId: st.runId, outcome: 'cancelled', reason });
  }

  _onCancel(p) {
    const st = p && this._runs.get(p.run_id);
    if (st) this._abort(st, (p && p.reason) || 'interrupted');
  }

  _onRun(p) {
    if (!p || typeof p.run_id !== 'string' || this._runs.has(p.run_id) || !this._handler) return;
    const st = { runId: p.run_id, controller: new AbortController(), aborted: false, calls: new Set(), deadlineMs: p.deadline_ms };
    this._runs.set(st.runId, st);
    const run = {
      runId: p.run_id,
      kind: p.kind,
      q: p.q,
      limit: p.limit,
      name: p.name,
      args: p.args,
      caller: p.caller,
      deadlineMs: p.deadline_ms,
      payload: p,
    };
    const ctx = {
      runId: st.runId,
      signal: st.controller.signal,
      caller: p.caller,
      deadlineMs: p.deadline_ms,
      callTool: (name, args) => this._callTool(st, name, args),
      // The same as yielding, for code that streams from a callback.
      token: (text) => this._emit(st, { token: text }),
      thought: (thought) => this._emit(st, { thought }),
      progress: (progress, extra = {}) => this._emit(st, { ...extra, progress }),
    };
    this._events.emit('run', { runId: st.runId, kind: p.kind, caller: p.caller });
    this._execute(st, run, ctx);
  }

  // Contract: drives one handler to its end and sends exactly one terminal
  // event for the run, unless the run was aborted first (then nothing more
  // is sent: the server already ended it for the client). Yielded values
  // go out in order as they come; the next value is asked for only after
  // the previous one was handed to the socket (and the socket's buffer is
  // below maxBufferedBytes), so a fast generator cannot flood memory.
  async _execute(st, run, ctx) {
    let data;
    let failure = null;
    try {
      const out = this._handler(run, ctx);
      if (out && typeof out[Symbol.asyncIterator] === 'function') {
        const it = out[Symbol.asyncIterator]();
        for (;;) {
          const step = await it.next();
          if (st.aborted) {
            if (!step.done && typeof it.return === 'function') it.return(undefined).catch(() => {});
            break;
          }
          if (step.done) {
            data = step.value;
            break;
          }
          await this._emit(st, step.value);
          if (st.aborted) {
            if (typeof it.return === 'function') it.return(undefined).catch(() => {});
            break;
          }
        }
      } else {
        data = await out;
      }
    } catch (err) {
      failure = err;
    }
    if (st.aborted) return;
    this._runs.delete(st.runId);
    st.aborted = true; // nothing else goes out for it
    if (failure) {
      const reason = failure && typeof failure.reason === 'string' && REASON.test(failure.reason) ? failure.reason : 'agent_error';
      const message = (failure && failure.message) || String(failure);
      this._terminal(st, 'error', { reason, message });
      this._events.emit('run_end', { runId: st.runId, outcome: 'error', reason });
    } else {
      this._terminal(st, 'result', { data: data === undefined ? null : data });
      this._events.emit('run_end', { runId: st.runId, outcome: 'result' });
    }
  }

  // One yielded value onto the wire. Stream events go without a ref (the
  // server answers only frames that carry one), so a token costs one frame.
  async _emit(st, value) {
    if (st.aborted) return;
    let event;
    let payload;
    if (typeof value === 'string') {
      event = 'token';
      payload = { text: value };
    } else if (value && typeof value === 'object' && typeof value.token === 'string') {
      event = 'token';
      payload = { text: value.token };
    } else if (value && typeof value === 'object' && 'thought' in value) {
      event = 'thought';
      payload = { thought: value.thought };
    } else if (value && typeof value === 'object' && typeof value.progress === 'number') {
      event = 'progress';
      payload = { progress: value.progress };
      if (value.total != null) payload.total = value.total;
      if (value.message != null) payload.message = String(value.message);
    } else {
      throw new TypeError(`the handler yielded ${JSON.stringify(value)}; yield a string (a token), {token}, {thought} or {progress}`);
    }
    const ch = this._channel;
    const socket = this._client._socket;
    if (!ch || !socket) return;
    socket.push({ topic: this.topic, event, payload: { run_id: st.runId, ...payload }, ref: null, join_ref: ch.joinRef() });
    await this._drained(st);
  }

  async _drained(st) {
    const socket = this._client._socket;
    for (let i = 0; i < 6000; i++) { // at most ~60 s, then carry on regardless
      const conn = socket && socket.conn;
      if (st.aborted || !conn || typeof conn.bufferedAmount !== 'number' || conn.bufferedAmount <= this._maxBuffered) return;
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  _terminal(st, event, payload) {
    const ch = this._channel;
    if (!ch) return;
    ch.push(event, { run_id: st.runId, ...payload }, this._timeoutMs)
      .receive('error', (r) => this._events.emit('error', new SynapseError((r && r.reason) || 'error', `${event} for ${st.runId} was refused: ${r && r.message}`, r)))
      .receive('timeout', () => {});
  }

  _callTool(st, name, args = {}) {
    if (st.aborted) return Promise.reject(abortError('cancelled', 'the run was already cancelled'));
    const ch = this._channel;
    if (!ch) return Promise.reject(new SynapseError('disconnected', 'the worker is not connected'));
    // A tool may take as long as the run may: wait until its deadline.
    const untilDeadline = typeof st.deadlineMs === 'number' ? st.deadlineMs - Date.now() + 1000 : 0;
    const timeout = Math.max(this._timeoutMs, untilDeadline);
    return new Promise((resolve, reject) => {
      const call = { push: null, reject };
      const settle = (fn, v) => { st.calls.delete(call); fn(v); };
      call.push = ch.push('call_tool', { run_id: st.runId, name, args: args || {} }, timeout)
        .receive('ok', (r) => settle(resolve, r && Object.prototype.hasOwnProperty.call(r, 'data') ? r.data : r))
        .receive('error', (r) => settle(reject, new SynapseError((r && r.reason) || 'tool_error', r && r.message, r)))
        .receive('timeout', () => settle(reject, new SynapseError('timeout', `${name} did not answer within ${timeout} ms`)));
      st.calls.add(call);
    });
  }
}

export default AgentWorker;
