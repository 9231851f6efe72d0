// logrelay live viewer: wires the picker, the session, the merged buffer, the virtualized view
// and the charts together (docs/viewer.md). The decisions live in the pure modules (batch, ansi,
// lines, url, format); this file moves data between them and the page.
//
// Rules this page keeps (docs/security.md, "The browser viewer"):
// - Log text, labels and every message from the relay reach the page through `textContent` and
//   class names only, never as markup.
// - The bearer token lives in this script's memory and in the token field. It is read from the
//   URL fragment (`#token=…`, which browsers never send to a server), removed from the address
//   bar at once, sent only as a WebSocket subprotocol entry, and never stored.
// - The buffer is bounded in lines and bytes; the oldest entries are dropped and counted.

import { decodeBatch, nanos, KIND_GAP, FLAG_BACKFILL, FLAG_COUNT_UNKNOWN, LINE_STDERR, LINE_PARTIAL, LINE_TRUNCATED, LINE_SYSTEM } from './batch.js';
import { segments, cut } from './ansi.js';
import { LineBuffer, LINE, MARK, plain, matcher, indexOf } from './lines.js';
import { LogView } from './view.js';
import { Session } from './session.js';
import { Picker, Catalog } from './picker.js';
import { Charts } from './charts.js';
import { decode, encode, selectionKey, selectionLabel, SELECTOR_FIELDS, MAX_SELECTIONS } from './url.js';
import {
  rfc3339, shortTime, formatBytes, count, plural, ago, jsonLine, levelClass,
  GAP_REASONS, PAUSE_REASONS, END_REASONS,
} from './format.js';

const $ = (id) => document.getElementById(id);
const MiB = 1024 * 1024;
/** Per-stream resume subscriptions after a reconnect, at most (each counts against the relay's limit). */
const MAX_RESUMES = 40;
/**
 * How long a reconnect waits for the streams it resumes to be announced again before the
 * selections are subscribed anyway (an agent notices a relay that died within its QUIC idle
 * timeout, 15 s, then reconnects).
 */
const RESUME_WAIT_MS = 30000;
/** Pending lines beyond which a batch is merged at once (a hidden tab gets no animation frames). */
const FLUSH_NOW_AT = 5000;
/** Colour classes `c0`…`c9`. */
const COLOURS = 10;

// ---- state --------------------------------------------------------------------------------

const S = decode(location.search);
let token = '';
const buffer = new LineBuffer({ maxLines: S.maxLines, maxBytes: S.maxMiB * MiB });
/** Selections: `{id, sel, key}`; subscription ids `l<id>` (logs) and `m<id>` (resources). */
let selections = [];
let nextSel = 1;
let nextSub = 1;
let session = null;
/** What belongs to one connection (relay ids change with every session and relay). */
let conn = null;
/** A reconnect: when the connection was lost, and whether lines were held then. */
let lost = null;
let lastLineAt = 0;
let welcomedOnce = false;
const colourIds = new Map();
const metricsCatalog = new Catalog();

function colourOf(key) {
  let c = colourIds.get(key);
  if (c === undefined) {
    c = colourIds.size % COLOURS;
    colourIds.set(key, c);
  }
  return c;
}

/** A stream's identity across reconnects and relay restarts (relay ids change). */
function streamKey(l) {
  return JSON.stringify([l.org, l.cluster, l.node, l.namespace, l.pod, l.pod_uid, l.container, l.restart, l.kind || 'log']);
}

/** The selector of exactly one stream (for a resume with `since_seq`, which is per stream). */
function exactSelector(l) {
  const sel = {};
  for (const f of ['cluster', 'node', 'namespace', 'pod', 'pod_uid', 'container']) if (l[f]) sel[f] = l[f];
  sel.restart = l.restart || 0;
  if (l.kind && l.kind !== 'log') sel.kind = l.kind;
  return sel;
}

function newConn() {
  return {
    /** Relay stream id → `{kind: 'log'|'res'|'scrape', src?, labels}`. */
    streams: new Map(),
    /** Subscription id → `{type: 'logs'|'res'|'resume'|'scrape', sel?, srcKey?, container?}`. */
    subs: new Map(),
    resuming: false,
    /** Streams being resumed after a reconnect: key → subscription id, until attached. */
    pendingResume: new Map(),
    resumeTimer: null,
    welcomedAt: 0,
  };
}

// ---- page elements --------------------------------------------------------------------------

const logEl = $('log');
const banner = $('banner');
const bannerText = $('banner-text');
const retryButton = $('banner-retry');
const statusEl = $('status');
const errorEl = $('error');
const evictedEl = $('evicted');
const newLinesButton = $('newlines');
const followButton = $('follow');
const searchInput = $('search');
const hitsEl = $('hits');
const chipsEl = $('chips');
const sourceFilterButton = $('source-filter');
const tokenInput = $('token');
const countsEl = $('counts');

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function nowNs() {
  return Date.now() * 1e6;
}

// ---- rows ---------------------------------------------------------------------------------------

/** Text pieces of a message with search hits marked (`mark`, `mark cur` for the current hit). */
function messagePieces(text, isCurrent) {
  const segs = segments(text);
  const ranges = buffer.search ? buffer.search.ranges(segs.map((s) => s.text).join('')) : [];
  const tag = isCurrent ? 'mark cur' : 'mark';
  return cut(segs, ranges.map(([a, b]) => [a, b, tag]));
}

function appendPieces(parent, pieces) {
  for (const p of pieces) {
    if (!p.cls && !p.tag) {
      parent.append(p.text);
      continue;
    }
    const s = el(p.tag ? 'mark' : 'span', [p.cls, p.tag === 'mark cur' ? 'cur' : ''].filter(Boolean).join(' ') || undefined, p.text);
    parent.append(s);
  }
}

