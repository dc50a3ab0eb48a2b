// Helpers for driving the OFFICIAL phoenix client (no SDK) against the real
// server: promise wrappers around its callback API.
import { Socket } from 'phoenix';
import WebSocket from 'ws';

export { Socket, WebSocket };

/**
 * A phoenix Socket over `ws` (Node 20 has no global WebSocket, and without a
 * transport phoenix silently falls back to long-polling). Resolves once open.
 */
export function connect(server, params, opts = {}) {
  const socket = new Socket(`ws://127.0.0.1:${server.port}/cortex`, {
    transport: WebSocket,
    params,
    timeout: 10000,
    ...opts,
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('phoenix socket did not open')), 10000);
    const openRef = socket.onOpen(() => {
      clearTimeout(timer);
      socket.off([openRef, errRef]);
      resolve(socket);
    });
    const errRef = socket.onError((e) => {
      clearTimeout(timer);
      socket.off([openRef, errRef]);
      socket.disconnect();
      reject(new Error(`phoenix socket error: ${e && e.message}`));
    });
    socket.connect();
  });
}

/** Joins `channel`; resolves with {status, response}. */
export function join(channel) {
  return new Promise((resolve) => {
    channel.join()
      .receive('ok', (response) => resolve({ status: 'ok', response }))
      .receive('error', (response) => resolve({ status: 'error', response }))
      .receive('timeout', () => resolve({ status: 'timeout' }));
  });
}

/** Pushes and resolves with {status, response}. */
export function push(channel, event, payload) {
  return new Promise((resolve) => {
    channel.push(event, payload)
      .receive('ok', (response) => resolve({ status: 'ok', response }))
      .receive('error', (response) => resolve({ status: 'error', response }))
      .receive('timeout', () => resolve({ status: 'timeout' }));
  });
}

export function disconnect(socket) {
  return new Promise((resolve) => socket.disconnect(() => resolve()));
}
