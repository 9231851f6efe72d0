// Formatting for people: times, sizes, counts, JSON log lines, plain-language reasons. Pure.

import { nanos } from './batch.js';

const pad = (n, w = 2) => String(n).padStart(w, '0');

/** RFC 3339 UTC with nanoseconds, like `wire::time::rfc3339_nanos`. */
export function rfc3339(hi, lo) {
  const ns = nanos(hi, lo);
  const second = ns >= 0n ? ns / 1000000000n : (ns - 999999999n) / 1000000000n;
  const frac = ns - second * 1000000000n;
  const date = new Date(Number(second) * 1000);
  if (Number.isNaN(date.getTime())) return String(ns);
  return `${date.toISOString().slice(0, 19)}.${frac.toString().padStart(9, '0')}Z`;
}

/**
 * The timestamp column: `2024-01-02 03:04:05.123` in the browser's time zone (`local`) or with a
 * trailing `Z` (`utc`). `ms` is Unix milliseconds.
 */
export function shortTime(ms, zone) {
  const d = new Date(Math.floor(ms));
  if (Number.isNaN(d.getTime())) return '?';
  if (zone === 'utc') {
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(d.getUTCMilliseconds(), 3)}Z`;
  }
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** `1.5 MiB`. */
export function formatBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Number(n);
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  const text = u === 0 ? String(v) : v.toFixed(1).replace(/\.0$/, '');
  return `${text} ${units[u]}`;
}

/** `12 345` (thin groups, any locale). */
export function count(n) {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, '\u202f');
}

export function plural(n, one, many) {
  return `${count(n)} ${Number(n) === 1 ? one : many}`;
}

/** `3 s`, `2 min`, `1 h` ago. */
export function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h`;
}

/** Fields that name a JSON log line's level and message, most usual first. */
const LEVEL_KEYS = ['level', 'lvl', 'severity', 'levelname', 'log.level', 'loglevel'];
const MESSAGE_KEYS = ['msg', 'message', 'event', 'text', 'log'];

/** A level's class: `error`, `warn`, `info`, `debug` or `other`. */
export function levelClass(level) {
  const l = String(level).toLowerCase();
  if (/^(err|error|fatal|crit|critical|alert|emerg|panic|severe)/.test(l)) return 'error';
  if (/^(warn|warning)/.test(l)) return 'warn';
  if (/^(info|notice|information)/.test(l)) return 'info';
  if (/^(debug|trace|fine|verbose)/.test(l)) return 'debug';
  return 'other';
}

/**
 * A JSON object line made readable: `{level, message, fields: [[key, text]…]}`, or null when the
 * line is not a JSON object. Values that are not strings are shown as compact JSON.
 */
export function jsonLine(text) {
  const t = text.trim();
  if (t.length < 2 || t[0] !== '{' || t[t.length - 1] !== '}') return null;
  let obj;
  try {
    obj = JSON.parse(t);
  } catch {
    return null;
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) return null;
  const show = (v) => (typeof v === 'string' ? v : JSON.stringify(v));
  let level = null;
  let message = null;
  const used = new Set();
  for (const k of LEVEL_KEYS) {
    if (k in obj && (typeof obj[k] === 'string' || typeof obj[k] === 'number')) {
      level = show(obj[k]);
      used.add(k);
      break;
    }
  }
  for (const k of MESSAGE_KEYS) {
    if (k in obj && typeof obj[k] === 'string') {
      message = obj[k];
      used.add(k);
      break;
    }
  }
  const fields = Object.keys(obj).filter((k) => !used.has(k)).map((k) => [k, show(obj[k])]);
  return { level, message, fields, pretty: JSON.stringify(obj, null, 2) };
}

// The tables below name exactly the words of the relay's protocol (`logrelay_wire::reason`
// and `logrelay_wire::code`); a test of the relay (`ui::tests`) compares them.

/** Why lines were missed, in plain language (docs/protocol.md §3.4). */
export const GAP_REASONS = {
  slow_consumer: 'this page fell behind the relay (its connection was too slow for the stream)',
  epoch_lost: 'the agent no longer holds them (it restarted, or stopped following the file)',
  backfill_lost: 'they were on their way when the agent went away (its connection ended before they reached the relay)',
};

/** Why a stream paused, in plain language. */
export const PAUSE_REASONS = {
  agent_disconnected: 'its node agent disconnected',
  backplane_unavailable: 'its node agent is on another relay, which cannot be reached now',
};

/** Why a stream ended, in plain language. */
export const END_REASONS = {
  container_removed: 'the container is gone',
  labels_changed: 'it was relabelled and continues as a new stream',
  agent_disconnected: 'its node agent went away',
  complete: 'its backlog was read (not following)',
  agent_unavailable: 'its node agent is not connected',
  demand_limit: 'the relay\'s demand limit for its agent was reached (subscribe again later)',
  refused: 'the agent refused the filter',
};

/** WebSocket close codes (docs/protocol.md §3.6). */
export const CLOSE_CODES = {
  1000: 'closed',
  1001: 'relay shutting down',
  1002: 'protocol error',
  1006: 'connection lost',
  1009: 'message too large',
  1011: 'relay error',
  1012: 'relay restarting',
  1013: 'relay overloaded',
  4001: 'unauthenticated',
  4003: 'forbidden',
  4004: 'token expired',
  4008: 'limit reached',
  4009: 'slow consumer',
  4010: 'ping timeout',
  4012: 'relay draining, reconnecting to another relay',
};