function plainPieces(text, isCurrent) {
  const ranges = buffer.search ? buffer.search.ranges(text) : [];
  const tag = isCurrent ? 'mark cur' : 'mark';
  return cut([{ text, cls: '' }], ranges.map(([a, b]) => [a, b, tag]));
}

/** A JSON line as `LEVEL message key=value …`, parts separated by spaces (where lines wrap). */
function jsonMessage(msg, json, isCurrent) {
  msg.classList.add('json');
  const parts = [];
  if (json.level !== null) {
    const lvl = el('span', `lvl lvl-${levelClass(json.level)}`);
    appendPieces(lvl, plainPieces(json.level, isCurrent));
    parts.push(lvl);
  }
  if (json.message !== null) {
    const m = el('span', 'jmsg');
    appendPieces(m, plainPieces(json.message, isCurrent));
    parts.push(m);
  }
  for (const [k, v] of json.fields) {
    const f = el('span', 'jf');
    const value = el('span', 'jv');
    appendPieces(value, plainPieces(v, isCurrent));
    f.append(el('span', 'jk', k), '=', value);
    parts.push(f);
  }
  parts.forEach((p, i) => (i ? msg.append(' ', p) : msg.append(p)));
  msg.title = json.pretty;
}

/** A row of the log view, built with `textContent` and classes only. */
function buildRow(e, isCurrent) {
  const src = e.src;
  if (e.t === MARK) {
    const row = el('div', `row mark m-${e.cls}${src ? ` c${src.colour}` : ''}`);
    if (src) row.append(el('span', 'src', src.name));
    row.append(el('span', 'mtext', e.text));
    return row;
  }
  const stderr = (e.flags & LINE_STDERR) !== 0;
  const event = src.labels && src.labels.kind === 'events';
  const classes = ['row', 'line', `c${src.colour}`, event ? 'event' : stderr ? 'stderr' : 'stdout'];
  if (e.flags & LINE_SYSTEM) classes.push('system');
  if (buffer.isHit(e)) classes.push('hit');
  if (isCurrent) classes.push('current');
  const row = el('div', classes.join(' '));
  const ts = el('span', 'ts', shortTime(e.ts / 1e6, S.ts === 'utc' ? 'utc' : 'local'));
  ts.title = `${rfc3339(e.hi, e.lo)} · #${e.seq}`;
  const name = el('span', 'src', src.name);
  name.title = src.title;
  const fd = el('span', 'fd', event ? 'evt' : stderr ? 'err' : 'out');
  const msg = el('span', 'msg');
  let json;
  if (S.json) {
    if (e.json === undefined) e.json = jsonLine(plain(e));
    json = e.json;
  }
  if (json) jsonMessage(msg, json, isCurrent);
  else appendPieces(msg, messagePieces(e.text, isCurrent));
  row.append(ts, name, fd, msg);
  if (e.flags & LINE_PARTIAL) row.append(el('span', 'flag', 'partial'));
  if (e.flags & LINE_TRUNCATED) row.append(el('span', 'flag', 'truncated'));
  return row;
}

const view = new LogView({
  scroller: logEl,
  viewport: $('viewport'),
  spacer: $('spacer'),
  buffer,
  build: buildRow,
  onChange: () => requestFrame(),
  onMode({ following, newLines }) {
    followButton.textContent = following ? 'Pause' : 'Follow';
    followButton.setAttribute('aria-pressed', String(!following));
    followButton.title = following ? 'Pause: keep buffering, stop moving (space)' : 'Follow the newest lines (f)';
    logEl.classList.toggle('paused', !following);
    newLinesButton.hidden = following;
    newLinesButton.textContent = newLines > 0
      ? `↓ ${plural(newLines, 'new line', 'new lines')}`
      : '↓ paused: follow the newest lines';
  },
});

// ---- per-frame work: one flush and one render per animation frame -------------------------

/**
 * For the performance test (docs/viewer.md): frame work times (ms) of the last 8192 frames, lines
 * merged, and the longest handling of one batch (ms).
 */
const perf = { frameMs: new Float64Array(8192), frames: 0, flushedLines: 0, batchMaxMs: 0 };
window.__logrelayViewer = perf;

let frameScheduled = false;
function requestFrame() {
  if (frameScheduled) return;
  frameScheduled = true;
  requestAnimationFrame(frame);
}

function frame() {
  frameScheduled = false;
  const t0 = performance.now();
  merge();
  view.render();
  showCounts();
  perf.frameMs[perf.frames % perf.frameMs.length] = performance.now() - t0;
  perf.frames++;
}

/** Merges what arrived into the buffer. */
function merge() {
  const result = buffer.flush();
  if (result) {
    perf.flushedLines += result.added;
    view.update(result);
  }
}

function flushIfLarge() {
  if (buffer.pendingCount >= FLUSH_NOW_AT) merge();
  requestFrame();
}

/** Sets an element's text only when it changes (no needless layout work every frame). */
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function showCounts() {
  const hits = buffer.search
    ? `${view.current && !view.current.ev && buffer.isHit(view.current) ? `${hitOrdinal(view.current)} / ` : ''}${count(buffer.hits)} ${buffer.hits === 1 ? 'hit' : 'hits'}`
    : '';
  setText(hitsEl, hits);
  if (buffer.evictedLines > 0) {
    evictedEl.hidden = false;
    setText(evictedEl, `${plural(buffer.evictedLines, 'older line', 'older lines')} ` +
      `(${formatBytes(buffer.evictedBytes)}) dropped by this viewer to stay within ` +
      `${count(buffer.maxLines)} lines and ${formatBytes(buffer.maxBytes)} — not a gap in the stream.`);
  } else {
    evictedEl.hidden = true;
  }
  let lines = 0;
  for (const s of buffer.sources.values()) lines += s.lines;
  setText(countsEl, `${plural(lines, 'line', 'lines')} held`);
}

