// @mimo/synapse: the JavaScript SDK for Synapse, built on the official
// `phoenix` client. See README.md and docs/protocol.md in the repository.
import { Socket, Presence } from 'phoenix';
import { SynapseError, Emitter, backoffDelay, jwtClaims } from './util.js';

export { SynapseError, backoffDelay, jwtClaims };
// The worker side (docs/protocol.md section 10); it uses MimoSynapse only at run time.
export { AgentWorker } from './worker.js';

/**
 * @typedef {Object} MessageMeta
 * @property {number} offset per-topic offset, +1 per message
 * @property {string} epoch changes when the topic's history is lost
 * @property {string} from the publisher's agent id
 * @property {number} ts server time, unix ms
 */

/**
 * @typedef {Object} Message
 * @property {string} topic
 * @property {string} event
 * @property {Record<string, any>} payload the publisher's object (without `_meta`)
 * @property {MessageMeta} meta the server's `_meta`
 */

/**
 * @typedef {Object} RunOutcome
 * @property {'success' | 'interrupted'} status
 * @property {string} ref
 * @property {any} [data] the result, when status is 'success'
 * @property {number} [latency_ms]
 * @property {string} [reason] why it was interrupted
 */

/**
 * @typedef {Object} RunHandle
 * @property {string} ref
 * @property {Promise<RunOutcome>} done resolves on `result` or `interrupted`,
 *   rejects with a SynapseError on `error` (reason `disconnected` when the link dropped)
 * @property {(reason?: string) => Promise<boolean>} interrupt true if the server accepted it
 */

const TERMINAL = new Set(['result', 'error', 'interrupted']);
const STATES = { idle: 'idle', connecting: 'connecting', open: 'open', reconnecting: 'reconnecting', closed: 'closed' };

function isUserEvent(event) {
  return typeof event === 'string' && !event.startsWith('phx_') && !event.startsWith('chan_reply_') &&
    !event.startsWith('presence_') && !event.startsWith('_');
}

// Node timers can be unref'd so they never keep a process alive; browsers' are numbers.
function unref(timer) {
  if (timer && typeof timer === 'object' && typeof timer.unref === 'function') timer.unref();
}

function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === 'function') {
    const b = c.getRandomValues(new Uint8Array(6));
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }
  return Math.random().toString(16).slice(2, 14);
}

// ws://host/cortex, ws://host/cortex/websocket, ws://host -> the endpoint
// phoenix wants (it appends /websocket itself).
function normalizeEndpoint(url) {
  let u = String(url).replace(/\/+$/, '');
  if (u.endsWith('/websocket')) u = u.slice(0, -'/websocket'.length);
  const m = /^(wss?:\/\/[^/]+)$/i.exec(u);
  if (m) u = `${m[1]}/cortex`;
  return u;
}

function httpBase(endpoint) {
  const m = /^(ws|wss|http|https):\/\/([^/]+)/i.exec(endpoint);
  if (!m) return null;
  const scheme = m[1].toLowerCase();
  return `${scheme === 'wss' || scheme === 'https' ? 'https' : 'http'}://${m[2]}`;
}

/**
 * A connection to a Synapse server: queries and tools on the agent's cortex
 * channel, pub/sub topics with recovery, presence, token refresh and
 * automatic reconnection.
 */
// Wraps a `ws`-style transport (an EventEmitter with 'unexpected-response')
// so that a refused upgrade's answer is read: status, Retry-After and the
// server's {"error", "reason"} body. Other transports are returned as they are.
function captureRefusals(Transport, sink) {
  if (typeof Transport !== 'function' || !Transport.prototype || typeof Transport.prototype.on !== 'function') {
    return Transport;
  }
  return class extends Transport {
    constructor(...args) {
      super(...args);
      this.on('unexpected-response', (req, res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => { if (body.length < 65536) body += chunk; });
        const done = () => {
          let parsed = null;
          try { parsed = JSON.parse(body); } catch { parsed = null; }
          sink({ status: res.statusCode, retryAfter: res.headers['retry-after'], body: parsed });
          // Aborts the handshake as ws does on its own: 'error', then 'close'.
          this.terminate();
        };
        res.on('end', done);
        res.on('error', done);
      });
    }
  };
}

// A refused upgrade as the error connect() rejects with: the server's own
// reason code and text, its status, and Retry-After (seconds and ms).
function refusalError({ status, retryAfter, body }) {
  const code = body && typeof body.error === 'string' ? body.error
    : status === 401 ? 'unauthorized' : status === 403 ? 'forbidden' : status === 429 ? 'too_many_connections' : `http_${status}`;
  const text = body && typeof body.reason === 'string' ? body.reason : `the server refused the upgrade (HTTP ${status})`;
  const details = { ...(body || {}), status };
  const seconds = Number(retryAfter);
  if (retryAfter != null && Number.isFinite(seconds)) {
    details.retry_after_s = seconds;
    details.retry_after_ms = Math.round(seconds * 1000);
  }
  const err = new SynapseError(code, text, details);
  err.status = status;
  if (details.retry_after_s != null) err.retryAfterS = details.retry_after_s;
  return err;
}

function isFatalRefusal(status, hasTokenProvider) {
  if (status === 400 || status === 403) return true;
  return status === 401 && !hasTokenProvider;
}

