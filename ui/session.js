// One WebSocket session to this page's own origin (`/v1/subscribe`, docs/protocol.md §3): the
// bearer token in the handshake only, requests paced under the relay's per-session rate, and
// reconnection with backoff after a session that was open ends unexpectedly.

import { CLOSE_CODES } from './format.js';

/** Close codes after which reconnecting cannot help: say why and stop (the relay's
 * `Retry::Never`, and `Retry::NewCredentials`: the page cannot get a new token). */
const FINAL_CODES = new Set([1002, 4001, 4003, 4004, 4008]);

/** The relay drains (a rolling update): reconnect at once, the load balancer picks another. */
export const RECONNECT_CODE = 4012;

/** Requests sent at once, then per second: under the relay's default 20/s (burst 40). */
const REQUEST_BURST = 16;
const REQUESTS_PER_SEC = 10;

/** Reconnect delays: doubling from the first, capped, each scaled into [½, 1] (jitter). */
export const RETRY_FIRST_MS = 500;
export const RETRY_MAX_MS = 15000;

/** The delay before reconnect attempt `attempt` (0-based), given a random number in [0, 1). */
export function retryDelay(attempt, random) {
  const cap = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** Math.min(attempt, 16));
  return Math.round(cap / 2 + (random * cap) / 2);
}

/** JSON with BigInt values written as integers (nanoseconds and epochs beyond 2^53 stay exact). */
export function toJson(value) {
  return JSON.stringify(value, (k, v) => (typeof v === 'bigint' ? `\u0000big:${v}` : v))
    .replace(/"\\u0000big:(-?\d+)"/g, '$1');
}

export class Session {
  /**
   * `handlers`: `open()` after `welcome`, `event(e)`, `batch(arrayBuffer)`,
   * `state({phase, text, code, retryInMs, attempt})` for the connection banner.
   */
  constructor({ token, handlers }) {
    this.token = token;
    this.h = handlers;
    this.ws = null;
    this.gen = 0;
    this.queue = [];
    this.tokens = REQUEST_BURST;
    this.refilled = performance.now();
    this.pump = null;
    this.attempt = 0;
    this.everWelcomed = false;
    this.retryTimer = null;
    this.stopped = false;
  }

  url() {
    return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/v1/subscribe`;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.stopped = false;
    const gen = ++this.gen;
    this.queue = [];
    const protocols = this.token ? ['logrelay.v1', `bearer.${this.token}`] : ['logrelay.v1'];
    let ws;
    try {
      ws = new WebSocket(this.url(), protocols);
    } catch (e) {
      this.h.state({ phase: 'refused', text: `Cannot connect: ${e.message}` });
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let welcomed = false;
    this.h.state({ phase: 'connecting', attempt: this.attempt });
    ws.onmessage = (msg) => {
      if (gen !== this.gen) return;
      if (typeof msg.data !== 'string') {
        this.h.batch(msg.data);
        return;
      }
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch (e) {
        this.h.event({ event: 'error', code: 'viewer', message: `unreadable event from the relay: ${e.message}` });
        return;
      }
      if (event.event === 'welcome') {
        welcomed = true;
        this.everWelcomed = true;
        this.attempt = 0;
        this.h.state({ phase: 'open', org: event.org });
        this.h.open(event);
        return;
      }
      this.h.event(event);
    };
    ws.onclose = (ev) => {
      if (gen !== this.gen) return;
      this.ws = null;
      clearTimeout(this.pump);
      this.pump = null;
      const name = CLOSE_CODES[ev.code] || 'closed';
      const why = `${ev.code} ${name}${ev.reason ? `: ${ev.reason}` : ''}`;
      if (this.stopped) return;
      if (FINAL_CODES.has(ev.code)) {
        this.h.state({ phase: 'refused', code: ev.code, text: `The relay closed the session (${why}).` });
        return;
      }
      if (!this.everWelcomed) {
        this.h.state({
          phase: 'refused',
          code: ev.code,
          text: `The relay refused the session or cannot be reached (${why}). Without a valid ` +
            'token a relay answers HTTP 401 before the upgrade: check the token.',
        });
        return;
      }
      // A draining relay asked for it: at once (a little jitter spreads the sessions).
      const wait = ev.code === RECONNECT_CODE ? Math.round(Math.random() * 250) : retryDelay(this.attempt, Math.random());
      this.attempt++;
      this.h.state({ phase: 'retrying', code: ev.code, text: why, retryInMs: wait, attempt: this.attempt, wasOpen: welcomed });
      this.retryTimer = setTimeout(() => {
        if (gen === this.gen) this.connect();
      }, wait);
    };
  }

  /** Reconnects at once (the banner's "retry now"). */
  retryNow() {
    if (this.retryTimer) this.connect();
  }

  /** Closes the session for good (the page changes its view or stops). */
  close(reason) {
    this.stopped = true;
    this.gen++;
    clearTimeout(this.retryTimer);
    clearTimeout(this.pump);
    this.retryTimer = null;
    this.pump = null;
    if (this.ws) this.ws.close(1000, reason);
    this.ws = null;
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Queues a request; requests go out in order, paced. BigInts are sent as exact integers. */
  send(request) {
    this.queue.push(toJson(request));
    this.drain();
  }

  drain() {
    if (!this.open) return;
    const now = performance.now();
    this.tokens = Math.min(REQUEST_BURST, this.tokens + ((now - this.refilled) / 1000) * REQUESTS_PER_SEC);
    this.refilled = now;
    while (this.queue.length && this.tokens >= 1) {
      this.ws.send(this.queue.shift());
      this.tokens -= 1;
    }
    if (this.queue.length && !this.pump) {
      this.pump = setTimeout(() => {
        this.pump = null;
        this.drain();
      }, Math.ceil(1000 / REQUESTS_PER_SEC));
    }
  }
}