function hitOrdinal(entry) {
  const list = buffer.list;
  const at = indexOf(list, entry);
  if (at < 0) return '?';
  let n = 0;
  for (let i = 0; i <= at; i++) if (buffer.isHit(list[i])) n++;
  return count(n);
}

setInterval(() => {
  $('last-line').textContent = lastLineAt ? `last line received ${ago(Date.now() - lastLineAt)} ago` : '';
  if (banner.dataset.phase === 'retrying' && banner.dataset.retryAt) {
    const left = Math.max(0, Number(banner.dataset.retryAt) - Date.now());
    bannerText.textContent = `${banner.dataset.base} Reconnecting in ${Math.ceil(left / 1000)} s…`;
  }
}, 1000);

// ---- the connection banner and errors ---------------------------------------------------------

function setBanner(phase, text) {
  banner.dataset.phase = phase;
  banner.className = `banner ${phase}`;
  bannerText.textContent = text;
  retryButton.hidden = phase !== 'retrying';
}

function showError(text) {
  for (const existing of errorEl.children) if (existing.textContent === text) return;
  errorEl.append(el('div', null, text));
  while (errorEl.childElementCount > 5) errorEl.firstElementChild.remove();
  errorEl.hidden = false;
}

function clearErrors() {
  errorEl.replaceChildren();
  errorEl.hidden = true;
}

function logStreams() {
  let n = 0;
  if (!conn) return 0;
  for (const st of conn.streams.values()) if (st.kind === 'log') n++;
  return n;
}

function watchingText() {
  const logs = logStreams();
  let pods = 0;
  for (const st of conn ? conn.streams.values() : []) if (st.kind === 'res') pods++;
  return `Watching ${plural(logs, 'log stream', 'log streams')}` +
    `${pods ? ` and the resources of ${plural(pods, 'pod', 'pods')}` : ''}.`;
}

function setStatus(text, kind) {
  statusEl.textContent = text;
  statusEl.className = `status ${kind || ''}`;
}

function updateSourceColumn() {
  const many = buffer.sources.size > 1;
  const shown = S.src === 'on' || (S.src === 'auto' && many);
  logEl.classList.toggle('no-src', !shown);
  $('src-col').checked = shown;
  const longest = Math.max(4, ...[...buffer.sources.values()].map((s) => s.name.length));
  document.documentElement.style.setProperty('--src-ch', `${Math.min(40, longest)}ch`);
}

// ---- subscriptions ---------------------------------------------------------------------------

function sourceFilterFields(req) {
  if (S.contains) req.contains = S.contains;
  if (S.matches) req.matches = S.matches;
  return req;
}

function subscribeSelection(s, sinceNs) {
  const logs = sourceFilterFields({
    op: 'subscribe', id: `l${s.id}`, selector: s.sel, tail: S.tail, follow: S.follow,
  });
  if (sinceNs !== undefined) logs.since_ns = sinceNs;
  conn.subs.set(logs.id, { type: 'logs', sel: s.key });
  session.send(logs);
  // The pod resources of the same selection (container `resources`); `tail: 1` gets the newest
  // kept sample at once when the pod is already watched.
  const metricsSelector = { kind: 'metrics', container: 'resources' };
  for (const f of SELECTOR_FIELDS) {
    if (f !== 'container' && f !== 'container_regex' && s.sel[f] !== undefined) metricsSelector[f] = s.sel[f];
  }
  conn.subs.set(`m${s.id}`, { type: 'res', sel: s.key });
  session.send({ op: 'subscribe', id: `m${s.id}`, selector: metricsSelector, tail: 1, follow: S.follow });
  // The Kubernetes events of the same pods (kind `events`, container `events`), interleaved
  // with their logs and marked (agents with `--kube-pods`; nothing otherwise).
  const eventsSelector = { kind: 'events' };
  for (const f of SELECTOR_FIELDS) {
    if (f !== 'container' && f !== 'container_regex' && s.sel[f] !== undefined) eventsSelector[f] = s.sel[f];
  }
  const events = sourceFilterFields({
    op: 'subscribe', id: `e${s.id}`, selector: eventsSelector, tail: S.tail, follow: S.follow,
  });
  if (sinceNs !== undefined) events.since_ns = sinceNs;
  conn.subs.set(events.id, { type: 'logs', sel: s.key });
  session.send(events);
}

function subscribeScrape(container) {
  const entry = [...metricsCatalog.streams.values()].find((e) => e.labels.container === container);
  const id = `x${nextSub++}`;
  const selector = { kind: 'metrics', container };
  if (entry && entry.labels.node) selector.node = entry.labels.node;
  conn.subs.set(id, { type: 'scrape', container });
  session.send({ op: 'subscribe', id, selector, tail: 1, follow: true });
}

function unsubscribeSelection(s) {
  if (!conn || !session) return;
  for (const id of [`l${s.id}`, `m${s.id}`, `e${s.id}`]) {
    if (conn.subs.delete(id)) session.send({ op: 'unsubscribe', id });
  }
}