export class MimoSynapse {
  /**
   * @param {string} url `ws://host:4000/cortex` (`/cortex/websocket` and a bare `ws://host:4000` work too)
   * @param {import('../index.js').SynapseOptions} [options]
   */
  constructor(url, options = {}) {
    if (!url) throw new TypeError('MimoSynapse: url is required');
    const o = options || {};
    const creds = ['apiKey', 'token', 'getToken'].filter((k) => o[k] != null);
    if (creds.length === 0) throw new TypeError('MimoSynapse: one of apiKey, token or getToken is required');
    if (o.apiKey != null && (o.token != null || o.getToken != null)) {
      throw new TypeError('MimoSynapse: give apiKey or token/getToken, not both');
    }
    if (o.getToken != null && typeof o.getToken !== 'function') throw new TypeError('getToken must be a function');
    const transport = o.transport || globalThis.WebSocket;
    if (!transport) {
      // Without this phoenix silently falls back to long-polling, which Synapse does not serve.
      throw new TypeError("MimoSynapse: no global WebSocket here; pass {transport: WebSocket} from the 'ws' package");
    }

    this.url = normalizeEndpoint(url);
    // The refused upgrade's status, body and Retry-After, when the transport
    // can tell (the `ws` package can; browsers never expose them).
    this._refusal = null;
    this._transport = captureRefusals(transport, (r) => { this._refusal = r; });
    this._apiKey = o.apiKey ?? null;
    this._getToken = o.getToken ?? null;
    this._token = null;
    this._tokenExpMs = null;
    this._tokenIssuedMs = null;
    if (o.token != null) this._setToken(o.token);
    this._selfRefresh = o.selfRefresh !== false;
    this._refreshMarginMs = o.refreshMarginMs ?? 60000;
    this._extraParams = o.params || null;
    this._agentId = o.agentId ?? null;
    this._httpUrl = o.httpUrl || httpBase(this.url);
    this._fetch = o.fetch || (typeof globalThis.fetch === 'function' ? globalThis.fetch.bind(globalThis) : null);
    this._timeoutMs = o.timeoutMs ?? 10000;
    this._heartbeatIntervalMs = o.heartbeatIntervalMs ?? 30000;
    this._reconnect = {
      baseMs: o.reconnectBaseMs ?? 250,
      maxMs: o.reconnectMaxMs ?? 30000,
    };
    this._logger = o.logger || null;

    this._events = new Emitter();
    this._state = STATES.idle;
    this._socket = null;
    this._connectWaiters = [];
    this._downSince = null;
    this._attempts = 0;
    this._refPrefix = randomId();
    this._refCounter = 0;
    /** The runs this client follows, by ref (attached ones by `attach:<run_id>`). */
    this._runs = new Map();
    /** The same runs by the server's run_id, once known. */
    this._byRunId = new Map();
    // Runs outlive their connection on the server (docs/protocol.md §9
    // "Runs"): after a reconnect every run still followed is re-attached
    // from the last seq delivered. false: a drop ends them `disconnected`.
    this._resumeRuns = o.resumeRuns !== false;
    /** @type {Map<string, any>} */
    this._topics = new Map();
    this._cortex = null;
    this._refreshing = null;
    this._refreshTimer = null;
    this._serverTokenExpMs = null;
    /** @type {Map<string, {resolve: Function, reject: Function, timer: any}>} */
    this._phxRequests = new Map();
    /** Channel requests waiting for their reply. */
    this._pending = new Set();
  }

  // --- connection ---------------------------------------------------------

  /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' */
  get state() { return this._state; }

  /** Whether the socket is open now. */
  get connected() { return this._state === STATES.open; }

  /** The agent id once known (after the first query/tool/tools or whoami()). */
  get agentId() { return this._agentId; }

  /** The current token, when the connection is token-authenticated. */
  get token() { return this._token; }

