// Type declarations for @mimo/synapse (hand-written; the source is plain ESM
// JavaScript with JSDoc).

/** A WebSocket constructor: the browser's, Node 22+'s global, or `ws`'s default export. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => any;

export interface SynapseOptions {
  /** An API key (`syn_...`), sent as the `api_key` query parameter. */
  apiKey?: string;
  /** A JWT from POST /api/token, sent as the `token` query parameter. */
  token?: string;
  /**
   * Returns a fresh JWT (or `{token}`); called before the first connect when
   * no `token` is given, on the server's `token_expiring` push, before the
   * token expires, and before a reconnect with an expired token.
   */
  getToken?: () => Promise<string | { token: string }> | string | { token: string };
  /**
   * The agent whose `cortex:<agent_id>` channel queries and tools use.
   * Default: the token's `sub`; for an API key, the key's agent (its name
   * unless created with `--agent`), learnt from the server.
   */
  agentId?: string;
  /** WebSocket implementation; required on Node 20 (`import WebSocket from 'ws'`). */
  transport?: WebSocketConstructor;
  /** Extra query parameters for the WebSocket URL. */
  params?: Record<string, string> | (() => Record<string, string>);
  /** Reply timeout of every push (join, query, publish, ...). Default 10000. */
  timeoutMs?: number;
  /** Phoenix heartbeat interval. Default 30000. */
  heartbeatIntervalMs?: number;
  /** First reconnect delay ceiling; doubles per attempt (full jitter). Default 250. */
  reconnectBaseMs?: number;
  /** Largest reconnect delay. Default 30000. */
  reconnectMaxMs?: number;
  /**
   * How long before expiry the SDK refreshes on its own (at most half the
   * token's lifetime); 0 leaves it to the server's `token_expiring`. Default 60000.
   */
  refreshMarginMs?: number;
  /** With only `token`: slide the session with `refresh {}`. Default true. */
  selfRefresh?: boolean;
  /** Base URL of the HTTP API (default: derived from the WebSocket URL). */
  httpUrl?: string;
  /** fetch implementation for the HTTP API (default: global fetch). */
  fetch?: typeof fetch;
  /** Phoenix's logger: `(kind, msg, data) => void`. */
  logger?: (kind: string, msg: string, data?: any) => void;
  /**
   * Re-attach every followed run after a reconnect, from the last seq
   * delivered (docs/protocol.md §9 "Runs"). Default true; false: a dropped
   * link ends running runs with error `disconnected` (the server still keeps
   * them for `cortex.detach_grace_s`).
   */
  resumeRuns?: boolean;
}

export interface Thought {
  type: string;
  content: string;
  [key: string]: any;
}

/** Fields every push of a run carries. */
export interface RunPushBase {
  ref: string;
  run_id: string;
  /** The event's place in the run's log: 1, 2, 3, ... */
  seq: number;
  /**
   * Set on events the SDK made from a compacted snapshot (attach without
   * afterSeq, or a resume past what the run's log still held); `seq` is then
   * the snapshot's.
   */
  snapshot?: boolean;
}

export interface ThoughtPush extends RunPushBase {
  thought: Thought;
  ts?: number;
}

export interface TokenPush extends RunPushBase {
  delta: string;
  /** From a snapshot whose text the server had to cut: the text so far, not a continuation. */
  replace?: boolean;
}

export interface ProgressPush extends RunPushBase {
  progress: number;
  total?: number;
  message?: string;
}

export interface ResultPush extends RunPushBase {
  status: 'success';
  data: any;
  latency_ms: number;
}

/** The server's `snapshot` push, plus what this handle had delivered before it. */
export interface Snapshot {
  ref: string;
  run_id: string;
  /** The last event folded into it; events after it follow. */
  seq: number;
  status: string;
  /** Every token delta so far, concatenated. */
  text: string;
  text_truncated?: boolean;
  thoughts: Thought[];
  progress?: { progress: number; total?: number; message?: string };
  /** The last seq this handle had delivered before the snapshot (0 for a fresh attach). */
  seenSeq: number;
  /** The token text this handle had delivered before the snapshot. */
  seenText: string;
}

export interface RunOutcome {
  status: 'success' | 'interrupted';
  ref: string;
  /** The server's run id. */
  runId?: string;
  /** The result, when status is 'success'. */
  data?: any;
  latency_ms?: number;
  /** Why it was interrupted (`detached` when nobody followed it past the server's grace). */
  reason?: string;
}