/** Streams to resume after a reconnect: watched through a selection still held, not ended. */
function resumable() {
  const keys = new Set(selections.map((s) => s.key));
  return [...buffer.sources.values()]
    .filter((s) => s.epoch !== null && !s.ended && [...s.sels].some((k) => keys.has(k)))
    .sort((a, b) => b.lastTs - a.lastTs)
    .slice(0, MAX_RESUMES);
}

/**
 * After a reconnect, one subscription per stream held, with the exact selector of that stream
 * and `since_seq` just after its newest line (a `since_seq` applies per stream). They are
 * standing: a stream whose agent is not back yet is attached when it is announced again.
 */
function sendResume(src) {
  const id = `r${nextSub++}`;
  conn.subs.set(id, { type: 'resume', srcKey: src.key, sels: [...src.sels] });
  conn.pendingResume.set(src.key, id);
  session.send(sourceFilterFields({
    op: 'subscribe',
    id,
    selector: exactSelector(src.labels),
    since_seq: { epoch: BigInt(src.epoch), seq: src.hwm + 1 },
    since_ns: nanos(src.lastHi, src.lastLo) + 1n,
    tail: 0,
    follow: true,
  }));
}

/**
 * The selections' own subscriptions go out once every resumed stream is attached (so none of
 * them reaches a stream first, without `since_seq`), or after RESUME_WAIT_MS: streams not back
 * by then are left to the selections, from just after their newest line.
 */
function finishResume() {
  if (!conn || !conn.resuming) return;
  conn.resuming = false;
  clearTimeout(conn.resumeTimer);
  let since = BigInt(Math.max(0, lost.at - 2000)) * 1000000n;
  for (const [key, id] of conn.pendingResume) {
    const src = buffer.sources.get(key);
    conn.subs.delete(id);
    session.send({ op: 'unsubscribe', id });
    if (!src) continue;
    const after = nanos(src.lastHi, src.lastLo) + 1n;
    if (after < since) since = after;
    buffer.addMarker(src, 'pause', `${src.name}: not back ${RESUME_WAIT_MS / 1000} s after the reconnect; ` +
      'its lines follow when its agent announces it again.', nowNs());
  }
  conn.pendingResume.clear();
  // Streams that appeared meanwhile get what they wrote since shortly before the connection
  // was lost; the streams resumed above repeat nothing (each (epoch, seq) is shown once).
  for (const s of selections) subscribeSelection(s, since);
  for (const c of S.scrapes) subscribeScrape(c);
  setStatus(selections.length ? watchingText() : 'Pick pods, containers or runs on the left.', 'ok');
  requestFrame();
}

// ---- events -------------------------------------------------------------------------------------

function onOpen(welcome) {
  welcomedOnce = true;
  conn = newConn();
  conn.welcomedAt = Date.now();
  // Relay ids are per session: forget them (the catalog and charts refill at once).
  picker.catalog.clear();
  metricsCatalog.clear();
  session.send({ op: 'list', id: 'cat', selector: {}, watch: true });
  session.send({ op: 'list', id: 'catm', selector: { kind: 'metrics' }, watch: true });
  if (lost) {
    const away = ((Date.now() - lost.at) / 1000).toFixed(1);
    const todo = resumable();
    buffer.addMarker(null, 'conn', `Reconnected to the relay after ${away} s (org ${welcome.org}); ` +
      `resuming ${plural(todo.length, 'stream', 'streams')} from where each stopped.`, nowNs());
    conn.resuming = true;
    for (const src of todo) sendResume(src);
    conn.resumeTimer = setTimeout(finishResume, RESUME_WAIT_MS);
    if (!todo.length) finishResume();
    requestFrame();
  } else {
    for (const s of selections) subscribeSelection(s);
    for (const c of S.scrapes) subscribeScrape(c);
  }
  setStatus(selections.length ? watchingText() : 'Pick pods, containers or runs on the left.', 'ok');
}

function onState(st) {
  if (st.phase === 'connecting') {
    setBanner('connecting', st.attempt ? `Reconnecting to the relay (attempt ${st.attempt})…` : 'Connecting to the relay…');
  } else if (st.phase === 'open') {
    setBanner('open', `Connected to the relay as org ${st.org}.`);
  } else if (st.phase === 'retrying') {
    if (st.wasOpen || !lost) {
      lost = { at: Date.now() };
      buffer.addMarker(null, 'conn', `Connection to the relay lost (${st.text}); reconnecting.`, nowNs());
      requestFrame();
    }
    if (conn) clearTimeout(conn.resumeTimer);
    conn = null;
    const base = `Connection lost (${st.text}). Attempt ${st.attempt}.`;
    banner.dataset.base = base;
    banner.dataset.retryAt = String(Date.now() + st.retryInMs);
    setBanner('retrying', `${base} Reconnecting in ${Math.ceil(st.retryInMs / 1000)} s…`);
    setStatus('Disconnected: lines written meanwhile will be resumed from where each stream stopped.', 'bad');
  } else if (st.phase === 'refused') {
    setBanner('refused', st.text);
    setStatus(st.text, 'bad');
    if (st.code === 4004 || st.code === 4001 || st.code === 4003 || st.code === 4008) showError(st.text);
  }
}

