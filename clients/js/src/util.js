// Small helpers with no dependency on phoenix: backoff, JWT claims, an event
// emitter that never throws for a missing 'error' listener, and the error type.

/**
 * An error reported by the server or the SDK. `reason` is the stable snake_case
 * code of the protocol (`timeout`, `tool_error`, `internal`, `disconnected`,
 * `rate_limited`, `invalid_payload`, `not_found`, ...).
 */
export class SynapseError extends Error {
  /**
   * @param {string} reason stable snake_case code
   * @param {string} [message] human text
   * @param {Record<string, any>} [details] the server's whole response, if any
   */
  constructor(reason, message, details) {
    super(message || reason);
    this.name = 'SynapseError';
    /** @type {string} */
    this.reason = reason;
    /** @type {Record<string, any> | undefined} */
    this.details = details;
    /** @type {string | undefined} the run's ref, for run errors */
    this.ref = details && typeof details.ref === 'string' ? details.ref : undefined;
    if (details && typeof details.retry_after_ms === 'number') this.retryAfterMs = details.retry_after_ms;
    if (details && Array.isArray(details.errors)) this.errors = details.errors;
  }
}

/**
 * Exponential backoff with full jitter: a uniformly random delay in
 * [0, min(maxMs, baseMs * 2^(attempt-1))).
 * @param {number} attempt 1 for the first retry
 * @param {{baseMs?: number, maxMs?: number, random?: () => number}} [opts]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { baseMs = 250, maxMs = 30000, random = Math.random } = {}) {
  const n = Math.max(1, Math.floor(attempt));
  // 2^n overflows to Infinity long before it matters; min() keeps it at the cap.
  const ceiling = Math.min(maxMs, baseMs * Math.pow(2, n - 1));
  return Math.floor(random() * ceiling);
}

function base64UrlDecode(s) {
  let b64 = s.replace(/-/g, '+').replace(/_/g, '/');
  while (b64.length % 4) b64 += '=';
  const bin = atob(b64);
  // The claims are UTF-8 JSON; decode the bytes properly.
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/**
 * The claims of a JWT, without verifying it (the server does that).
 * @param {string} token
 * @returns {Record<string, any> | null}
 */
export function jwtClaims(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** A minimal event emitter; listener exceptions never reach the SDK's state. */
export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }

  /**
   * @param {string} event
   * @param {Function} fn
   * @returns {() => void} removes the listener
   */
  on(event, fn) {
    if (typeof fn !== 'function') throw new TypeError('listener must be a function');
    let set = this._handlers.get(event);
    if (!set) this._handlers.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /**
   * @param {string} event
   * @param {Function} fn
   */
  once(event, fn) {
    const off = this.on(event, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }

  /**
   * @param {string} event
   * @param {Function} [fn] all of the event's listeners when omitted
   */
  off(event, fn) {
    const set = this._handlers.get(event);
    if (!set) return;
    if (fn) set.delete(fn);
    else set.clear();
  }

  /**
   * @param {string} event
   * @param {...any} args
   */
  emit(event, ...args) {
    const set = this._handlers.get(event);
    if (!set || set.size === 0) return false;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        // A throwing listener must not break the SDK; report it asynchronously
        // as an uncaught error would be, but only once per throw.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
    return true;
  }
}