export interface RunHandle {
  /** The run's ref (chosen by the SDK unless given; for attach(), learnt from the server). */
  ref: string | null;
  /** The server's run id, once the `processing` / `running` reply (or runs {} after a lost reply) told it. */
  readonly runId: string | null;
  /** The last seq delivered to the callbacks. */
  readonly lastSeq: number;
  /**
   * Resolves on `result` or `interrupted`; rejects with a SynapseError on
   * `error` (reason `timeout`, `tool_error`, `internal`, or a refusal such
   * as `invalid_args`, `rate_limited`, `too_many_running`). Reason
   * `disconnected` only when the run cannot be followed any more: it was
   * running at disconnect() or a credentials revocation, it was started
   * while the link was down, or after a reconnect it could not be
   * re-attached (`details.cause`: `unknown_run` when the server no longer
   * knows it, e.g. it restarted; `not_started` when its start never reached
   * the server).
   */
  done: Promise<RunOutcome>;
  /** Interrupts the run; true if the server accepted it. */
  interrupt(reason?: string): Promise<boolean>;
}

interface RunOptions {
  /** Server-side run timeout (`timeout_ms`). */
  timeoutMs?: number;
  /** A ref of your own (1..128 bytes, unique among this connection's running runs). */
  ref?: string;
  /** Extra time the SDK waits past timeoutMs for the server's answer. Default 5000. */
  graceMs?: number;
  onResult?: (data: any, push: ResultPush) => void;
  onError?: (error: SynapseError) => void;
  onInterrupted?: (reason: string, push: { ref: string; run_id: string; seq: number; reason: string }) => void;
  /** Streamed text deltas (`token` events: agent workers, `demo.tokens`, streaming tools). */
  onToken?: (delta: string, push: TokenPush) => void;
  onThought?: (thought: Thought, push: ThoughtPush) => void;
  onProgress?: (push: ProgressPush) => void;
}

export interface QueryOptions extends RunOptions {
  /** Results to return (1..100). */
  limit?: number;
}

export interface ToolOptions extends RunOptions {}

export interface AttachOptions {
  /** Only the events after this seq (no snapshot). */
  afterSeq?: number;
  /**
   * Receives the compacted snapshot a late attach starts with. Without it
   * the snapshot is played as events: each thought to onThought, the text
   * as one onToken call, the progress to onProgress (`push.snapshot` true).
   */
  onSnapshot?: (snapshot: Snapshot) => void;
  onToken?: (delta: string, push: TokenPush) => void;
  onThought?: (thought: Thought, push: ThoughtPush) => void;
  onProgress?: (push: ProgressPush) => void;
  onResult?: (data: any, push: ResultPush) => void;
  onError?: (error: SynapseError) => void;
  onInterrupted?: (reason: string, push: { ref: string; run_id: string; seq: number; reason: string }) => void;
}

export interface RunInfo {
  run_id: string;
  ref: string;
  kind: 'query' | 'tool';
  tool?: string;
  status: 'running' | 'result' | 'error' | 'interrupted' | 'timeout' | 'cancelled';
  started_at: number;
  ended_at?: number;
  last_seq: number;
  /** Connections following it now. */
  attached: number;
}

export interface ToolInfo {
  name: string;
  description: string;
  input_schema: Record<string, any>;
  /** `builtin`, or `mcp:<server>` for a configured MCP server's tool. */
  provider?: string;
  /** False while the tool's MCP server restarts (a call ends `tool_unavailable`). */
  available?: boolean;
}

export interface MessageMeta {
  offset: number;
  epoch: string;
  from: string;
  ts: number;
}

export interface Message<P = Record<string, any>> {
  topic: string;
  event: string;
  /** The publisher's payload, without `_meta`. */
  payload: P;
  meta: MessageMeta;
}

export interface PresenceEntry {
  /** The agent id. */
  id: string;
  /** One meta per connection: `{phx_ref, online_at, ...your meta}`. */
  metas: Array<{ phx_ref: string; online_at: number; [key: string]: any }>;
}

export interface SubscribeOptions {
  /** Presence meta for this connection (at most 1 KiB serialized). */
  meta?: Record<string, any>;
  /** Receive presence (needed for presence(topic)). */
  presence?: boolean;
  /** Called with the presence list after every change (implies presence). */
  onPresence?: (list: PresenceEntry[]) => void;
}

export interface JoinReply {
  offset: number;
  epoch: string;
  recovered?: boolean;
}