function onEvent(e) {
  if (!conn) return;
  switch (e.event) {
    case 'streams':
    case 'catalog': {
      const cat = e.id === 'cat' ? picker.catalog : e.id === 'catm' ? metricsCatalog : null;
      if (!cat) break;
      if (e.event === 'streams') cat.replace(e.streams);
      else cat.apply(e);
      if (cat === picker.catalog) {
        picker.schedule();
      } else {
        showScrapeSources();
      }
      break;
    }
    case 'stream':
      onStream(e);
      break;
    case 'gap': {
      const st = conn.streams.get(e.stream);
      if (!st || st.kind !== 'log') break;
      const src = st.src;
      const why = GAP_REASONS[e.reason] || e.reason;
      // `exact: false` (protocol.md §3.4): the count is a lower bound, or unknown when 0.
      const text = e.rest_of_epoch || e.reason === 'epoch_lost'
        ? `${src.name}: lines from #${e.from.seq} on (of the numbering before) will not come: ${why}; how many is unknown.`
        : e.exact === false
          ? (e.lines > 0
            ? `${src.name}: at least ${plural(e.lines, 'line', 'lines')} missed (the exact number is unknown), from #${e.from.seq}: ${why}.`
            : `${src.name}: lines missed from #${e.from.seq}, how many is unknown: ${why}.`)
          : `${src.name}: ${plural(e.lines, 'line', 'lines')}${e.bytes ? ` (${formatBytes(e.bytes)})` : ''} missed, #${e.from.seq}–#${e.from.seq + e.lines - 1}: ${why}.`;
      buffer.addMarker(src, 'gap', text, nowNs());
      requestFrame();
      break;
    }
    case 'renumbered': {
      // The agent restarted and went on right after the last line held: nothing missed.
      const st = conn.streams.get(e.stream);
      if (!st || st.kind !== 'log') break;
      buffer.addMarker(st.src, 'live', `${st.src.name}: renumbered by its agent (it restarted); nothing missed.`, nowNs());
      requestFrame();
      break;
    }
    case 'paused': {
      const st = conn.streams.get(e.stream);
      if (!st || st.kind !== 'log') break;
      const why = PAUSE_REASONS[e.reason] || e.reason;
      buffer.addMarker(st.src, 'pause', `${st.src.name}: paused, ${why}; waiting for it to come back.`, nowNs());
      requestFrame();
      break;
    }
    case 'resumed': {
      const st = conn.streams.get(e.stream);
      if (!st || st.kind !== 'log') break;
      buffer.addMarker(st.src, 'live', `${st.src.name}: its agent is back; resumed.`, nowNs());
      requestFrame();
      break;
    }
    case 'end': {
      const st = conn.streams.get(e.stream);
      if (!st) break;
      conn.streams.delete(e.stream);
      if (st.kind === 'res') charts.ended(st.labels);
      if (st.kind !== 'log') break;
      if (e.reason !== 'complete') st.src.ended = e.reason;
      const why = END_REASONS[e.reason] || e.reason;
      buffer.addMarker(st.src, e.reason === 'complete' ? 'live' : 'end', `${st.src.name}: ended, ${why}.`, nowNs());
      requestFrame();
      if (!S.follow && logStreams() === 0) setStatus('Backlog read. Not following: these lines are what the files held.', 'ok');
      else setStatus(watchingText(), 'ok');
      break;
    }
    case 'error': {
      const owner = e.id ? conn.subs.get(e.id) : null;
      const sel = owner && owner.sel ? selections.find((s) => s.key === owner.sel) : null;
      const which = sel ? `${selectionLabel(sel.sel)}${owner.type === 'res' ? ' (pod resources)' : ''}: ` : '';
      const text = `${which}${e.code}: ${e.message}`;
      showError(text);
      buffer.addMarker(null, 'error', `The relay refused a request: ${text}`, nowNs());
      setStatus(`The relay refused a request: ${e.message}`, 'bad');
      requestFrame();
      break;
    }
    default:
      break; // subscribed, unsubscribed, live, and events of later versions
  }
}

function onStream(e) {
  const owner = conn.subs.get(e.id);
  const l = e.labels;
  if (l.kind === 'metrics') {
    const kind = l.container === 'resources' ? 'res' : 'scrape';
    conn.streams.set(e.stream, { kind, labels: l });
    if (kind === 'res') charts.resources(l);
    else charts.scrapeSource(l);
    setStatus(watchingText(), 'ok');
    return;
  }
  const key = streamKey(l);
  const src = buffer.source(key, {
    labels: l,
    name: `${l.pod}/${l.container}`,
    title: `${l.namespace}/${l.pod}/${l.container} · node ${l.node} · restart ${l.restart}`,
    colour: colourOf(`${l.namespace}/${l.pod}/${l.container}`),
    sels: new Set(),
  });
  src.labels = l;
  src.ended = false;
  if (owner && owner.sel) src.sels.add(owner.sel);
  if (owner && owner.sels) for (const k of owner.sels) src.sels.add(k);
  if (owner && owner.type === 'resume' && conn.pendingResume.get(owner.srcKey) === e.id) {
    conn.pendingResume.delete(owner.srcKey);
    if (conn.resuming && conn.pendingResume.size === 0) finishResume();
  }
  conn.streams.set(e.stream, { kind: 'log', src, labels: l });
  updateSourceColumn();
  setStatus(watchingText(), 'ok');
}

function onBatch(data) {
  if (!conn) return;
  const t0 = performance.now();
  takeBatch(data);
  const ms = performance.now() - t0;
  if (ms > perf.batchMaxMs) perf.batchMaxMs = ms;
}

