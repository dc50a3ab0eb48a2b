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
}

export interface Thought {
  type: string;
  content: string;
  [key: string]: any;
}

export interface ThoughtPush {
  ref: string;
  seq: number;
  thought: Thought;
  ts: number;
}

export interface ProgressPush {
  ref: string;
  progress: number;
  total?: number;
  message?: string;
}

export interface ResultPush {
  ref: string;
  status: 'success';
  data: any;
  latency_ms: number;
}

export interface RunOutcome {
  status: 'success' | 'interrupted';
  ref: string;
  /** The result, when status is 'success'. */
  data?: any;
  latency_ms?: number;
  /** Why it was interrupted. */
  reason?: string;
}

export interface RunHandle {
  /** The run's ref (chosen by the SDK unless given). */
  ref: string;
  /**
   * Resolves on `result` or `interrupted`; rejects with a SynapseError on
   * `error` (reason `timeout`, `tool_error`, `internal`, `disconnected`, or a
   * refusal such as `invalid_args`, `rate_limited`, `too_many_running`).
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
  onInterrupted?: (reason: string, push: { ref: string; reason: string }) => void;
}

export interface QueryOptions extends RunOptions {
  onThought?: (thought: Thought, push: ThoughtPush) => void;
  /** Results to return (1..100). */
  limit?: number;
}

export interface ToolOptions extends RunOptions {
  onProgress?: (push: ProgressPush) => void;
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
  /** Rejects with reason `not_found` when nothing runs under `ref`. */
  interrupt(ref: string, reason?: string): Promise<{ ref: string }>;
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

/** Exponential backoff with full jitter: random in [0, min(maxMs, baseMs * 2^(attempt-1))). */
export function backoffDelay(attempt: number, opts?: { baseMs?: number; maxMs?: number; random?: () => number }): number;
/** The claims of a JWT, unverified. */
export function jwtClaims(token: string): Record<string, any> | null;

export default MimoSynapse;