  /**
   * Opens the socket. Resolves once it is open; rejects if the first attempt
   * fails (bad credentials, server down). After that, drops are reconnected
   * automatically until disconnect().
   * @returns {Promise<void>}
   */
  async connect() {
    if (this._state === STATES.open) return;
    const waiter = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this._state === STATES.connecting || this._state === STATES.reconnecting) return waiter;
    this._state = STATES.connecting;
    this._userClosed = false;
    try {
      if (this._getToken && (!this._token || this._tokenNearlyExpired(5000))) await this._fetchToken();
    } catch (err) {
      this._state = STATES.idle;
      this._settleConnect(err instanceof SynapseError ? err : new SynapseError('unauthorized', `getToken failed: ${err && err.message}`));
      return waiter;
    }
    this._ensureSocket().connect();
    return waiter;
  }

  _ensureSocket() {
    if (!this._socket) this._socket = this._makeSocket();
    return this._socket;
  }

  _makeSocket() {
    const socket = new Socket(this.url, {
      transport: this._transport,
      params: () => this._params(),
      timeout: this._timeoutMs,
      heartbeatIntervalMs: this._heartbeatIntervalMs,
      reconnectAfterMs: (tries) => this._reconnectAfter(tries),
      logger: this._logger || undefined,
    });
    socket.onOpen(() => this._onOpen());
    socket.onClose((ev) => this._onClose(ev));
    socket.onError((err) => this._onError(err));
    socket.onMessage((msg) => this._onMessage(msg));
    return socket;
  }

  _params() {
    const p = this._extraParams ? { ...(typeof this._extraParams === 'function' ? this._extraParams() : this._extraParams) } : {};
    if (this._apiKey) p.api_key = this._apiKey;
    else if (this._token) p.token = this._token;
    return p;
  }

  // The open connection is gone: fail what depended on it, tell listeners.
  _markDown(closeInfo) {
    if (this._state !== STATES.open) return;
    this._downSince = Date.now();
    this._state = this._userClosed ? STATES.closed : STATES.reconnecting;
    this._failPhxRequests('disconnected');
    if (this._resumeRuns && !this._userClosed) this._suspendRuns();
    else this._failRuns('disconnected', 'the connection dropped while the run was going');
    this._failPending('disconnected', 'the connection dropped before the reply', true);
    this._events.emit('close', closeInfo);
  }

  _reconnectAfter(tries) {
    this._attempts = tries;
    // Phoenix also reconnects without a close event reaching us: after a
    // heartbeat timeout it gives up on a connection whose close handshake
    // cannot complete. The close event, when there is one, comes right
    // after this call, so only act if none did.
    if (this._state === STATES.open) {
      queueMicrotask(() => this._markDown({ code: undefined, reason: 'heartbeat_timeout', wasClean: false }));
    }
    // A reconnect must carry a live token: fetch a new one now if needed.
    if (this._getToken && this._tokenNearlyExpired(5000)) this._refreshToken('reconnect');
    // A refusal that said when to come back (429 with Retry-After) is honoured.
    const retryAfterMs = this._lastError && this._lastError.retryAfterMs;
    const delayMs = Math.max(backoffDelay(tries, this._reconnect), Math.min(retryAfterMs || 0, this._reconnect.maxMs));
    this._events.emit('reconnecting', { attempt: tries, delayMs });
    return delayMs;
  }

  _settleConnect(err) {
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) (err ? w.reject(err) : w.resolve());
  }

  _onOpen() {
    const reconnected = this._state === STATES.reconnecting;
    this._state = STATES.open;
    this._attempts = 0;
    const downtimeMs = this._downSince != null ? Date.now() - this._downSince : 0;
    this._downSince = null;
    this._serverTokenExpMs = this._tokenExpMs;
    this._scheduleRefresh();
    this._settleConnect(null);
    this._events.emit('open');
    if (reconnected) this._events.emit('reconnect', { downtimeMs });
  }

  _onClose(ev) {
    const code = ev && typeof ev.code === 'number' ? ev.code : undefined;
    const reason = ev && ev.reason ? String(ev.reason) : '';
    this._failPhxRequests('disconnected');
    if (this._state === STATES.open) {
      this._markDown({ code, reason, wasClean: !!(ev && ev.wasClean) });
      if (code === 4001 && (this._getToken || this._token)) this._refreshToken('expired');
      if (code === 4003) {
        // Revoked credentials never come back: reconnecting would only be refused.
        this._events.emit('error', new SynapseError('credentials_revoked', reason || 'the credentials were revoked'));
        this.disconnect();
      }
    } else if (this._state === STATES.connecting) {
      // The first attempt of connect() failed: report it and stop (phoenix
      // does not retry a connection that never opened either).
      this._state = STATES.idle;
      const err = this._lastError || new SynapseError('connect_failed', `could not connect to ${this.url}${code ? ` (close ${code})` : ''}`);
      this._lastError = null;
      if (this._socket) this._socket.disconnect();
      this._cortex = null;
      this._failRuns('disconnected', err.message);
      this._settleConnect(err);
    }
  }

  _onError(err) {
    const message = (err && (err.message || (err.error && err.error.message))) || 'transport error';
    const e = new SynapseError('transport_error', message, { cause: err });
    const refusal = this._refusal;
    this._refusal = null;
    if (refusal && (this._state === STATES.connecting || this._state === STATES.reconnecting)) {
      const r = refusalError(refusal);
      this._lastError = r;
      if (this._state === STATES.reconnecting && isFatalRefusal(refusal.status, !!this._getToken)) {
        // Bad credentials or origin never come back by retrying: stop and say why.
        this._events.emit('error', r);
        this.disconnect();
        return;
      }
      if (this._state === STATES.reconnecting && refusal.status === 401 && this._getToken) this._refreshToken('unauthorized');
      this._events.emit('error', r);
      return;
    }
    if (this._state === STATES.connecting) {
      // ws reports a refused upgrade as "Unexpected server response: 401";
      // browsers say nothing about the status.
      const status = /server response: (401|403|429)\b/.exec(message);
      this._lastError = status
        ? new SynapseError(status[1] === '401' ? 'unauthorized' : status[1] === '403' ? 'forbidden_origin' : 'too_many_connections', message)
        : new SynapseError('connect_failed', message);
    }
    // A failed upgrade with 401 on reconnect: the token may have expired meanwhile.
    if (/server response: 401\b/.test(message) && this._getToken) this._refreshToken('unauthorized');
    this._events.emit('error', e);
  }

  _onMessage(msg) {
    if (!msg || msg.topic !== 'phoenix') return;
    if (msg.event === 'phx_reply' && msg.ref && this._phxRequests.has(msg.ref)) {
      const req = this._phxRequests.get(msg.ref);
      this._phxRequests.delete(msg.ref);
      clearTimeout(req.timer);
      const p = msg.payload || {};
      if (p.status === 'ok') req.resolve(p.response || {});
      else {
        const r = p.response || {};
        req.reject(new SynapseError(r.reason || 'error', r.message, r));
      }
    } else if (msg.event === 'token_expiring') {
      const inMs = msg.payload && typeof msg.payload.expires_in_ms === 'number' ? msg.payload.expires_in_ms : 0;
      this._events.emit('token_expiring', { expiresInMs: inMs });
      // Skip when the server already holds a token that outlives this warning.
      if (this._serverTokenExpMs != null && this._serverTokenExpMs > Date.now() + inMs + 1000) return;
      this._refreshToken('token_expiring');
    } else if (msg.event === 'phx_error') {
      const p = msg.payload || {};
      this._events.emit('error', new SynapseError(p.reason || 'phx_error', p.message, p));
    }
  }

  /**
   * Registers a listener: 'open', 'close' ({code, reason}), 'error' (SynapseError),
   * 'reconnect' ({downtimeMs}) after a dropped connection is back,
   * 'reconnecting' ({attempt, delayMs}), 'token_refreshed' ({expiresAt}),
   * 'token_expiring' ({expiresInMs}), 'gap' ({topic, lostFrom, lostTo, epochChanged}).
   * @param {string} event
   * @param {Function} fn
   * @returns {() => void} removes the listener
   */
  on(event, fn) { return this._events.on(event, fn); }

  /** @param {string} event @param {Function} [fn] */
  off(event, fn) { this._events.off(event, fn); }

  /**
   * Closes the socket and stops reconnecting. Running queries and tools end
   * with error `disconnected`. Subscriptions are kept: a later connect()
   * rejoins them (with recovery).
   * @returns {Promise<void>}
   */
  disconnect() {
    this._userClosed = true;
    clearTimeout(this._refreshTimer);
    this._failRuns('disconnected', 'disconnect() was called');
    this._failPhxRequests('disconnected');
    this._failPending('disconnected', 'disconnect() was called');
    const wasOpen = this._state === STATES.open;
    this._state = STATES.closed;
    this._settleConnect(new SynapseError('disconnected', 'disconnect() was called'));
    const socket = this._socket;
    return new Promise((resolve) => {
      if (!socket) return resolve();
      socket.disconnect(() => {
        if (wasOpen) this._events.emit('close', { code: 1000, reason: 'client disconnect', wasClean: true });
        this._userClosed = false;
        resolve();
      }, 1000, 'client disconnect');
    });
  }

  // --- tokens ---------------------------------------------------------------

  _setToken(token) {
    if (typeof token !== 'string' || !token) throw new TypeError('a token must be a non-empty string');
    this._token = token;
    const c = jwtClaims(token);
    this._tokenExpMs = c && typeof c.exp === 'number' ? c.exp * 1000 : null;
    this._tokenIssuedMs = c && typeof c.iat === 'number' ? c.iat * 1000 : Date.now();
  }

  _tokenNearlyExpired(withinMs) {
    return this._tokenExpMs != null && this._tokenExpMs - Date.now() <= withinMs;
  }

  async _fetchToken() {
    const t = await this._getToken();
    const token = typeof t === 'string' ? t : t && t.token;
    if (!token) throw new SynapseError('unauthorized', 'getToken returned no token');
    this._setToken(token);
    return token;
  }

  // The SDK's own refresh timer, a backstop for the server's token_expiring push
  // (it also keeps a token fresh for the next reconnect while the link is down).
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    if (!this._token || this._tokenExpMs == null || !this._refreshMarginMs) return;
    if (!this._getToken && !this._selfRefresh) return;
    const ttl = Math.max(0, this._tokenExpMs - (this._tokenIssuedMs || Date.now()));
    const lead = Math.min(this._refreshMarginMs, ttl / 2);
    const at = this._tokenExpMs - lead;
    // At least 1 s apart, so a getToken that keeps returning a stale token cannot spin.
    this._refreshTimer = setTimeout(() => this._refreshToken('timer'), Math.max(1000, at - Date.now()));
    // Never keep a Node process alive just to refresh a token.
    unref(this._refreshTimer);
  }

  /**
   * Refreshes the token now: a new one from getToken sent as `refresh {token}`,
   * or, with only a token, the server's sliding `refresh {}`.
   * @returns {Promise<string | null>} the new token (null for API-key connections)
   */
  refreshToken() { return this._refreshToken('manual', true); }

  _refreshToken(why, rethrow = false) {
    if (this._apiKey) return Promise.resolve(null);
    if (!this._refreshing) {
      this._refreshing = (async () => {
        try {
          let expiresAt;
          if (this._getToken) {
            const token = await this._fetchToken();
            if (this._state === STATES.open) {
              const r = await this._phxRequest('refresh', { token });
              expiresAt = r.expires_at;
            }
          } else if (this._selfRefresh && this._state === STATES.open) {
            const r = await this._phxRequest('refresh', {});
            if (!r.token) throw new SynapseError('refresh_failed', 'the server returned no token');
            this._setToken(r.token);
            expiresAt = r.expires_at;
          } else {
            return this._token;
          }
          if (typeof expiresAt === 'number' && this._state === STATES.open) this._serverTokenExpMs = expiresAt * 1000;
          this._scheduleRefresh();
          this._events.emit('token_refreshed', { expiresAt: expiresAt ?? (this._tokenExpMs ? this._tokenExpMs / 1000 : undefined), why });
          return this._token;
        } catch (err) {
          const e = err instanceof SynapseError ? err : new SynapseError('refresh_failed', err && err.message);
          this._events.emit('error', e);
          // Try again shortly while the token still lives.
          if (!this._tokenNearlyExpired(0) && !this._userClosed) {
            clearTimeout(this._refreshTimer);
            this._refreshTimer = setTimeout(() => this._refreshToken('retry'), 1000);
            unref(this._refreshTimer);
          }
          throw e;
        } finally {
          this._refreshing = null;
        }
      })();
    }
    const p = this._refreshing;
    if (!rethrow) p.catch(() => {});
    return p;
  }

  // A request on the `phoenix` topic (no join), answered by ref.
  _phxRequest(event, payload) {
    return new Promise((resolve, reject) => {
      if (!this._socket || this._state !== STATES.open) {
        reject(new SynapseError('disconnected', 'not connected'));
        return;
      }
      const ref = this._socket.makeRef();
      const timer = setTimeout(() => {
        this._phxRequests.delete(ref);
        reject(new SynapseError('timeout', `no reply to ${event} within ${this._timeoutMs} ms`));
      }, this._timeoutMs);
      this._phxRequests.set(ref, { resolve, reject, timer });
      this._socket.push({ topic: 'phoenix', event, payload, ref, join_ref: null });
    });
  }

  _failPhxRequests(reason) {
    const reqs = [...this._phxRequests.values()];
    this._phxRequests.clear();
    for (const r of reqs) {
      clearTimeout(r.timer);
      r.reject(new SynapseError(reason, 'the connection closed before the reply'));
    }
  }

  // --- the cortex channel ---------------------------------------------------

  /**
   * The agent id of this connection's credential: the `agentId` option, else
   * the token's `sub`, else (API key) the `sub` of a token the server mints for
   * the key via POST /api/token, else the agent named in the server's refusal
   * of a cortex join. Confirmed by the join of `cortex:<agent_id>`.
   * @returns {Promise<string>}
   */
  async whoami() {
    if (this._agentId) return this._agentId;
    const ch = await this._ensureCortex();
    return ch.agentId;
  }

  async _guessAgent() {
    if (this._agentId) return this._agentId;
    if (this._token) {
      const c = jwtClaims(this._token);
      if (c && typeof c.sub === 'string' && c.sub) return c.sub;
    }
    if (this._apiKey && this._fetch && this._httpUrl) {
      try {
        const r = await this._fetch(`${this._httpUrl}/api/token`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${this._apiKey}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ ttl_s: 60 }),
        });
        if (r.ok) {
          const body = await r.json();
          const c = jwtClaims(body.token);
          if (c && typeof c.sub === 'string' && c.sub) return c.sub;
        }
      } catch { /* fall through: e.g. a browser without CORS for /api/token */ }
    }
    // Last resort: a join of a cortex topic that is not ours is refused with
    // a message naming our agent.
    const probe = this._socket.channel(`cortex:_synapse_probe_${randomId()}`, {});
    const resp = await new Promise((resolve) => {
      probe.join(this._timeoutMs)
        .receive('ok', () => resolve({ ok: true }))
        .receive('error', (r) => resolve({ ok: false, r }))
        .receive('timeout', () => resolve({ ok: false, r: { reason: 'timeout' } }));
    });
    probe.leave();
    const m = !resp.ok && resp.r && typeof resp.r.message === 'string' && /agent is (\S+)$/.exec(resp.r.message);
    if (m) return m[1];
    throw new SynapseError('unknown_agent', 'could not learn the agent id; pass the agentId option');
  }

  _ensureCortex() {
    if (this._cortex) return this._cortex.ready;
    if (!this._socket || (this._state !== STATES.open && this._state !== STATES.connecting)) {
      return Promise.reject(new SynapseError('disconnected', 'not connected; call connect() first'));
    }
    const entry = { channel: null, agentId: null, ready: null };
    this._cortex = entry;
    entry.ready = (async () => {
      const agent = await this._guessAgent();
      if (this._cortex !== entry) throw new SynapseError('disconnected', 'disconnected while joining');
      const ch = this._socket.channel(`cortex:${agent}`, {});
      entry.channel = ch;
      for (const ev of ['thought', 'token', 'progress', 'snapshot', 'result', 'error', 'interrupted']) {
        ch.on(ev, (payload) => this._onRunPush(ev, payload));
      }
      ch.onError((why) => {
        // The transport dropped (the socket's close handler suspends or
        // fails the runs) or the server crashed the channel. Neither ends a
        // run on the server (it only stops being followed), so with
        // resumeRuns the rejoin that phoenix schedules re-attaches them.
        const transport = why && why.source === 'transport';
        if (this._resumeRuns) {
          if (!transport) this._suspendRuns();
          return;
        }
        this._failRuns(transport ? 'disconnected' : 'internal',
          transport ? 'the connection dropped while the run was going' : 'the cortex channel crashed on the server');
      });
      let joinedBefore = false;
      await new Promise((resolve, reject) => {
        ch.join(this._timeoutMs)
          .receive('ok', (resp) => {
            entry.agentId = (resp && resp.agent_id) || agent;
            entry.session = resp && resp.session;
            this._agentId = entry.agentId;
            // phoenix runs this hook on every successful rejoin too (after
            // it flushed its buffered pushes): the moment to re-attach.
            if (joinedBefore) this._resumeAll(entry);
            joinedBefore = true;
            resolve();
          })
          .receive('error', (resp) => {
            ch.leave();
            reject(new SynapseError((resp && resp.reason) || 'join_failed', resp && resp.message, resp));
          })
          .receive('timeout', () => reject(new SynapseError('timeout', 'the cortex join was not answered')));
      });
      return entry;
    })();
    entry.ready.catch(() => { if (this._cortex === entry) this._cortex = null; });
    return entry.ready;
  }

  _newRef(kind) {
    this._refCounter += 1;
    return `${kind}-${this._refPrefix}-${this._refCounter}`;
  }

  /**
   * Runs a query on the agent's cortex. Thoughts stream to onThought in seq
   * order, then exactly one of onResult / onError (or interruption).
   * @param {string} q
   * @param {import('../index.js').QueryOptions} [opts]
   * @returns {RunHandle}
   */
  query(q, opts = {}) {
    const ref = opts.ref || this._newRef('q');
    const payload = { q, ref };
    if (opts.timeoutMs != null) payload.timeout_ms = opts.timeoutMs;
    if (opts.limit != null) payload.limit = opts.limit;
    return this._startRun('query', payload, ref, opts);
  }

  /**
   * Runs a tool on the agent's cortex; progress updates go to onProgress.
   * @param {string} name
   * @param {Record<string, any>} [args]
   * @param {import('../index.js').ToolOptions} [opts]
   * @returns {RunHandle}
   */
  tool(name, args = {}, opts = {}) {
    const ref = opts.ref || this._newRef('t');
    const payload = { tool: name, args: args || {}, ref };
    if (opts.timeoutMs != null) payload.timeout_ms = opts.timeoutMs;
    return this._startRun('tool', payload, ref, opts);
  }

  // A run as this client tracks it. `key` is its entry in _runs (its ref
  // for runs started here); `runId` and `lastSeq` are what a re-attach needs.
  _newRun(key, ref, event, opts) {
    let resolve, reject;
    const done = new Promise((res, rej) => { resolve = res; reject = rej; });
    // Marked handled: an unawaited handle must not crash Node on error.
    done.catch(() => {});
    return {
      key, ref, event, opts, ended: false, acked: false, runId: null, lastSeq: 0,
      // What was delivered so far, so a snapshot after a truncated log can be
      // turned into only the part the application has not seen.
      text: '', thoughts: 0,
      suspended: false, resumeGen: 0,
      resolve, reject, done, timer: null, sent: null, push: null,
    };
  }

  _handle(run) {
    const self = this;
    return {
      ref: run.ref,
      get runId() { return run.runId; },
      get lastSeq() { return run.lastSeq; },
      done: run.done,
      interrupt: (reason) => self._interruptRun(run, reason).then(() => true, () => false),
    };
  }

  _startRun(event, payload, ref, opts) {
    const run = this._newRun(ref, ref, event, opts);
    if (this._runs.has(ref)) {
      run.ended = true;
      const err = new SynapseError('duplicate_ref', `a run with ref ${ref} is running`);
      queueMicrotask(() => this._callback(opts.onError, err));
      run.reject(err);
      return { ref, runId: null, lastSeq: 0, done: run.done, interrupt: () => Promise.resolve(false) };
    }
    this._runs.set(ref, run);
    if (opts.timeoutMs != null) {
      // A backstop for the server's own timeout, in case its error never arrives.
      run.timer = setTimeout(() => {
        this._endRun(run, 'error', { ref, reason: 'timeout', message: `no terminal event within ${opts.timeoutMs} ms` });
        this._abandon(run);
      }, opts.timeoutMs + (opts.graceMs ?? 5000));
    }
    run.sent = (async () => {
      if (this._state !== STATES.open && this._state !== STATES.connecting) {
        throw new SynapseError('disconnected', 'not connected');
      }
      const entry = await this._ensureCortex();
      if (run.ended) return false;
      const ch = entry.channel;
      // Right after a reconnect the channel may still be rejoining.
      await this._whenJoined(ch);
      if (run.ended) return false;
      run.push = ch.push(event, payload, this._timeoutMs)
        .receive('ok', (resp) => {
          run.acked = true;
          if (resp && typeof resp.run_id === 'string') this._setRunId(run, resp.run_id);
        })
        .receive('error', (resp) => this._endRun(run, 'error', { ref, reason: 'error', ...(resp || {}) }))
        .receive('timeout', () => {
          this._endRun(run, 'error', { ref, reason: 'timeout', message: `no reply to ${event} within ${this._timeoutMs} ms` });
          this._abandon(run);
        });
      return true;
    })();
    run.sent.catch((err) => this._endRun(run, 'error', {
      ref, reason: (err && err.reason) || 'internal', message: err && err.message,
    }));
    return this._handle(run);
  }

  _setRunId(run, runId) {
    run.runId = runId;
    if (!run.ended) this._byRunId.set(runId, run);
  }

  /**
   * Follows a run started elsewhere (another device, or this page before a
   * reload): its events from now on, through the same callbacks as query()
   * and tool(). Without `afterSeq` the server first sends a compacted
   * snapshot (every token so far as one text, the thoughts, the last
   * progress); it reaches `onSnapshot` when given, otherwise it is played
   * as ordinary events: each thought to onThought, the text as one onToken
   * call, the progress to onProgress, all with `snapshot: true` in the push.
   * With `afterSeq`, exactly the events after it. Like runs started here,
   * an attached run is re-attached by itself after a reconnect.
   * `done` rejects with `unknown_run` (no such run, or it expired) or
   * `forbidden` (another agent's or tenant's).
   * @param {string} runId
   * @param {import('../index.js').AttachOptions} [opts]
   * @returns {RunHandle}
   */
  attach(runId, opts = {}) {
    if (typeof runId !== 'string' || !runId) throw new TypeError('attach: runId must be a non-empty string');
    const existing = this._byRunId.get(runId);
    if (existing && !existing.ended) return this._handle(existing);
    const key = `attach:${runId}`;
    const run = this._newRun(key, null, 'attach', opts);
    run.runId = runId;
    if (typeof opts.afterSeq === 'number' && opts.afterSeq >= 0) run.lastSeq = opts.afterSeq;
    this._runs.set(key, run);
    this._byRunId.set(runId, run);
    run.sent = (async () => {
      if (this._state !== STATES.open && this._state !== STATES.connecting) {
        throw new SynapseError('disconnected', 'not connected');
      }
      const entry = await this._ensureCortex();
      if (run.ended) return false;
      await this._whenJoined(entry.channel);
      if (run.ended) return false;
      const payload = { run_id: runId };
      if (typeof opts.afterSeq === 'number' && opts.afterSeq >= 0) payload.after_seq = opts.afterSeq;
      const r = await this._channelRequest(entry.channel, 'attach', payload);
      run.acked = true;
      if (typeof r.ref === 'string') run.ref = r.ref;
      return true;
    })();
    run.sent.catch((err) => {
      // The link dropped with the attach on its way: the rejoin sends it again.
      if (err && err.reason === 'disconnected' && run.suspended && !this._userClosed) return;
      this._endRun(run, 'error', {
        ref: run.ref, run_id: runId, reason: (err && err.reason) || 'internal', message: err && err.message,
      });
    });
    return this._handle(run);
  }

  /**
   * This agent's active and recent runs on the server the connection is on
   * (`runs {}`), newest first: `[{run_id, ref, kind, tool?, status,
   * started_at, ended_at?, last_seq, attached}]`.
   * @returns {Promise<Array<Record<string, any>>>}
   */
  async runs() {
    const entry = await this._ensureCortex();
    const r = await this._channelRequest(entry.channel, 'runs', {});
    return r.runs || [];
  }

  // The SDK gave up on a run the server may still be running: stop it there.
  _abandon(run) {
    const entry = this._cortex;
    if (!entry || !entry.channel || this._state !== STATES.open) return;
    const payload = run.runId ? { run_id: run.runId, reason: 'client_timeout' } : { ref: run.ref, reason: 'client_timeout' };
    this._channelRequest(entry.channel, 'interrupt', payload).catch(() => {});
  }

  _callback(fn, ...args) {
    if (typeof fn !== 'function') return;
    try {
      fn(...args);
    } catch (err) {
      queueMicrotask(() => { throw err; });
    }
  }

  // Every push of a run passes here: from the run's start, from an attach's
  // backlog and from live fan-out alike. The seq check delivers each event
  // once and in order, whichever connection (before or after a reconnect)
  // it came on.
  _onRunPush(event, payload) {
    if (!payload) return;
    let run = typeof payload.run_id === 'string' ? this._byRunId.get(payload.run_id) : undefined;
    if (!run && typeof payload.ref === 'string') {
      // A run started here whose reply (with its run_id) has not been read yet.
      const r = this._runs.get(payload.ref);
      if (r && !r.runId) {
        run = r;
        if (typeof payload.run_id === 'string') this._setRunId(r, payload.run_id);
      }
    }
    if (!run || run.ended) return; // nothing for a run follows its terminal event
    if (event === 'snapshot') {
      this._applySnapshot(run, payload);
      return;
    }
    if (typeof payload.seq === 'number') {
      if (payload.seq <= run.lastSeq) return; // already delivered
      run.lastSeq = payload.seq;
    }
    if (TERMINAL.has(event)) {
      this._endRun(run, event, payload);
    } else if (event === 'thought') {
      run.thoughts += 1;
      this._callback(run.opts.onThought, payload.thought, payload);
    } else if (event === 'token') {
      const delta = typeof payload.delta === 'string' ? payload.delta : '';
      run.text += delta;
      this._callback(run.opts.onToken, delta, payload);
    } else if (event === 'progress') {
      this._callback(run.opts.onProgress, payload);
    }
  }

  // A compacted snapshot (a late attach, or a resume past what the run's log
  // still held). With onSnapshot the application gets it as it is;
  // otherwise only what it has not seen yet is played as ordinary events.
  _applySnapshot(run, snap) {
    const seq = typeof snap.seq === 'number' ? snap.seq : run.lastSeq;
    if (seq < run.lastSeq) return;
    if (typeof snap.ref === 'string' && !run.ref) run.ref = snap.ref;
    const text = typeof snap.text === 'string' ? snap.text : '';
    const thoughts = Array.isArray(snap.thoughts) ? snap.thoughts : [];
    const o = run.opts;
    if (typeof o.onSnapshot === 'function') {
      this._callback(o.onSnapshot, { ...snap, seenSeq: run.lastSeq, seenText: run.text });
    } else {
      const base = { ref: snap.ref ?? run.ref, run_id: snap.run_id ?? run.runId, seq, snapshot: true };
      for (const t of thoughts.slice(run.thoughts)) this._callback(o.onThought, t, { ...base, thought: t });
      // The text so far begins with what was already delivered unless the
      // server had to cut the text itself (text_truncated): then all of it.
      const rest = text.startsWith(run.text) ? text.slice(run.text.length) : text;
      if (rest) this._callback(o.onToken, rest, { ...base, delta: rest, replace: !text.startsWith(run.text) });
      if (snap.progress && seq > run.lastSeq) this._callback(o.onProgress, { ...snap.progress, ...base });
    }
    run.text = text;
    run.thoughts = Math.max(run.thoughts, thoughts.length);
    run.lastSeq = seq;
  }

  _endRun(run, kind, payload) {
    if (!run || run.ended) return;
    run.ended = true;
    if (this._runs.get(run.key) === run) this._runs.delete(run.key);
    if (run.runId && this._byRunId.get(run.runId) === run) this._byRunId.delete(run.runId);
    clearTimeout(run.timer);
    // A reply that will never come must not keep its timer (and a Node process) alive.
    if (run.push && !run.acked) run.push.cancelTimeout();
    const o = run.opts;
    const ref = run.ref;
    const runId = run.runId ?? undefined;
    if (kind === 'result') {
      this._callback(o.onResult, payload.data, payload);
      run.resolve({ status: 'success', ref, runId, data: payload.data, latency_ms: payload.latency_ms });
    } else if (kind === 'interrupted') {
      this._callback(o.onInterrupted, payload.reason, payload);
      run.resolve({ status: 'interrupted', ref, runId, reason: payload.reason });
    } else {
      const err = new SynapseError(payload.reason || 'error', payload.message, payload);
      err.ref = ref;
      err.runId = runId;
      this._callback(o.onError, err);
      run.reject(err);
    }
  }

  _failRuns(reason, message) {
    for (const run of [...this._runs.values()]) this._endRun(run, 'error', { ref: run.ref, reason, message });
  }

  // The link (or the channel) is gone. The server keeps the runs going
  // (cortex.detach_grace_s), so nothing ends here: each run waits for the
  // rejoin to re-attach it. A run whose start was sent but not answered has
  // no run_id yet; its reply will never come, so its timer is stopped and
  // the rejoin looks it up by ref.
  _suspendRuns() {
    for (const run of this._runs.values()) {
      if (run.ended) continue;
      run.suspended = true;
      if (run.push && !run.acked) run.push.cancelTimeout();
    }
  }

  // After a rejoin of the cortex channel: re-attach every suspended run.
  _resumeAll(entry) {
    for (const run of [...this._runs.values()]) {
      if (!run.ended && run.suspended) this._reattach(entry, run);
    }
  }

  // Contract: re-attaches one run on the rejoined channel from run.lastSeq,
  // so the events it missed come first, then the live ones, and the seq
  // check in _onRunPush drops any the old connection had delivered already.
  // A run never acknowledged is found by its ref in `runs {}` (newest
  // first); not found means its start never reached the server. The run
  // ends `disconnected` only when it cannot be re-attached: the server does
  // not know it (`unknown_run`: it restarted, or retention passed), refuses
  // it, or never started it. If the link drops again meanwhile, the next
  // rejoin tries again (resumeGen makes an older attempt's answer moot).
  async _reattach(entry, run) {
    const gen = ++run.resumeGen;
    const ch = entry.channel;
    const giveUp = (cause, message) => this._endRun(run, 'error', {
      ref: run.ref, run_id: run.runId ?? undefined, reason: 'disconnected', cause, message,
    });
    try {
      if (!run.runId) {
        if (!run.push || !run.push.sent) {
          // Never sent: phoenix sent it with the rejoin (its reply will come).
          run.suspended = false;
          return;
        }
        const list = await this._channelRequest(ch, 'runs', {});
        if (run.ended || gen !== run.resumeGen) return;
        const found = (list.runs || []).find((r) => r.ref === run.ref);
        if (!found) {
          giveUp('not_started', 'the connection dropped before the run reached the server');
          return;
        }
        run.acked = true;
        this._setRunId(run, found.run_id);
      }
      // A public attach whose first answer never came keeps its own form
      // (a snapshot first when it asked for none).
      const fresh = run.event === 'attach' && !run.acked && run.opts.afterSeq == null;
      const afterSeq = fresh ? null : run.lastSeq;
      const payload = { run_id: run.runId };
      if (afterSeq != null) payload.after_seq = afterSeq;
      const r = await this._channelRequest(ch, 'attach', payload);
      if (run.ended || gen !== run.resumeGen) return;
      run.suspended = false;
      run.acked = true;
      if (typeof r.ref === 'string' && !run.ref) run.ref = r.ref;
      this._events.emit('run_resumed', {
        ref: run.ref, runId: run.runId, afterSeq, lastSeq: r.last_seq, status: r.status, truncated: !!r.truncated,
      });
    } catch (err) {
      if (run.ended || gen !== run.resumeGen) return;
      const reason = err && err.reason;
      if (reason === 'disconnected') return; // dropped again: the next rejoin retries
      giveUp(reason || 'error', `the run could not be re-attached after the reconnect (${reason}: ${err && err.message})`);
    }
  }

  /**
   * Interrupts a running query or tool (by its ref, or the run_id of a run
   * this client follows); its handle then ends `interrupted`. Rejects with
   * SynapseError `not_found` when nothing runs under that ref.
   * @param {string} ref
   * @param {string} [reason]
   * @returns {Promise<{ref: string, run_id?: string}>}
   */
  async interrupt(ref, reason) {
    const run = this._runs.get(ref) || this._byRunId.get(ref);
    if (run) return this._interruptRun(run, reason);
    const entry = await this._ensureCortex();
    const payload = { ref };
    if (reason != null) payload.reason = reason;
    return this._channelRequest(entry.channel, 'interrupt', payload);
  }

  async _interruptRun(run, reason) {
    // A run whose query push is still on its way: interrupt right after it.
    if (run.sent) await run.sent.catch(() => false);
    const entry = await this._ensureCortex();
    // By run_id when known: it names the run on any connection, also one
    // that has not re-attached yet after a reconnect.
    const payload = run.runId ? { run_id: run.runId } : { ref: run.ref };
    if (reason != null) payload.reason = reason;
    return this._channelRequest(entry.channel, 'interrupt', payload);
  }

  /**
   * The tools the server offers: [{name, description, input_schema, provider, available}].
   * @returns {Promise<Array<{name: string, description: string, input_schema: object, provider: string, available: boolean}>>}
   */
  async tools() {
    const entry = await this._ensureCortex();
    const r = await this._channelRequest(entry.channel, 'tools', {});
    return r.tools || [];
  }

  /**
   * Round trip to the cortex channel; resolves with the server's unix ms.
   * @returns {Promise<number>}
   */
  async ping() {
    const entry = await this._ensureCortex();
    const r = await this._channelRequest(entry.channel, 'ping', {});
    return r.pong;
  }

  // Resolves once `ch` is joined on an open socket; a run must not be
  // buffered by phoenix across a reconnect, since it would start unobserved.
  async _whenJoined(ch) {
    const deadline = Date.now() + this._timeoutMs;
    for (;;) {
      if (this._state !== STATES.open && this._state !== STATES.connecting) {
        throw new SynapseError('disconnected', 'not connected');
      }
      if (this._state === STATES.open && ch.state === 'joined') return;
      if (ch.state === 'closed' || ch.state === 'leaving') throw new SynapseError('disconnected', 'the channel was closed');
      if (Date.now() > deadline) throw new SynapseError('timeout', `${ch.topic} was not joined within ${this._timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  // A push answered by a reply. While the link is down phoenix buffers it
  // until the channel is joined again (within the push timeout).
  _channelRequest(ch, event, payload) {
    return new Promise((resolve, reject) => {
      const pending = { push: null, reject };
      const settle = (fn, v) => { this._pending.delete(pending); fn(v); };
      pending.push = ch.push(event, payload, this._timeoutMs)
        .receive('ok', (r) => settle(resolve, r || {}))
        .receive('error', (r) => settle(reject, new SynapseError((r && r.reason) || 'error', r && r.message, r)))
        .receive('timeout', () => settle(reject, new SynapseError('timeout', `no reply to ${event} within ${this._timeoutMs} ms`)));
      this._pending.add(pending);
    });
  }

  _failPending(reason, message, onlySent = false) {
    // Pushes phoenix still buffers (not sent yet) go out after the rejoin;
    // those sent over a dead connection will never be answered.
    const all = [...this._pending].filter((p) => !onlySent || p.push.sent);
    for (const p of all) {
      this._pending.delete(p);
      p.push.cancelTimeout();
      p.reject(new SynapseError(reason, message));
    }
  }

  // --- pub/sub ---------------------------------------------------------------

  _openTopic(topic, { meta = null, presence = false } = {}) {
    const st = {
      topic,
      meta,
      presenceEnabled: !!presence,
      listeners: new Set(),
      presenceListeners: new Set(),
      lastOffset: null,
      epoch: null,
      askedRecover: false,
      channel: null,
      presence: null,
      ready: null,
      closed: false,
    };
    const ch = this._socket.channel(topic, () => {
      const p = {};
      if (st.meta) p.meta = st.meta;
      if (st.presenceEnabled) p.presence = true;
      st.askedRecover = st.epoch != null && st.lastOffset != null;
      if (st.askedRecover) p.recover = { offset: st.lastOffset, epoch: st.epoch };
      st.recoverFrom = st.askedRecover ? st.lastOffset : null;
      return p;
    });
    st.channel = ch;
    // Every pub/sub push passes here, whatever its event name.
    const original = ch.onMessage.bind(ch);
    ch.onMessage = (event, payload, ref, joinRef) => {
      const out = original(event, payload, ref, joinRef);
      // Numbered messages, and the unnumbered ones a cluster node delivers
      // locally while it has no Redis (`_meta.local`, docs/protocol.md §9).
      if (isUserEvent(event) && payload && payload._meta &&
          (typeof payload._meta.offset === 'number' || payload._meta.local === true)) {
        this._deliver(st, event, payload);
      } else if (event === 'phx_gap' && payload) {
        this._onGap(st, payload);
      }
      return out;
    };
    if (st.presenceEnabled) {
      st.presence = new Presence(ch);
      st.presence.onSync(() => {
        if (st.presenceListeners.size === 0) return;
        const list = this._presenceList(st);
        for (const fn of [...st.presenceListeners]) this._callback(fn, list);
      });
    }
    st.ready = new Promise((resolve, reject) => {
      ch.join(this._timeoutMs)
        .receive('ok', (resp) => {
          this._onTopicJoined(st, resp || {});
          resolve(resp || {});
        })
        .receive('error', (resp) => {
          const err = new SynapseError((resp && resp.reason) || 'join_failed', resp && resp.message, resp);
          // Refusals that a retry cannot fix end the subscription; others
          // (rate_limited, ...) are retried by phoenix's rejoin timer.
          if (['forbidden', 'invalid_topic', 'invalid_payload', 'too_many_topics'].includes(err.reason)) {
            this._closeTopic(st);
            reject(err);
          }
          this._events.emit('error', err);
        });
    });
    st.ready.catch(() => {});
    this._topics.set(topic, st);
    return st;
  }

  _onTopicJoined(st, resp) {
    const latest = typeof resp.offset === 'number' ? resp.offset : null;
    if (st.askedRecover && resp.recovered === true && resp.epoch === st.epoch) {
      // The backlog follows the reply: keep our offset so none of it is dropped.
      this._events.emit('recovered', { topic: st.topic, from: st.recoverFrom, to: latest });
      return;
    }
    if (st.askedRecover) {
      this._events.emit('gap', {
        topic: st.topic, lostFrom: st.lastOffset, lostTo: latest, epochChanged: resp.epoch !== st.epoch,
      });
    }
    st.epoch = resp.epoch ?? null;
    st.lastOffset = latest;
  }

  // A cluster node could not deliver offsets `from`..`to` of `epoch`
  // (docs/protocol.md §9, `phx_gap`); `to: null`: the epoch ended there and
  // the next message starts a new one. Reported like a failed recovery, and
  // the recovery position moves past the gap (a rejoin cannot fill it).
  _onGap(st, p) {
    if (st.closed || p.epoch !== st.epoch || typeof p.from !== 'number') return;
    const to = typeof p.to === 'number' ? p.to : null;
    this._events.emit('gap', { topic: st.topic, lostFrom: p.from - 1, lostTo: to, epochChanged: to === null });
    if (to !== null && (st.lastOffset == null || st.lastOffset < to)) st.lastOffset = to;
  }

  _deliver(st, event, payload) {
    if (st.closed) return;
    const m = payload._meta;
    if (typeof m.offset === 'number') {
      if (m.epoch === st.epoch && st.lastOffset != null && m.offset <= st.lastOffset) return; // a duplicate
      st.epoch = m.epoch;
      st.lastOffset = m.offset;
    } // else local: not in the history, so it moves no recovery position

    if (st.listeners.size === 0) return;
    const { _meta, ...body } = payload;
    const msg = { topic: st.topic, event, payload: body, meta: _meta };
    for (const fn of [...st.listeners]) {
      if (st.listeners.has(fn)) this._callback(fn, msg); // not if unsubscribed meanwhile
    }
  }

  _closeTopic(st) {
    if (st.closed) return Promise.resolve();
    st.closed = true;
    st.listeners.clear();
    st.presenceListeners.clear();
    if (this._topics.get(st.topic) === st) this._topics.delete(st.topic);
    return new Promise((resolve) => {
      st.channel.leave(this._timeoutMs).receive('ok', () => resolve()).receive('timeout', () => resolve());
    });
  }

  _presenceList(st) {
    return st.presence.list((id, p) => ({ id, metas: p.metas }));
  }

  /**
   * Subscribes to a pub/sub topic. `callback` gets every message published
   * by others, exactly once and in offset order, across reconnects.
   * @param {string} topic
   * @param {(msg: Message) => void} callback
   * @param {import('../index.js').SubscribeOptions} [opts]
   * @returns {import('../index.js').Unsubscribe} call it to unsubscribe; `.ready` resolves with the join reply
   */
  subscribe(topic, callback, opts = {}) {
    if (typeof callback !== 'function') throw new TypeError('subscribe: callback must be a function');
    // Before connect() the join waits in phoenix's buffer and goes out on open.
    this._ensureSocket();
    const wantPresence = !!(opts.presence || opts.onPresence);
    let st = this._topics.get(topic);
    if (st && st.listeners.size === 0 && (wantPresence !== st.presenceEnabled || (opts.meta && JSON.stringify(opts.meta) !== JSON.stringify(st.meta)))) {
      // Joined only to publish: join again with this subscription's options.
      this._closeTopic(st);
      st = null;
    }
    if (st && wantPresence && !st.presenceEnabled) {
      throw new SynapseError('invalid_options', `${topic} is already subscribed without presence; subscribe with presence first`);
    }
    if (!st) st = this._openTopic(topic, { meta: opts.meta || null, presence: wantPresence });
    const listener = (msg) => callback(msg);
    st.listeners.add(listener);
    if (opts.onPresence) st.presenceListeners.add(opts.onPresence);
    let done = false;
    const unsubscribe = () => {
      if (done) return Promise.resolve();
      done = true;
      st.listeners.delete(listener);
      if (opts.onPresence) st.presenceListeners.delete(opts.onPresence);
      if (st.listeners.size === 0) return this._closeTopic(st);
      return Promise.resolve();
    };
    unsubscribe.ready = st.ready;
    return unsubscribe;
  }

  /**
   * Publishes to a topic (joining it first if this client is not subscribed).
   * Other members receive it; the publisher does not.
   * @param {string} topic
   * @param {string} event
   * @param {Record<string, any>} [payload]
   * @returns {Promise<number>} the message's offset; 0 when a cluster node
   *   without Redis delivered it to its own members only (docs/protocol.md §9)
   */
  async publish(topic, event, payload = {}) {
    this._ensureSocket();
    let st = this._topics.get(topic);
    if (!st) st = this._openTopic(topic);
    await st.ready;
    const r = await this._channelRequest(st.channel, event, payload || {});
    return r.offset;
  }

  /**
   * The topic's current presence, from phoenix's Presence helper: one entry
   * per agent, one meta per connection. Needs a subscription with `presence: true`.
   * @param {string} topic
   * @returns {Array<{id: string, metas: Array<Record<string, any>>}>}
   */
  presence(topic) {
    const st = this._topics.get(topic);
    if (!st || !st.presence) throw new SynapseError('not_subscribed', `subscribe to ${topic} with {presence: true} first`);
    return this._presenceList(st);
  }

  /**
   * The last offset and epoch delivered (or learnt from the join) on a topic.
   * @param {string} topic
   * @returns {{offset: number | null, epoch: string | null} | null}
   */
  position(topic) {
    const st = this._topics.get(topic);
    return st ? { offset: st.lastOffset, epoch: st.epoch } : null;
  }
}

export default MimoSynapse;