function takeBatch(data) {
  let batch;
  try {
    batch = decodeBatch(data);
  } catch (err) {
    showError(`Unreadable batch from the relay: ${err.message}`);
    return;
  }
  const { header } = batch;
  const st = conn.streams.get(header.stream);
  if (!st) return; // a batch always follows its `stream` event; only a broken relay skips it
  if (st.kind === 'res') {
    charts.resourceLines(st.labels, batch.lines);
    return;
  }
  if (st.kind === 'scrape') {
    charts.scrapeLines(st.labels, batch.lines);
    refreshSeriesList();
    return;
  }
  const src = st.src;
  if (header.kind === KIND_GAP) {
    const lost = batch.gapBytes > 0 ? ` (${formatBytes(batch.gapBytes)})` : '';
    const uncounted = (header.flags & FLAG_COUNT_UNKNOWN) !== 0;
    const text = header.count > 0 && uncounted
      ? `${src.name}: at least ${plural(header.count, 'line', 'lines')}${lost} lost at the agent (the exact number is unknown), from #${header.firstSeq}.`
      : header.count > 0
      ? `${src.name}: ${plural(header.count, 'line', 'lines')}${lost} lost at the agent, ` +
        `#${header.firstSeq}–#${header.firstSeq + header.count - 1}: its send buffer was full.`
      : `${src.name}: ${formatBytes(batch.gapBytes)} of the log rotated away before the agent read them; how many lines is unknown.`;
    buffer.addMarker(src, 'gap', text, nowNs());
    requestFrame();
    return;
  }
  const backfill = (header.flags & FLAG_BACKFILL) !== 0;
  let added = 0;
  for (const line of batch.lines) if (buffer.addLine(src, header.epoch, line, backfill)) added++;
  if (added) lastLineAt = Date.now();
  flushIfLarge();
}

// ---- selections, filters, modes ----------------------------------------------------------------

function syncUrl() {
  S.selections = selections.map((s) => s.sel);
  history.replaceState(null, '', `${location.pathname}${encode(S)}`);
}

function renderChips() {
  const chips = [];
  for (const s of selections) {
    const chip = el('span', 'chip');
    chip.dataset.sel = s.key;
    chip.append(el('span', null, selectionLabel(s.sel)));
    const x = el('button', 'x', '×');
    x.type = 'button';
    x.title = 'Remove from the view';
    x.setAttribute('aria-label', `remove ${selectionLabel(s.sel)}`);
    x.addEventListener('click', () => removeSelection(s));
    chip.append(x);
    chips.push(chip);
  }
  if (S.contains || S.matches) {
    const chip = el('span', 'chip filter');
    chip.append(el('span', null, `filtered at the source: ${S.matches ? `/${S.matches}/` : `"${S.contains}"`}`));
    const x = el('button', 'x', '×');
    x.type = 'button';
    x.title = 'Stop filtering at the source';
    x.addEventListener('click', () => setSourceFilter('', ''));
    chip.append(x);
    chips.push(chip);
  }
  if (!chips.length) chips.push(el('span', 'hint', 'Nothing selected: pick pods, containers or runs on the left (click: only it; tick or Ctrl-click: add to the merged view).'));
  chipsEl.replaceChildren(...chips);
  sourceFilterButton.setAttribute('aria-pressed', String(Boolean(S.contains || S.matches)));
  sourceFilterButton.textContent = S.contains || S.matches ? 'Unfilter source' : 'Filter at source';
  picker.setSelected(selections.map((s) => s.sel));
}

function addSelection(sel) {
  const key = selectionKey(sel);
  if (selections.some((s) => s.key === key) || selections.length >= MAX_SELECTIONS) return;
  const s = { id: nextSel++, sel, key };
  selections.push(s);
  if (conn && session && session.open && !conn.resuming) subscribeSelection(s);
  else if (!session) startSession();
  syncUrl();
  renderChips();
}

function removeSelection(s) {
  selections = selections.filter((x) => x !== s);
  unsubscribeSelection(s);
  const keys = new Set(selections.map((x) => x.key));
  // Lines of streams no other selection watches leave the view; so do their resume subscriptions.
  buffer.removeSources((src) => ![...src.sels].some((k) => keys.has(k)));
  for (const src of buffer.sources.values()) for (const k of [...src.sels]) if (!keys.has(k)) src.sels.delete(k);
  if (conn) {
    for (const [id, owner] of [...conn.subs]) {
      if (owner.type === 'resume' && !buffer.sources.has(owner.srcKey)) {
        conn.subs.delete(id);
        session.send({ op: 'unsubscribe', id });
      }
    }
    for (const [id, st] of [...conn.streams]) if (st.kind === 'log' && !buffer.sources.has(st.src.key)) conn.streams.delete(id);
  }
  charts.retain((podKey) => selections.some((x) => podMatches(x.sel, podKey)));
  view.refresh();
  updateSourceColumn();
  syncUrl();
  renderChips();
  requestFrame();
  if (conn) setStatus(selections.length ? watchingText() : 'Pick pods, containers or runs on the left.', 'ok');
}

function podMatches(sel, podKey) {
  const [ns, pod] = podKey.split('/');
  if (sel.namespace && sel.namespace !== ns) return false;
  if (sel.pod && sel.pod !== pod) return false;
  return true;
}

/** The picker: a click shows only that; a tick (or Ctrl/Shift-click) adds it or takes it out. */
function onPick(sel, additive) {
  const key = selectionKey(sel);
  const existing = selections.find((s) => s.key === key);
  if (additive) {
    if (existing) removeSelection(existing);
    else addSelection(sel);
    return;
  }
  if (existing && selections.length === 1) return;
  selections = [{ id: nextSel++, sel, key }];
  syncUrl();
  renderChips();
  restart();
}

function setSourceFilter(contains, matches) {
  S.contains = contains;
  S.matches = matches;
  syncUrl();
  renderChips();
  restart();
}

function applySearch() {
  let m = null;
  searchInput.classList.remove('invalid');
  try {
    m = matcher(S.q, { regex: S.regex, caseSensitive: S.caseSensitive });
  } catch (err) {
    searchInput.classList.add('invalid');
    searchInput.title = `Not a regular expression: ${err.message}`;
  }
  buffer.setSearch(m, S.only);
  view.current = null;
  view.restyle();
  if (S.only && view.following) view.follow();
  requestFrame();
}