export interface Unsubscribe {
  /** Unsubscribes this callback; leaves the topic when it was the last one. */
  (): Promise<void>;
  /** Resolves with the join reply once subscribed; rejects if refused. */
  ready: Promise<JoinReply>;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface EventMap {
  open: () => void;
  close: (e: { code?: number; reason: string; wasClean: boolean }) => void;
  error: (e: SynapseError) => void;
  reconnect: (e: { downtimeMs: number }) => void;
  reconnecting: (e: { attempt: number; delayMs: number }) => void;
  token_expiring: (e: { expiresInMs: number }) => void;
  token_refreshed: (e: { expiresAt?: number; why: string }) => void;
  recovered: (e: { topic: string; from: number | null; to: number | null }) => void;
  gap: (e: { topic: string; lostFrom: number | null; lostTo: number | null; epochChanged: boolean }) => void;
  /** A followed run was re-attached after a reconnect, from `afterSeq`. */
  run_resumed: (e: { ref: string; runId: string; afterSeq: number | null; lastSeq: number; status: string; truncated: boolean }) => void;
}

export class SynapseError extends Error {
  constructor(reason: string, message?: string, details?: Record<string, any>);
  name: 'SynapseError';
  /** Stable snake_case code. */
  reason: string;
  /** The server's whole response, when there was one. */
  details?: Record<string, any>;
  retryAfterMs?: number;
  /** HTTP status of a refused upgrade (401, 403, 429...), when the transport exposes it (Node's ws). */
  status?: number;
  /** The refusal's Retry-After header, in seconds. */
  retryAfterS?: number;
  errors?: Array<{ field: string; message: string }>;
  /** The run's ref, for run errors. */
  ref?: string;
  /** The run's id, for run errors once known. */
  runId?: string;
}

export class MimoSynapse {
  constructor(url: string, options: SynapseOptions);
  /** The normalized endpoint, e.g. `ws://127.0.0.1:4000/cortex`. */
  readonly url: string;
  readonly state: ConnectionState;
  readonly connected: boolean;
  /** Known once the cortex channel was joined (after whoami() or a first run). */
  readonly agentId: string | null;
  /** The current token, for token connections. */
  readonly token: string | null;

  /** Resolves when the socket is open; rejects if the first attempt fails. */
  connect(): Promise<void>;
  /** Closes and stops reconnecting; running runs end with `disconnected`. */
  disconnect(): Promise<void>;
  on<E extends keyof EventMap>(event: E, fn: EventMap[E]): () => void;
  off<E extends keyof EventMap>(event: E, fn?: EventMap[E]): void;

  /** The credential's agent id, confirmed by joining `cortex:<agent_id>`. */
  whoami(): Promise<string>;
  query(q: string, opts?: QueryOptions): RunHandle;
  tool(name: string, args?: Record<string, any>, opts?: ToolOptions): RunHandle;
  /**
   * Follows a run by id (another device's, or this page's before a reload):
   * a snapshot first unless `afterSeq` is given, then the live events.
   * Re-attached by itself after a reconnect like every followed run.
   */
  attach(runId: string, opts?: AttachOptions): RunHandle;
  /** The agent's active and recent runs on this server, newest first. */
  runs(): Promise<RunInfo[]>;
  /** By ref or by the run_id of a followed run. Rejects with reason `not_found` when nothing runs under it. */
  interrupt(ref: string, reason?: string): Promise<{ ref: string; run_id?: string }>;
  tools(): Promise<ToolInfo[]>;
  /** The server's clock (unix ms), via the cortex `ping`. */
  ping(): Promise<number>;