function jumpHit(dir) {
  if (!buffer.search) {
    searchInput.focus();
    return;
  }
  const list = buffer.list;
  let from;
  if (view.current && !view.current.ev) {
    from = indexOf(list, view.current);
  } else {
    // From what is on screen: the first hit at or below its top (or above its bottom).
    from = dir > 0 ? view.topIndex() - 1 : Math.min(list.length, view.topIndex() + view.visibleRows);
  }
  const i = buffer.nextHit(from, dir);
  if (i >= 0) view.reveal(i);
  requestFrame();
}

function setMode() {
  logEl.classList.toggle('wrap', S.wrap);
  logEl.classList.toggle('no-ts', S.ts === 'off');
  $('ts-mode').value = S.ts;
  $('wrap').checked = S.wrap;
  $('json').checked = S.json;
  $('case').setAttribute('aria-pressed', String(S.caseSensitive));
  $('regex').setAttribute('aria-pressed', String(S.regex));
  $('only').setAttribute('aria-pressed', String(S.only));
  updateSourceColumn();
  view.measure();
  view.restyle();
  requestFrame();
}

// ---- copy and download ----------------------------------------------------------------------

/** What the view holds (all lines, or only the hits when "only matching" is on), as text. */
function viewText() {
  const out = [];
  for (const e of buffer.list) {
    if (e.t === MARK) {
      out.push(`# ${e.text}`);
      continue;
    }
    const l = e.src.labels;
    out.push(`${rfc3339(e.hi, e.lo)} ${l.namespace}/${l.pod}/${l.container} ${(e.flags & LINE_STDERR) ? 'stderr' : 'stdout'} ${plain(e)}`);
  }
  return out.length ? `${out.join('\n')}\n` : '';
}
window.__logrelayViewText = viewText;

async function copyView() {
  const text = viewText();
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = el('textarea');
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand('copy');
    area.remove();
  }
  setStatus(`Copied ${plural(buffer.list.length, 'entry', 'entries')} to the clipboard.`, 'ok');
}

function downloadView() {
  const blob = new Blob([viewText()], { type: 'text/plain' });
  const a = el('a');
  a.href = URL.createObjectURL(blob);
  a.download = `logrelay-${new Date().toISOString().replace(/[:.]/g, '-')}.log`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ---- scraped series chooser ---------------------------------------------------------------------

function showScrapeSources() {
  const select = $('scrape-source');
  const names = [...new Set([...metricsCatalog.streams.values()]
    .map((e) => e.labels.container).filter((c) => c.startsWith('scrape:')))].sort();
  const current = select.value;
  const options = [el('option', null, names.length ? 'a scrape target…' : 'no scrape targets')];
  options[0].value = '';
  for (const n of names) {
    const o = el('option', null, n.slice('scrape:'.length));
    o.value = n;
    options.push(o);
  }
  select.replaceChildren(...options);
  select.value = names.includes(current) ? current : '';
  $('series-box').hidden = names.length === 0;
  if (names.length) $('metrics').hidden = false;
}

let seriesListScheduled = false;
function refreshSeriesList() {
  if (seriesListScheduled) return;
  seriesListScheduled = true;
  setTimeout(() => {
    seriesListScheduled = false;
    const container = $('scrape-source').value;
    const list = $('series-list');
    const src = charts.sources.get(container);
    if (!src) {
      list.replaceChildren();
      return;
    }
    const q = $('series-search').value.trim().toLowerCase();
    const names = [...src.names.keys()].filter((n) => !q || n.toLowerCase().includes(q)).sort().slice(0, 200);
    const items = names.map((series) => {
      const id = `${container}|${series}`;
      const b = el('button', `series${charts.picked.has(id) ? ' picked' : ''}`, series);
      b.type = 'button';
      b.dataset.series = id;
      b.addEventListener('click', () => toggleSeries(id));
      return b;
    });
    list.replaceChildren(...items);
  }, 300);
}

function toggleSeries(id) {
  const on = charts.toggle(id);
  S.series = on ? [...S.series.filter((x) => x !== id), id] : S.series.filter((x) => x !== id);
  syncUrl();
  refreshSeriesList();
}

// ---- the session ---------------------------------------------------------------------------------

function startSession() {
  if (session) session.close('viewer changed its view');
  conn = null;
  lost = null;
  session = new Session({
    token,
    handlers: { open: onOpen, event: onEvent, batch: onBatch, state: onState },
  });
  session.connect();
}

/** A new view: the buffer, charts and errors start empty and every subscription anew. */
function restart() {
  buffer.clear();
  charts.clear();
  clearErrors();
  view.current = null;
  view.follow();
  view.restyle();
  applySearch();
  updateSourceColumn();
  startSession();
  requestFrame();
}

const picker = new Picker({
  root: $('picker-tree'),
  search: $('picker-search'),
  summary: $('picker-summary'),
  onPick,
});

const charts = new Charts({
  panel: $('metrics'),
  table: $('metrics-rows'),
  cpu: $('chart-cpu'),
  mem: $('chart-mem'),
  picked: $('series-charts'),
  // A pod's colour is that of its first container seen in the log view.
  colourOf: (podKey) => {
    for (const [key, c] of colourIds) if (key.startsWith(`${podKey}/`)) return c;
    return colourOf(`${podKey}/`);
  },
});

// ---- controls and keyboard --------------------------------------------------------------------

followButton.addEventListener('click', () => {
  if (view.following) view.pause();
  else view.follow();
  requestFrame();
});
newLinesButton.addEventListener('click', () => {
  view.follow();
  requestFrame();
});
retryButton.addEventListener('click', () => session && session.retryNow());

let searchTimer = null;
searchInput.addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    S.q = searchInput.value;
    syncUrl();
    applySearch();
  }, 150);
});
searchInput.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter') {
    ev.preventDefault();
    clearTimeout(searchTimer);
    if (S.q !== searchInput.value) {
      S.q = searchInput.value;
      syncUrl();
      applySearch();
    }
    jumpHit(ev.shiftKey ? -1 : 1);
  } else if (ev.key === 'Escape') {
    searchInput.blur();
    logEl.focus();
  }
});
for (const [id, key] of [['case', 'caseSensitive'], ['regex', 'regex'], ['only', 'only']]) {
  $(id).addEventListener('click', () => {
    S[key] = !S[key];
    syncUrl();
    setMode();
    applySearch();
  });
}
$('next').addEventListener('click', () => jumpHit(1));
$('prev').addEventListener('click', () => jumpHit(-1));
sourceFilterButton.addEventListener('click', () => {
  if (S.contains || S.matches) {
    setSourceFilter('', '');
    return;
  }
  const q = searchInput.value;
  if (!q) {
    searchInput.focus();
    setStatus('Type a text or a regular expression in the search box first, then filter at the source.', 'bad');
    return;
  }
  if (S.regex) setSourceFilter('', S.caseSensitive ? q : `(?i)${q}`);
  else if (S.caseSensitive) setSourceFilter(q, '');
  else setSourceFilter('', `(?i)${q.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`);
});
$('ts-mode').addEventListener('change', (ev) => {
  S.ts = ev.target.value;
  syncUrl();
  setMode();
});
$('src-col').addEventListener('change', (ev) => {
  S.src = ev.target.checked ? 'on' : 'off';
  syncUrl();
  setMode();
});
$('wrap').addEventListener('change', (ev) => {
  S.wrap = ev.target.checked;
  syncUrl();
  setMode();
});
$('json').addEventListener('change', (ev) => {
  S.json = ev.target.checked;
  syncUrl();
  setMode();
});
$('copy').addEventListener('click', copyView);
$('download').addEventListener('click', downloadView);
$('clear').addEventListener('click', () => {
  buffer.clearLines();
  view.current = null;
  view.follow();
  view.refresh();
  requestFrame();
});
$('scrape-source').addEventListener('change', (ev) => {
  const c = ev.target.value;
  if (c && !S.scrapes.includes(c)) {
    S.scrapes.push(c);
    syncUrl();
    if (conn && !conn.resuming) subscribeScrape(c);
  }
  refreshSeriesList();
});
$('series-search').addEventListener('input', refreshSeriesList);
$('help-button').addEventListener('click', () => {
  $('help').hidden = !$('help').hidden;
});
$('help-close').addEventListener('click', () => {
  $('help').hidden = true;
});

tokenInput.addEventListener('change', () => {
  token = tokenInput.value.trim();
  restart();
});

const adv = $('adv');
adv.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const data = new FormData(adv);
  const sel = {};
  for (const f of SELECTOR_FIELDS) {
    const v = String(data.get(f) || '').trim();
    if (v) sel[f] = v;
  }
  const tail = Number(String(data.get('tail') || '').trim() || S.tail);
  if (Number.isInteger(tail) && tail >= 0 && tail <= 4294967295) S.tail = tail;
  S.follow = data.get('follow') !== null;
  const additive = ev.submitter && ev.submitter.value === 'add';
  if (Object.keys(sel).length) onPick(sel, additive && !selections.some((s) => s.key === selectionKey(sel)));
  else syncUrl();
});

document.addEventListener('keydown', (ev) => {
  const t = ev.target;
  const typing = t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement;
  if (ev.key === 'Escape') {
    $('help').hidden = true;
    return;
  }
  if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const act = {
    '/': () => searchInput.focus(),
    n: () => jumpHit(1),
    N: () => jumpHit(-1),
    ' ': () => (view.following ? view.pause() : view.follow()),
    p: () => (view.following ? view.pause() : view.follow()),
    f: () => view.follow(),
    End: () => view.follow(),
    w: () => { S.wrap = !S.wrap; syncUrl(); setMode(); },
    t: () => { S.ts = { local: 'utc', utc: 'off', off: 'local' }[S.ts]; syncUrl(); setMode(); },
    s: () => { S.src = $('src-col').checked ? 'off' : 'on'; syncUrl(); setMode(); },
    j: () => { S.json = !S.json; syncUrl(); setMode(); },
    '?': () => { $('help').hidden = !$('help').hidden; },
  }[ev.key];
  if (!act) return;
  ev.preventDefault();
  act();
  requestFrame();
});

// ---- start-up -----------------------------------------------------------------------------------

// The token may come in the fragment, which the browser never sends; drop it from the address
// bar (and history) at once.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.has('token')) {
  token = fragment.get('token').trim();
  tokenInput.value = token;
}
for (const sel of S.selections) selections.push({ id: nextSel++, sel, key: selectionKey(sel) });
searchInput.value = S.q;
adv.elements.tail.value = String(S.tail);
adv.elements.follow.checked = S.follow;
if (selections.length === 1) for (const f of SELECTOR_FIELDS) if (S.selections[0][f]) adv.elements[f].value = S.selections[0][f];
history.replaceState(null, '', `${location.pathname}${encode(S)}`);
setMode();
renderChips();
applySearch();
for (const id of S.series) charts.toggle(id);
startSession();
requestFrame();