  subscribe<P = Record<string, any>>(topic: string, callback: (msg: Message<P>) => void, opts?: SubscribeOptions): Unsubscribe;
  /** Resolves with the message's offset. The publisher does not receive its own message. */
  publish(topic: string, event: string, payload?: Record<string, any>): Promise<number>;
  /** The current presence list (needs a subscription with `presence: true`). */
  presence(topic: string): PresenceEntry[];
  /** The last offset and epoch seen on a joined topic, or null. */
  position(topic: string): { offset: number | null; epoch: string | null } | null;
  /** Refreshes the token now (getToken, or the server's sliding refresh). */
  refreshToken(): Promise<string | null>;
}

// --- agent workers (docs/protocol.md section 10) ----------------------------

export interface WorkerToolSpec {
  /** `<namespace>.<name>`, not one of Synapse's own tools. */
  name: string;
  description?: string;
  input_schema?: Record<string, any>;
}

export interface AgentWorkerOptions extends Omit<SynapseOptions, 'agentId' | 'resumeRuns'> {
  /** The agent served: the worker key's `--agent`, or `'*'` (every agent of the tenant). Default: a token's `sub`. */
  agentId?: string;
  /** Runs served at once (1..1000). Default 1. */
  capacity?: number;
  /** Tools this worker provides to the agent's clients (`run` with kind `tool`). */
  tools?: WorkerToolSpec[];
  /** The handler is asked for its next value only while the socket buffers at most this much. Default 1 MiB. */
  maxBufferedBytes?: number;
}

/** The `run` push, as the handler gets it. */
export interface AgentRun {
  runId: string;
  kind: 'query' | 'tool';
  /** kind 'query' */
  q?: string;
  limit?: number;
  /** kind 'tool' */
  name?: string;
  args?: Record<string, any>;
  /** Whose run it is; callTool acts as them. */
  caller: { tenant: string; agent_id: string };
  /** Unix ms at which the server times the run out. */
  deadlineMs: number;
  /** The push payload as received. */
  payload: Record<string, any>;
}

/** The AbortSignal's reason when a run is cancelled. */
export interface CancelError extends SynapseError {
  name: 'AbortError';
  /** The server's `cancel` reason (`interrupted`: a client's interrupt or a shutdown; `timeout`), or `disconnected`, `stopped`. */
  cancelReason: string;
}

export interface AgentContext {
  runId: string;
  /** Fires when the client interrupts, the run times out, the link drops or stop() is called. */
  signal: AbortSignal;
  caller: { tenant: string; agent_id: string };
  deadlineMs: number;
  /** Runs a Synapse tool (memory.*, MCP tools) as the run's caller; resolves with its data. */
  callTool<T = any>(name: string, args?: Record<string, any>): Promise<T>;
  /** The same as yielding, for code that streams from callbacks. */
  token(text: string): Promise<void>;
  thought(thought: string | Record<string, any>): Promise<void>;
  progress(progress: number, extra?: { total?: number; message?: string }): Promise<void>;
}

/** What a handler may yield: a string (a token), `{token}`, `{thought}` or `{progress, total?, message?}`. */
export type AgentYield =
  | string
  | { token: string }
  | { thought: string | Record<string, any> }
  | { progress: number; total?: number; message?: string };

/**
 * Called once per run. An async generator streams what it yields and
 * returns the result data; an async function only returns it. Throwing ends
 * the run with `error` (the error's `reason` if snake_case, else `agent_error`).
 */
export type AgentHandler =
  | ((run: AgentRun, ctx: AgentContext) => AsyncIterable<AgentYield> | AsyncGenerator<AgentYield, any, void>)
  | ((run: AgentRun, ctx: AgentContext) => Promise<any>);

export interface AgentWorkerEventMap {
  registered: (e: { workerId: string | null; agentId: string; capacity: number }) => void;
  unregistered: (e: { reason: string }) => void;
  run: (e: { runId: string; kind: 'query' | 'tool'; caller: { tenant: string; agent_id: string } }) => void;
  run_end: (e: { runId: string; outcome: 'result' | 'error' | 'cancelled'; reason?: string }) => void;
  error: (e: SynapseError) => void;
  close: (e: { code?: number; reason: string; wasClean: boolean }) => void;
  reconnect: (e: { downtimeMs: number }) => void;
}

export class AgentWorker {
  constructor(url: string, options: AgentWorkerOptions);
  readonly agentId: string;
  readonly capacity: number;
  readonly tools: WorkerToolSpec[];
  /** `agent:<agentId>` */
  readonly topic: string;
  /** Whether the agent topic is joined now. */
  readonly registered: boolean;
  readonly workerId: string | null;
  /** Runs being served now. */
  readonly active: number;
  /**
   * Connects, joins the agent topic and serves runs until stop(); resolves
   * once registered. Rejects with `forbidden` for a key that is not a worker
   * key, `invalid_payload` for a bad tool list, or the connection's refusal.
   * Re-registers by itself after a dropped link or a server restart.
   */
  serve(handler: AgentHandler): Promise<{ worker_id: string; agent_id: string; capacity: number }>;
  /** Cancels the runs being served (reason `stopped`), leaves, disconnects. */
  stop(): Promise<void>;
  on<E extends keyof AgentWorkerEventMap>(event: E, fn: AgentWorkerEventMap[E]): () => void;
  off<E extends keyof AgentWorkerEventMap>(event: E, fn?: AgentWorkerEventMap[E]): void;
}

/** Exponential backoff with full jitter: random in [0, min(maxMs, baseMs * 2^(attempt-1))). */
export function backoffDelay(attempt: number, opts?: { baseMs?: number; maxMs?: number; random?: () => number }): number;
/** The claims of a JWT, unverified. */
export function jwtClaims(token: string): Record<string, any> | null;

export default MimoSynapse;
